"""Speculative retrieval's two helpers (RaLMSpec, Zhang et al. 2024): the per-request chunk cache that
answers retrievals while decoding runs ahead, and the scheduler that picks how many steps to speculate
before verifying them with one batched call to the real index."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from rag.protocols import ScoresChunks
from rag.types import Hit


@dataclass
class ChunkCache:
    """Chunks the real index returned earlier for one request, ranked for a new query the way the index
    ranks them.

    With an index that scores given chunks (:class:`rag.protocols.ScoresChunks`), :meth:`top` ranks every
    cached chunk by the index's own score, so its top ``k`` equals the index's whenever the index's top ``k``
    are all cached (RaLMSpec's argument: retrieval results of nearby queries overlap, so the cache holds them
    more often than not). Other indexes (fusion of several rankings, for one) cannot score a chunk alone:
    :meth:`top` then guesses that the last real retrieval's top ``k`` is unchanged, which is right whenever
    the extra answer tokens do not move the ranking. Either way a wrong guess is only a wasted step: the
    real retrieval verifies every guess. (Lexical indexes return only chunks that share a term with the
    query; when fewer than ``k`` do, the guess still lists ``k`` and is wrong: rare at any real corpus size.)
    """

    index: Any
    hits: dict[str, Hit] = field(default_factory=dict)
    last: list[Hit] = field(default_factory=list)  # the last real retrieval's hits, best first
    vectors: dict[str, Any] = field(default_factory=dict)  # query -> its encoding, for indexes that take them

    @property
    def scored(self) -> bool:
        """Whether guesses are ranked by the index's scores (else: the last real top k)."""
        return isinstance(self.index, ScoresChunks)

    @property
    def by_vector(self) -> bool:
        """Whether the index scores and searches with query encodings computed beforehand (dense: one
        embedding; late interaction: token vectors): a query is then encoded once, alone, for its guess, and
        verified with the same encoding, so a batch of guesses is searched with exactly the numbers a search
        of each query alone would use (batched encoding pads, which can move the last bits)."""
        return _encoded_calls(self.index) is not None

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """The real index's hits for a batch of guessed queries (one call), reusing their encodings."""
        calls = _encoded_calls(self.index)
        if calls is None or any(q not in self.vectors for q in queries):
            return self.index.search(list(queries), k)
        encoded = [self.vectors[q] for q in queries]
        for query in queries:
            self.vectors.pop(query, None)
        return calls[2](list(queries), encoded, k)

    def add(self, hits: Sequence[Hit]) -> None:
        """Remember a real retrieval's hits (the newest one is what the fallback guess repeats)."""
        for hit in hits:
            self.hits.setdefault(hit.chunk.id, hit)
        self.last = list(hits)

    def top(self, query: str, k: int) -> list[Hit]:
        """The guess for ``index.search(query, k)``: cached hits, best first, with the index's scores."""
        if not self.scored:
            return self.last[:k]
        ids = list(self.hits)
        calls = _encoded_calls(self.index)
        if calls is not None:
            self.vectors[query] = calls[0](query)
            scores = calls[1](self.vectors[query], ids)
        else:
            scores = self.index.score_chunks(query, ids)
        ranked = sorted(range(len(ids)), key=lambda i: -scores[i])[:k]
        return [Hit(chunk=self.hits[ids[i]].chunk, score=float(scores[i]), source=self.hits[ids[i]].source)
                for i in ranked]


def _encoded_calls(index: Any) -> tuple[Any, Any, Any] | None:
    """(encode one query, score chunks for an encoding, search a batch of encodings) for the index kinds
    that split search into encoding and searching; None for the others."""
    if all(hasattr(index, name) for name in ("encoder", "score_vectors", "search_vectors")):  # dense
        import numpy as np

        return (lambda query: index.encoder.encode_queries([query])[0], index.score_vectors,
                lambda queries, encoded, k: index.search_vectors(np.stack(encoded), k))
    if all(hasattr(index, name) for name in ("encode_queries", "score_encoded", "search_encoded")):  # late
        import inspect

        takes_texts = "vectors" in inspect.signature(index.search_encoded).parameters  # late-rerank: BM25 first
        search = ((lambda queries, encoded, k: index.search_encoded(queries, encoded, k)) if takes_texts
                  else (lambda queries, encoded, k: index.search_encoded(encoded, k)))
        return (lambda query: index.encode_queries([query])[0], index.score_encoded, search)
    return None


@dataclass
class StrideScheduler:
    """How many retrieval steps to speculate before one verification (the speculation stride).

    RaLMSpec's optimal-stride scheduler, in a simpler closed form: with ``gamma`` the chance that a guess
    is right, ``a`` the seconds of one speculative step (guess plus decoding) and ``b`` those of one batched
    verification, speculating ``s`` steps verifies on average ``sum_i i gamma^(i-1) (1-gamma) + s gamma^s``
    steps (the steps before the first wrong guess, plus the wrong step redone with the true passages) in
    ``s a + b + (1 - gamma^s) a`` seconds (the redo costs a step); the scheduler picks the ``s`` up to
    ``max_stride`` with the most steps per second. Stride 0 means not speculating: search for real, then
    decode (``a + b`` seconds a step, nothing wasted). The model shows that speculating one step is never
    faster than that (``2a - gamma a + b`` against ``a + b``): only a batch of two or more guesses saves
    searches, so when searching is cheap against a step (a small corpus, a slow generator) the scheduler
    takes real steps and speculation costs nothing but ranking a shadow guess, which keeps ``gamma`` measured
    in case searching gets slower. (One guessed step pays only where its verification overlaps the next
    step, as in RaLMSpec's asynchronous verification; this loop verifies synchronously.) The estimates are running means over everything this scheduler has seen (one per component,
    so they carry over between questions); ``gamma`` starts from one right and one wrong guess (a uniform
    prior); until a step and a search have been timed the scheduler takes real steps, which time both.
    ``fixed`` pins the stride instead. What the scheduler chooses changes speed only, never the answer.
    """

    max_stride: int = 8
    fixed: int | None = None
    right: int = 1
    guessed: int = 2
    step_seconds: list[float] = field(default_factory=lambda: [0.0, 0])  # sum, count
    verify_seconds: list[float] = field(default_factory=lambda: [0.0, 0])

    @property
    def gamma(self) -> float:
        return self.right / self.guessed

    def next_stride(self) -> int:
        """Steps to guess before the next verification; 0: take a real step (search, then decode)."""
        if self.fixed is not None:
            return self.fixed
        if not self.step_seconds[1] or not self.verify_seconds[1]:
            return 0  # a real step times both a step and a search
        a = self.step_seconds[0] / self.step_seconds[1]
        b = self.verify_seconds[0] / self.verify_seconds[1]
        best = max(range(1, self.max_stride + 1), key=lambda s: steps_per_second(s, self.gamma, a, b))
        return best if steps_per_second(best, self.gamma, a, b) > 1 / (a + b) else 0

    def record_step(self, seconds: float) -> None:
        self.step_seconds[0] += seconds
        self.step_seconds[1] += 1

    def record_verification(self, seconds: float, right: int, guessed: int) -> None:
        """One verification: its seconds, and how many of the guesses it checked were right."""
        self.verify_seconds[0] += seconds
        self.verify_seconds[1] += 1
        self.right += right
        self.guessed += guessed


def steps_per_second(stride: int, gamma: float, a: float, b: float) -> float:
    """Expected verified steps per second when speculating ``stride`` steps (see :class:`StrideScheduler`)."""
    progress = sum(i * gamma ** (i - 1) * (1 - gamma) for i in range(1, stride + 1)) + stride * gamma ** stride
    seconds = stride * a + b + (1 - gamma ** stride) * a
    return progress / seconds if seconds > 0 else float(stride)
