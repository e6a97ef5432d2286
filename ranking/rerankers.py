"""Rerankers: rescore a query's hits with a stronger (slower) model and keep the best ``k``.

Three offline-capable kinds besides MaxSim (``indexes.late.reranker:MaxSimReranker``):

- ``cross-encoder``: a sentence-transformers ``CrossEncoder`` checkpoint (local path or hub id); none
  ships offline, so bring your own;
- ``llm-pointwise``: a causal LM judges each (query, passage) pair; relevance is
  ``logit("Yes") - logit("No")`` at the answer position. Candidates are batched with left padding;
- ``first``: listwise single-token ranking as in FIRST (Reddy et al., 2024; Chen et al., "An Early FIRST
  Reproduction ..."): up to ``window`` candidates are labelled ``A``, ``B``, ... in one prompt and
  ranked by the logits of the first token the model would generate, one forward pass per window (no
  generation loop). Longer lists are ranked with a sliding window from the bottom up (RankGPT style).

    >>> from ranking.rerankers import LLMPointwiseReranker
    >>> reranker = LLMPointwiseReranker()                  # cheap: the model loads on first use
    >>> reranker.rerank("what thins blood?", hits, k=5)    # doctest: +SKIP

Every reranker returns new :class:`~rag.types.Hit` objects whose ``source`` is the reranker's name and
whose ``score`` is its own score (for ``first``: ``n - position``, a rank score). Ties keep the input
order. Scores in the incoming hits must be finite; a NaN or infinite score is an error naming the query
and the chunk.
"""

from __future__ import annotations

import math
from dataclasses import field
from typing import Any, Sequence

from rag.errors import InputError
from rag.protocols import BaseReranker, rank_by
from rag.registry import Component, declared_params
from rag.types import Hit

IDENTIFIERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def passage_text(hit: Hit) -> str:
    title = hit.chunk.title.strip()
    return f"{title}\n{hit.chunk.text}" if title else hit.chunk.text


# -- cross-encoder -------------------------------------------------------------------------------------


@declared_params
class CrossEncoderReranker(BaseReranker):
    """A sentence-transformers ``CrossEncoder`` (``model``: local folder or hub id) scores (query, passage).

    No cross-encoder weights ship offline with specrag; the LLM rerankers are the offline choice.
    """

    model: str = "cross-encoder/ms-marco-MiniLM-L6-v2"
    batch_size: int = 32
    max_length: int = 512
    name: str = "cross-encoder"
    _model: Any = field(default=None, init=False)  # loaded on first use

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"cross-encoder reranker: batch_size must be at least 1, got {self.batch_size}")

    def warm_up(self) -> None:
        if self._model is None:
            from rag.lazy import require

            st = require("sentence_transformers", "dense")
            self._model = st.CrossEncoder(self.model, device="cpu", max_length=self.max_length)

    def score(self, query: str, hits: list[Hit]) -> list[float]:
        self.warm_up()
        pairs = [(query, passage_text(h)) for h in hits]
        scores = self._model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False,
                                     convert_to_numpy=True)
        return [float(s) for s in scores.reshape(len(hits), -1)[:, -1]]


# -- LLM rerankers -----------------------------------------------------------------------------------


class _LLMReranker(BaseReranker):
    """Shared by the LLM rerankers: the model (loaded on first use) and passage truncation."""

    model: str
    engine: str
    max_passage_tokens: int

    _lm: Any = None

    @property
    def lm(self) -> Any:
        """The model's engine (:mod:`rag.generation.engine`); ``auto`` picks the fastest prompt reader."""
        if self._lm is None:
            from rag.generation.engine import load_engine

            self._lm = load_engine(self.model, self.engine, workload="prompt")
        return self._lm

    def warm_up(self) -> None:
        self.lm  # noqa: B018 (loads the model)

    def truncate(self, text: str) -> str:
        """``text`` cut to ``max_passage_tokens`` tokens of the model's tokenizer."""
        ids = self.lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_passage_tokens:
            return text
        return self.lm.tokenizer.decode(ids[: self.max_passage_tokens])

    def single_token(self, text: str) -> int:
        ids = self.lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise InputError(f"{self.name} reranker: {text!r} is {len(ids)} tokens for model {self.model!r}; "
                             "it must be one token")
        return ids[0]

    def last_logits(self, batch: list[list[int]]) -> Any:
        """Next-token logits after each sequence of ``batch`` (one batched pass where the engine has one)."""
        return self.lm.next_token_logits(batch)


POINTWISE_SYSTEM = "You judge whether a passage is relevant to a search query. Answer with Yes or No only."
POINTWISE_USER = "Query: {query}\n\nPassage: {passage}\n\nIs the passage relevant to the query? Answer Yes or No."


@declared_params
class LLMPointwiseReranker(_LLMReranker):
    """Relevance = ``logit("Yes") - logit("No")`` after a judging prompt, ``batch_size`` candidates per pass.

    ``model``: a pack name (``qwen2.5-0.5b`` by default), local folder or hub id of a chat LM, run by
    ``engine`` (``auto`` or a name from :data:`rag.generation.engine.ENGINE_NAMES`). Passages are cut to
    ``max_passage_tokens`` tokens.
    """

    model: str = "qwen2.5-0.5b"
    batch_size: int = 8
    max_passage_tokens: int = 128
    name: str = "llm-pointwise"
    engine: str = "auto"
    forward_calls: int = field(default=0, init=False)  # batched passes run so far

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_passage_tokens < 1:
            raise InputError(f"llm-pointwise reranker: batch_size and max_passage_tokens must be at least 1, "
                             f"got {self.batch_size} and {self.max_passage_tokens}")
        from rag.generation.engine import canonical_engine

        self.engine = canonical_engine(self.engine)

    def prompt_ids(self, query: str, hit: Hit) -> list[int]:
        user = POINTWISE_USER.format(query=query, passage=self.truncate(passage_text(hit)))
        return self.lm.encode_chat([{"role": "system", "content": POINTWISE_SYSTEM},
                                    {"role": "user", "content": user}])

    def score(self, query: str, hits: list[Hit]) -> list[float]:
        yes, no = self.single_token("Yes"), self.single_token("No")
        prompts = [self.prompt_ids(query, h) for h in hits]
        # Batches of similar lengths waste less compute on padding.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        scores = [0.0] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            rows = order[start: start + self.batch_size]
            logits = self.last_logits([prompts[i] for i in rows])
            self.forward_calls += 1
            for row, i in enumerate(rows):
                scores[i] = float(logits[row, yes] - logits[row, no])
        return scores


FIRST_SYSTEM = "You are RankLLM, an assistant that ranks passages by their relevance to a query."
FIRST_USER_HEAD = ("I will give you {n} passages, each labelled with an identifier in brackets. "
                   "Rank them by relevance to the query: {query}\n\n")
FIRST_USER_TAIL = ("\nQuery: {query}\nRank the {n} passages above by relevance to the query, most relevant "
                   "first. Answer only with the identifiers in order, for example: {example}.")


@declared_params
class FirstReranker(_LLMReranker):
    """Listwise single-token reranking (FIRST): one forward pass ranks a window of up to ``window`` hits.

    Candidates are labelled ``A``, ``B``, ... (single tokens); the order of the identifier logits at the
    first answer position is the ranking. Lists longer than ``window`` are ranked by windows moving from
    the bottom of the list to the top by ``stride`` (so the best hits rise to the top), as RankGPT and FIRST
    do. The returned score of a hit is ``n - position`` (a rank, not a calibrated relevance). ``engine``
    runs the model, as for :class:`LLMPointwiseReranker`.
    """

    model: str = "qwen2.5-0.5b"
    window: int = 20
    stride: int = 10
    max_passage_tokens: int = 100
    name: str = "first"
    engine: str = "auto"
    forward_calls: int = field(default=0, init=False)  # passes run so far (one per window)

    def __post_init__(self) -> None:
        window, stride = self.window, self.stride
        if not 2 <= window <= len(IDENTIFIERS):
            raise InputError(f"first reranker: window must be between 2 and {len(IDENTIFIERS)}, got {window}")
        if not 1 <= stride <= window:
            raise InputError(f"first reranker: stride must be between 1 and the window ({window}), got {stride}")
        if self.max_passage_tokens < 1:
            raise InputError(f"first reranker: max_passage_tokens must be at least 1, got {self.max_passage_tokens}")
        from rag.generation.engine import canonical_engine

        self.engine = canonical_engine(self.engine)

    def windows(self, n: int) -> list[tuple[int, int]]:
        """The ``[start, end)`` spans ranked, in order: from the bottom of the list up."""
        if n <= self.window:
            return [(0, n)]
        spans, end = [], n
        while True:
            start = max(0, end - self.window)
            spans.append((start, end))
            if start == 0:
                return spans
            end -= self.stride

    def prompt_ids(self, query: str, hits: list[Hit]) -> list[int]:
        labels = IDENTIFIERS[: len(hits)]
        body = "".join(f"[{label}] {self.truncate(passage_text(h))}\n" for label, h in zip(labels, hits))
        example = " > ".join(labels[: min(3, len(labels))])
        user = (FIRST_USER_HEAD.format(n=len(hits), query=query) + body
                + FIRST_USER_TAIL.format(n=len(hits), query=query, example=example))
        return self.lm.encode_chat([{"role": "system", "content": FIRST_SYSTEM}, {"role": "user", "content": user}])

    def rank_window(self, query: str, hits: list[Hit]) -> list[int]:
        """Positions of ``hits`` in ranked order, from one forward pass."""
        if len(hits) == 1:
            return [0]
        ids = [self.single_token(label) for label in IDENTIFIERS[: len(hits)]]
        logits = self.last_logits([self.prompt_ids(query, hits)])[0]
        self.forward_calls += 1
        values = [float(logits[i]) for i in ids]
        return sorted(range(len(hits)), key=lambda i: -values[i])

    def score(self, query: str, hits: list[Hit]) -> list[float]:
        order = list(range(len(hits)))  # order[p] = index into hits of the candidate now at position p
        for start, end in self.windows(len(hits)):
            span = order[start:end]
            ranked = self.rank_window(query, [hits[i] for i in span])
            order[start:end] = [span[p] for p in ranked]
        scores = [0.0] * len(hits)
        for position, i in enumerate(order):
            scores[i] = float(len(hits) - position)
        return scores
