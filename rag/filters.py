"""Filters that cut a hit list after retrieval (and reranking). Several may chain in a pipeline."""

from __future__ import annotations

from rag.errors import InputError
from rag.protocols import BaseFilter
from rag.types import Hit


class TopKFilter(BaseFilter):
    """Keep the ``k`` best hits, optionally only those scoring at least ``min_score``."""

    def __init__(self, k: int = 5, min_score: float | None = None) -> None:
        if k < 1:
            raise InputError(f"top-k filter: k must be at least 1, got {k}")
        self.k = k
        self.min_score = min_score

    def filter(self, query: str, hits: list[Hit]) -> list[Hit]:
        kept = sorted(hits, key=lambda h: h.score, reverse=True)[: self.k]
        if self.min_score is not None:
            kept = [h for h in kept if h.score >= self.min_score]
        return kept
