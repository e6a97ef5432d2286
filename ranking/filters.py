"""Filters that cut (or reorder) a hit list after retrieval and reranking. Several may chain in a pipeline.

| name | keeps |
|---|---|
| ``topk`` (also ``top-k``) | the ``k`` best hits, optionally only those scoring at least ``min_score`` |
| ``threshold`` | hits scoring at least ``min_score`` (an absolute, query-independent cut) |
| ``score-drop`` | hits until the score falls faster than ``max_drop`` (SAGE's gradient cut-off) |
| ``calibrated`` | hits whose calibrated relevance reaches one global threshold (:mod:`ranking.calibrated`) |
| ``mmr`` | ``k`` hits by maximal marginal relevance, dropping near-duplicates |
| ``reorder`` | every hit, strongest at the start and the end of the context, weakest in the middle |

Every filter sorts by score (best first, ties in input order) before it cuts, so the order hits arrive in
does not matter; an empty list gives an empty list; a NaN or infinite score is an error naming the query
and the chunk.

    >>> from ranking.filters import ScoreDropFilter
    >>> ScoreDropFilter(max_drop=0.3).filter("q", hits)   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

import numpy as np

from rag.errors import InputError
from rag.protocols import BaseFilter, check_hits
from rag.registry import declared_params
from rag.types import Hit


def ranked(name: str, query: str, hits: list[Hit]) -> list[Hit]:
    """``hits`` checked and sorted by score, best first, ties in input order."""
    return sorted(check_hits(f"{name} filter", query, hits), key=lambda h: -h.score)


@declared_params
class TopKFilter(BaseFilter):
    """Keep the ``k`` best hits, optionally only those scoring at least ``min_score``."""

    k: int = 5
    min_score: float | None = None

    def __post_init__(self) -> None:
        if self.k < 1:
            raise InputError(f"top-k filter: k must be at least 1, got {self.k}")

    def filter(self, query: str, hits: list[Hit]) -> list[Hit]:
        kept = ranked("top-k", query, hits)[: self.k]
        if self.min_score is not None:
            kept = [h for h in kept if h.score >= self.min_score]
        return kept


@declared_params
class ThresholdFilter(BaseFilter):
    """Keep the hits scoring at least ``min_score``, best first. The same cut for every query: raw scores
    of most retrievers are not comparable across queries, which is what ``calibrated`` fixes."""

    min_score: float = 0.0

    def __post_init__(self) -> None:
        self.min_score = float(self.min_score)

    def filter(self, query: str, hits: list[Hit]) -> list[Hit]:
        return [h for h in ranked("threshold", query, hits) if h.score >= self.min_score]


@declared_params
class ScoreDropFilter(BaseFilter):
    """Keep hits, best first, until the score falls faster than ``max_drop`` (SAGE's cut-off).

    With ``relative_to="previous"`` (SAGE), the list is cut before the first hit scoring below
    ``(1 - max_drop)`` times the hit above it; this needs positive scores. With ``"range"`` (any scores,
    e.g. LLM logits), it is cut at the first drop larger than ``max_drop`` times the list's score range
    (best minus worst). At least ``min_keep`` and at most ``max_keep`` hits are kept.
    """

    max_drop: float = 0.3
    relative_to: str = "previous"
    min_keep: int = 1
    max_keep: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.max_drop < 1:
            raise InputError(f"score-drop filter: max_drop must be between 0 and 1, got {self.max_drop}")
        if self.relative_to not in ("previous", "range"):
            raise InputError(f"score-drop filter: relative_to must be 'previous' or 'range', got {self.relative_to!r}")
        if self.min_keep < 0 or (self.max_keep is not None and self.max_keep < max(self.min_keep, 1)):
            raise InputError(f"score-drop filter: need 0 <= min_keep <= max_keep, got {self.min_keep}, {self.max_keep}")

    def filter(self, query: str, hits: list[Hit]) -> list[Hit]:
        hits = ranked("score-drop", query, hits)
        if not hits:
            return []
        scores = [h.score for h in hits]
        if self.relative_to == "previous" and scores[-1] <= 0:
            bad = next(h for h in hits if h.score <= 0)
            raise InputError(
                f"score-drop filter: query {query!r}: chunk {bad.chunk.id!r} has score {bad.score} <= 0; "
                "relative_to='previous' needs positive scores, use relative_to='range'"
            )
        spread = scores[0] - scores[-1]
        keep = len(hits)
        for i in range(1, len(hits)):
            if self.relative_to == "previous":
                fell = scores[i] < (1 - self.max_drop) * scores[i - 1]
            else:
                fell = spread > 0 and scores[i - 1] - scores[i] > self.max_drop * spread
            if fell:
                keep = i
                break
        keep = max(keep, min(self.min_keep, len(hits)))
        if self.max_keep is not None:
            keep = min(keep, self.max_keep)
        return hits[:keep]


@declared_params
class MMRFilter(BaseFilter):
    """Maximal marginal relevance: pick ``k`` hits one at a time by
    ``lambda_mult * relevance - (1 - lambda_mult) * max similarity to the hits already picked``.

    Relevance is the hit's score min-max scaled over the list (so the retriever's or reranker's judgement
    is kept); similarity is the cosine of ``model`` embeddings (the ``minilm`` pack by default). A hit whose
    similarity to a picked one reaches ``duplicate_threshold`` is dropped as a near-duplicate. Hits keep
    their scores and come out in the order picked.
    """

    k: int = 5
    lambda_mult: float = 0.7
    duplicate_threshold: float = 0.95
    model: str = "minilm"
    _encoder: Any = field(default=None, init=False)  # loaded on first use

    def __post_init__(self) -> None:
        if self.k < 1:
            raise InputError(f"mmr filter: k must be at least 1, got {self.k}")
        if not 0 <= self.lambda_mult <= 1:
            raise InputError(f"mmr filter: lambda_mult must be between 0 and 1, got {self.lambda_mult}")
        if not 0 < self.duplicate_threshold <= 1:
            raise InputError(f"mmr filter: duplicate_threshold must be in (0, 1], got {self.duplicate_threshold}")

    def embed(self, texts: list[str]) -> np.ndarray:
        if self._encoder is None:
            from rag.encoders import SentenceEncoder

            self._encoder = SentenceEncoder(self.model)
        return self._encoder.encode_documents(texts)

    def filter(self, query: str, hits: list[Hit]) -> list[Hit]:
        hits = ranked("mmr", query, hits)
        if not hits:
            return []
        vectors = self.embed([h.chunk.text for h in hits])
        similarity = vectors @ vectors.T
        scores = np.array([h.score for h in hits], dtype=np.float64)
        spread = scores.max() - scores.min()
        relevance = (scores - scores.min()) / spread if spread > 0 else np.ones_like(scores)
        picked: list[int] = []
        alive = np.ones(len(hits), dtype=bool)
        while len(picked) < self.k and alive.any():
            if picked:
                redundancy = similarity[:, picked].max(axis=1)
                alive &= redundancy < self.duplicate_threshold
                if not alive.any():
                    break
            else:
                redundancy = np.zeros(len(hits))
            value = self.lambda_mult * relevance - (1 - self.lambda_mult) * redundancy
            value[~alive] = -np.inf
            best = int(np.argmax(value))  # the first of equal values: ties keep the score order
            picked.append(best)
            alive[best] = False
        return [hits[i] for i in picked]


@declared_params
class ReorderFilter(BaseFilter):
    """Every hit, strongest at the start and the end of the list and weakest in the middle.

    Long-context models use the start and end of their context best ("Lost in the Middle"): the best hit
    goes first, the second best last, the third second, the fourth second to last, and so on.
    """

    def filter(self, query: str, hits: list[Hit]) -> list[Hit]:
        hits = ranked("reorder", query, hits)
        front, back = hits[0::2], hits[1::2]
        return front + back[::-1]

