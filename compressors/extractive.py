"""Query-aware extractive compression: keep the sentences that best match the query, under a token budget.

    >>> from compressors.extractive import ExtractiveCompressor
    >>> comp = ExtractiveCompressor(rate=1 / 3)                      # cheap: models load on first use
    >>> context = comp.compress("Who won?", hits)                    # doctest: +SKIP
    >>> context.kept_tokens <= context.budget_tokens                 # doctest: +SKIP
    True

Sentences come from :func:`chunkers.text.sentence_units` (over-long ones are cut at lines, then words).
Each is scored against the query by ``scorer``:

- ``"dense"`` (default): cosine similarity of sentence-transformers embeddings (``model``: ``minilm``);
- ``"cross-encoder"``: a sentence-transformers ``CrossEncoder`` at ``model`` (a path or hub id);
- ``"reranker"``: any registered reranker (``reranker``: its name or spec, e.g. an LLM pointwise scorer),
  which scores each sentence as if it were a hit.

``lexical_weight`` (default 1.0) adds lexical evidence to that score: the idf-weighted share of the query's
terms (Lucene's English analysis: stop words out, Porter stems; idf over the sentences being compressed)
that a sentence contains, from 0 to 1 (:func:`lexical_overlap`). Answers to factoid questions often sit in
a sentence that repeats the question's rare words while paraphrasing its topic, which sentence embeddings
alone rank below on-topic sentences without the answer (measured in ``eval/results/compression.md``).
``lexical_weight=0`` turns it off; with a cross-encoder or reranker, whose scores have other scales, choose
the weight for that scale.

The best sentences that fit are kept, in their source order (RECOMP / "extractive beats pruning");
``neighbours`` adds up to that many sentences either side of each kept one while the budget allows.
``per_passage`` keeps each passage's best ``per_passage`` sentences before any other (best first, while
they fit): a multi-hop question needs a fact from a passage whose sentences all score below the first
passage's, and a single ranking over all sentences spends the budget on the first passage alone.
Selective augmentation: sentences scoring below ``min_score`` are never kept, so when none clears it
the context is empty (the generator then answers without passages).

``mass`` makes the budget adapt to the query: the budget (``rate`` or ``target_tokens``) becomes a ceiling,
and only the best sentences whose share of the softmax of the scores (at ``temperature``) reaches ``mass``
are kept, but never fewer tokens than ``min_rate`` of the context. A question whose best sentence stands
out gets a short context; one whose scores are spread over several sentences (often a multi-hop question,
whose evidence sits in two passages) a longer one. ``eval/results/compression.md`` measures it against a
fixed rate at the same mean compression.
"""

from __future__ import annotations

from dataclasses import field, replace
from typing import Any, Mapping, Sequence

from rag.compression import (
    DEFAULT_TOKENIZER,
    BaseCompressor,
    Piece,
    Span,
    TokenCounter,
    Unit,
    check_budget_params,
    greedy,
    keep_units,
    units_in,
)
from rag.errors import InputError
from rag.registry import declared_params

SCORERS = ("dense", "cross-encoder", "reranker")


@declared_params
class ExtractiveCompressor(BaseCompressor):
    """Keep the query's best sentences within the budget, in source order (see the module docstring)."""

    rate: float | None = None
    target_tokens: int | None = None
    scorer: str = "dense"
    model: str = "minilm"
    reranker: "str | Mapping[str, Any] | None" = None
    min_score: float | None = None
    neighbours: int = 0
    max_sentence_tokens: int = 64
    tokenizer: str = DEFAULT_TOKENIZER
    lexical_weight: float = 1.0
    dtype: str = "float32"
    per_passage: int = 0
    mass: float | None = None
    temperature: float = 0.15
    min_rate: float = 0.0
    # the last (query, texts) scored and their scores: the same hits at several budgets score once
    _last: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        from rag.encoders import check_dtype

        check_budget_params("extractive", self.rate, self.target_tokens)
        check_dtype(self.model, self.dtype)
        if self.scorer not in SCORERS:
            raise InputError(f"extractive compressor: unknown scorer {self.scorer!r}; known: {', '.join(SCORERS)}")
        if self.scorer == "reranker" and self.reranker is None:
            raise InputError("extractive compressor: scorer 'reranker' needs reranker=<registered reranker name or spec>")
        if not self.lexical_weight >= 0:  # also refuses NaN
            raise InputError(f"extractive compressor: lexical_weight must be >= 0, got {self.lexical_weight}")
        if self.neighbours < 0 or self.per_passage < 0 or self.max_sentence_tokens < 1:
            raise InputError(
                f"extractive compressor: neighbours and per_passage must be >= 0 and max_sentence_tokens >= 1, "
                f"got {self.neighbours}, {self.per_passage} and {self.max_sentence_tokens}"
            )
        if self.mass is not None and not 0 < self.mass <= 1:
            raise InputError(f"extractive compressor: mass is a share of the score weight in (0, 1], got {self.mass}")
        if not self.temperature > 0 or not 0 <= self.min_rate <= 1:
            raise InputError(f"extractive compressor: need temperature > 0 and 0 <= min_rate <= 1, got "
                             f"{self.temperature} and {self.min_rate}")

    def sentences(self, pieces: Sequence[Piece], counter: TokenCounter) -> tuple[list[tuple[int, int, int]], list[int]]:
        """``(piece, start, end)`` of every sentence in the pieces' spans, and its length in tokens."""
        from rag.text import sentence_units

        limit = self.max_sentence_tokens

        def split(text: str, spans: Sequence[Span]) -> list[Span]:
            out: list[Span] = []
            for a, b in spans:
                sub = text[a:b]
                sub_starts = counter.starts([sub])[0] if sub else []
                out.extend((a + x, a + y) for x, y in sentence_units(sub, sub_starts, limit))
            return out

        return units_in(pieces, split, counter)

    def score(self, query: str, texts: list[str]) -> list[float]:
        """Relevance of each text to ``query`` by the configured scorer (higher is better)."""
        if not texts:
            return []
        key = (query, tuple(texts))
        if self._last is None or self._last[0] != key:
            self._last = (key, self._score(query, texts))
        return list(self._last[1])

    def _score(self, query: str, texts: list[str]) -> list[float]:
        scores = self._model_score(query, texts)
        if self.lexical_weight:
            lexical = lexical_overlap(query, texts)
            scores = [s + self.lexical_weight * x for s, x in zip(scores, lexical)]
        return scores

    def _model_score(self, query: str, texts: list[str]) -> list[float]:
        if self.scorer == "dense":
            from rag.encoders import SentenceEncoder

            encoder = SentenceEncoder(self.model, dtype=self.dtype)
            q = encoder.encode_queries([query])[0]
            return [float(x) for x in encoder.encode_documents(texts) @ q]
        if self.scorer == "cross-encoder":
            return [float(x) for x in _cross_encoder(self.model).predict([(query, t) for t in texts])]
        return _rerank_scores(self.reranker, query, texts)

    def select(self, query: str, pieces: list[Piece], budget: int, counter: TokenCounter) -> list[Piece]:
        found, tokens = self.sentences(pieces, counter)
        texts = [pieces[p].chunk.text[a:b] for p, a, b in found]
        scores = self.score(query, texts)
        units = [Unit(p, a, b, s, t) for (p, a, b), s, t in zip(found, scores, tokens)]
        eligible = [i for i, u in enumerate(units) if self.min_score is None or u.score >= self.min_score]
        budget = self._adaptive_budget([units[i] for i in eligible], budget, sum(u.tokens for u in units))
        chosen = [eligible[i] for i in greedy(self._ranked([units[i] for i in eligible]), budget)]
        if self.neighbours:
            chosen = self._add_neighbours(units, chosen, budget)
        return keep_units(pieces, units, chosen)

    def _adaptive_budget(self, units: list[Unit], budget: int, context_tokens: int) -> int:
        """With ``mass``: the tokens of the best units that hold ``mass`` of the score weight (at least
        ``min_rate`` of ``context_tokens``), at most ``budget``; else ``budget``."""
        if self.mass is None or not units:
            return budget
        import math

        import numpy as np

        scores = np.array([u.score for u in units], dtype=np.float64)
        weights = np.exp((scores - scores.max()) / self.temperature)
        weights /= weights.sum()
        needed, held = 0, 0.0
        for i in sorted(range(len(units)), key=lambda i: (-units[i].score, i)):
            needed += units[i].tokens
            held += float(weights[i])
            if held >= self.mass - 1e-12:  # the sum of all weights may round just below 1
                break
        return min(budget, max(needed, math.floor(self.min_rate * context_tokens)))

    def _ranked(self, units: list[Unit]) -> list[Unit]:
        """The units with the scores :func:`greedy` ranks by: each passage's best ``per_passage`` lifted above
        all others (their order among themselves, and the others', unchanged)."""
        if not self.per_passage or not units:
            return units
        rank_in_piece: dict[int, int] = {}
        lifted = set()
        for i in sorted(range(len(units)), key=lambda i: (-units[i].score, i)):
            rank = rank_in_piece.get(units[i].piece, 0)
            rank_in_piece[units[i].piece] = rank + 1
            if rank < self.per_passage:
                lifted.add(i)
        lift = max(u.score for u in units) - min(u.score for u in units) + 1.0
        return [replace(u, score=u.score + lift) if i in lifted else u for i, u in enumerate(units)]

    def _add_neighbours(self, units: list[Unit], chosen: list[int], budget: int) -> list[int]:
        """Add sentences next to kept ones (same piece, within ``neighbours``), best kept sentence first."""
        kept, left = set(chosen), budget - sum(units[i].tokens for i in chosen)
        for i in sorted(chosen, key=lambda i: -units[i].score):
            for distance in range(1, self.neighbours + 1):
                for j in (i - distance, i + distance):
                    if 0 <= j < len(units) and j not in kept and units[j].piece == units[i].piece \
                            and units[j].tokens <= left:
                        kept.add(j)
                        left -= units[j].tokens
        return sorted(kept)


def lexical_overlap(query: str, texts: Sequence[str]) -> list[float]:
    """For each text, the idf-weighted share (0 to 1) of the query's distinct terms it contains.

    Terms come from Lucene's English analysis (:func:`rag.analysis.tokenize`: lower case, stop words
    out, Porter stems); a term's idf is BM25's, over ``texts`` themselves, so a query term every sentence
    shares counts little, and terms no text contains are left out. No shared term gives zeros.
    """
    import math

    from rag.analysis import tokenize

    query_terms = set(tokenize(query))
    text_terms = [set(tokenize(t)) & query_terms for t in texts]
    n = len(texts)
    df = {term: sum(term in terms for terms in text_terms) for term in query_terms}
    # Query terms in no text cannot tell the texts apart: they are left out of the total too.
    idf = {term: math.log(1 + (n - count + 0.5) / (count + 0.5)) for term, count in df.items() if count}
    total = sum(idf.values())
    if not total:
        return [0.0] * n
    return [sum(idf[term] for term in terms) / total for terms in text_terms]


def _cross_encoder(model: str) -> Any:
    from rag.encoders import resolve_model_path
    from rag.lazy import require

    key = ("cross-encoder", model)
    if key not in _CACHE:
        st = require("sentence_transformers", "dense")
        _CACHE[key] = st.CrossEncoder(resolve_model_path(model), device="cpu")
    return _CACHE[key]


def _rerank_scores(spec: "str | Mapping[str, Any]", query: str, texts: list[str]) -> list[float]:
    """Scores from a registered reranker, each sentence posing as a hit (one chunk per sentence)."""
    from rag.registry import build
    from rag.types import Chunk, Hit

    key = ("reranker", repr(spec))
    if key not in _CACHE:
        _CACHE[key] = build("reranker", spec)
    hits = [Hit(Chunk(f"s{i}", "sentences", t, 0, len(t)), 0.0, "extractive") for i, t in enumerate(texts)]
    ranked = _CACHE[key].rerank(query, hits, len(hits))
    by_id = {h.chunk.id: float(h.score) for h in ranked}
    floor = min(by_id.values(), default=0.0) - 1.0  # a reranker that cut some sentences: they rank last
    return [by_id.get(f"s{i}", floor) for i in range(len(texts))]


_CACHE: dict[tuple[str, str], Any] = {}
