"""MaxSim, the late-interaction score, and the best-first cut of a score array.

**MaxSim.** ``score(q, d) = sum_i max_j <q_i, d_j>`` over the query's and the document's token vectors.
These are the plain float32 versions; :class:`~indexes.late.store.TokenStore` scores its compressed vectors
the same way without decoding them all at once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rag.errors import InputError


def maxsim(query: np.ndarray, documents: Sequence[np.ndarray]) -> np.ndarray:
    """MaxSim of one query's token vectors against each document's: ``sum_i max_j <q_i, d_j>``.

    A document without token vectors scores 0. Returns float32, one score per document.
    """
    query = np.asarray(query, dtype=np.float32)
    lengths = np.array([len(d) for d in documents], dtype=np.int64)
    if not len(documents):
        return np.zeros(0, np.float32)
    rows = [np.asarray(d, dtype=np.float32).reshape(-1, query.shape[1]) for d in documents]
    return segment_maxsim(query, np.concatenate(rows) if rows else np.zeros((0, query.shape[1]), np.float32), lengths)


def segment_maxsim(
    query: np.ndarray, tokens: np.ndarray, lengths: np.ndarray, scales: np.ndarray | None = None
) -> np.ndarray:
    """MaxSim against consecutive documents whose token rows are stacked in ``tokens`` (``lengths`` each);
    ``scales`` multiplies each token row (int8 storage), applied to the similarities (fewer numbers)."""
    scores = np.zeros(len(lengths), dtype=np.float32)
    nonempty = lengths > 0
    if not nonempty.any() or len(query) == 0:
        return scores
    sims = query @ tokens.T  # (query tokens, document tokens)
    if scales is not None:
        sims *= scales
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[nonempty]
    scores[nonempty] = np.maximum.reduceat(sims, starts, axis=1).sum(axis=0)
    return scores


def top_positions(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores, best first (ties by position)."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return part[np.lexsort((part, -scores[part]))]


def query_token_vectors(owner: str, query: object, dimension: int) -> np.ndarray:
    """One query's token vectors as float32 rows of ``dimension``, or an InputError naming ``owner``."""
    vectors = np.asarray(query, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dimension:
        raise InputError(f"{owner}: expected one query's token vectors ({dimension}-d rows), got shape {vectors.shape}")
    return vectors
