"""Semantic chunking: cut where the meaning of neighbouring sentence windows shifts, within size limits.

Every sentence is embedded once (one batched encode per batch of documents); the distance at the gap
before sentence ``c`` is the cosine distance between the mean embedding of the ``window`` sentences before
it and of the ``window`` sentences from it on. Gaps whose distance passes the document's threshold are
breakpoints; :func:`chunkers.text.segment` then cuts groups above ``max_tokens`` at their most distant gap
and merges groups below ``min_tokens`` into a neighbour across the closer gap.

    >>> from chunkers.semantic import SemanticChunker
    >>> chunker = SemanticChunker(threshold_type="percentile", threshold_amount=90, max_tokens=128)
    >>> chunker.chunk(doc)   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, Sequence

import numpy as np

from chunkers.text import SpanChunker, check_sizes, segment
from rag.errors import InputError
from rag.registry import declared_params
from rag.text import Span, sentence_units

# Defaults per rule, as in LangChain's SemanticChunker, so results are comparable with it.
THRESHOLD_DEFAULTS = {"percentile": 95.0, "std": 3.0, "iqr": 1.5}


def breakpoint_threshold(distances: np.ndarray, threshold_type: str, amount: float) -> float:
    """The distance above which a gap is a breakpoint, for one document's gap distances.

    ``percentile``: the ``amount``-th percentile; ``std``: mean + ``amount`` standard deviations;
    ``iqr``: mean + ``amount`` interquartile ranges.
    """
    if threshold_type == "percentile":
        return float(np.percentile(distances, amount))
    if threshold_type == "std":
        return float(np.mean(distances) + amount * np.std(distances))
    if threshold_type == "iqr":
        q1, q3 = np.percentile(distances, [25, 75])
        return float(np.mean(distances) + amount * (q3 - q1))
    raise InputError(f"semantic chunker: threshold_type must be one of {sorted(THRESHOLD_DEFAULTS)}, got {threshold_type!r}")


def window_distances(embeddings: np.ndarray, window: int) -> np.ndarray:
    """Cosine distance at each gap ``c`` (``1 <= c < n``; index 0 is unused and 0) between the mean of
    the ``window`` rows before ``c`` and the mean of the ``window`` rows from ``c`` on."""
    n = len(embeddings)
    distances = np.zeros(n, dtype=np.float64)
    if n < 2:
        return distances
    cumulative = np.vstack([np.zeros((1, embeddings.shape[1])), np.cumsum(embeddings, axis=0, dtype=np.float64)])
    gaps = np.arange(1, n)
    left = cumulative[gaps] - cumulative[np.maximum(gaps - window, 0)]
    right = cumulative[np.minimum(gaps + window, n)] - cumulative[gaps]
    norms = np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1)
    cosine = np.einsum("ij,ij->i", left, right) / np.where(norms > 0, norms, 1.0)
    distances[1:] = 1.0 - cosine
    return distances


@declared_params
class SemanticChunker(SpanChunker):
    """Breakpoints where neighbouring sentence windows' embeddings diverge, inside ``[min_tokens, max_tokens]``.

    ``model`` embeds sentences (a pack name, local path or hub id; default the ``minilm`` pack);
    ``threshold_type`` is ``"percentile"``, ``"std"`` or ``"iqr"`` with ``threshold_amount`` (default 95,
    3 and 1.5). Sizes count tokens of ``tokenizer``; ``max_tokens`` is a hard limit, ``min_tokens`` holds
    unless both neighbours of a short group are too large to take it. ``dtype`` is the encoder's
    (``float32`` or ``bfloat16``, see :class:`rag.encoders.SentenceEncoder`).
    """

    model: str = "minilm"
    threshold_type: str = "percentile"
    threshold_amount: float | None = None
    window: int = 1
    min_tokens: int = 32
    max_tokens: int = 200
    tokenizer: str = "minilm"
    batch_size: int = 64
    dtype: str = "float32"
    _encoder: Any = field(default=None, init=False)  # loaded on first use

    def __post_init__(self) -> None:
        from rag.encoders import check_dtype

        check_dtype(self.model, self.dtype)
        if self.threshold_type not in THRESHOLD_DEFAULTS:
            raise InputError(f"semantic chunker: threshold_type must be one of {sorted(THRESHOLD_DEFAULTS)}, "
                             f"got {self.threshold_type!r}")
        amount = self.threshold_amount
        if self.threshold_type == "percentile" and amount is not None and not 0 <= amount <= 100:
            raise InputError(f"semantic chunker: a percentile threshold_amount must be in [0, 100], got {amount}")
        if self.window < 1:
            raise InputError(f"semantic chunker: window must be at least 1 sentence, got {self.window}")
        if self.batch_size < 1:
            raise InputError(f"semantic chunker: batch_size must be at least 1, got {self.batch_size}")
        check_sizes("semantic", self.max_tokens, min_tokens=self.min_tokens)

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from rag.encoders import SentenceEncoder

            self._encoder = SentenceEncoder(self.model, batch_size=self.batch_size, show_progress=False, dtype=self.dtype)
        return self._encoder

    def _spans_many(self, texts: list[str], starts: list[Sequence[int]]) -> list[list[Span]]:
        units = [sentence_units(text, s, self.max_tokens) for text, s in zip(texts, starts)]
        # One encode call for every sentence of the batch; documents of one sentence need no embedding.
        pieces = [text[a:b] for text, doc_units in zip(texts, units) if len(doc_units) > 1 for a, b in doc_units]
        embeddings = self.encoder.encode_documents(pieces) if pieces else np.zeros((0, 1), dtype=np.float32)
        amount = THRESHOLD_DEFAULTS[self.threshold_type] if self.threshold_amount is None else self.threshold_amount
        spans: list[list[Span]] = []
        offset = 0
        for doc_units, doc_starts in zip(units, starts):
            if len(doc_units) <= 1:
                spans.append(list(doc_units))
                continue
            distances = window_distances(embeddings[offset:offset + len(doc_units)], self.window)
            offset += len(doc_units)
            threshold = breakpoint_threshold(distances[1:], self.threshold_type, amount)
            cuts = [c for c in range(1, len(doc_units)) if distances[c] > threshold]
            spans.append(segment(doc_units, doc_starts, distances.tolist(), cuts, self.max_tokens, min_tokens=self.min_tokens))
        return spans
