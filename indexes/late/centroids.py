"""Centroids of the token vectors: how many (:func:`default_nlist`), training them (faiss spherical k-means
on a fixed-seed sample) and assigning every stored token to its nearest one.

:class:`~indexes.late.index.LateInteractionIndex` uses the centroids for candidate generation (inverted
lists from centroid to documents) and to prune the tokens that exact MaxSim scores.
"""

from __future__ import annotations

import numpy as np

from indexes.late.store import BLOCK_TOKENS, TokenStore
from rag.errors import InputError
from rag.lazy import require

# Centroids per sqrt(tokens) (see default_nlist): finer centroids make centroid interaction and the pruning of
# stage 2 sharper, so fewer candidates and fewer of their tokens reach exact scoring for the same recall.
CENTROIDS_PER_SQRT_TOKEN = 4
KMEANS_ITERATIONS = 10
KMEANS_POINTS_PER_CENTROID = 32


def default_nlist(n_tokens: int, per_sqrt_token: float = CENTROIDS_PER_SQRT_TOKEN) -> int:
    """Centroids for ``n_tokens`` token vectors: the power of two nearest ``per_sqrt_token * sqrt(n_tokens)``
    (4 by default: 4,096 for SciFact's 1.23M tokens; PLAID uses about ``16 * sqrt``), at most ``n_tokens / 8``
    (k-means needs several points per centroid), at least 1. ``bench/late.py`` compares factors."""
    if n_tokens <= 0:
        return 1
    target = 2 ** int(round(np.log2(max(per_sqrt_token * np.sqrt(n_tokens), 1.0))))
    return int(max(1, min(target, n_tokens // 8)))


def train_centroids(store: TokenStore, nlist: int | None) -> np.ndarray:
    """faiss spherical k-means on a fixed-seed sample of the stored token vectors."""
    faiss = require("faiss", "dense", "faiss-cpu")
    n = store.n_tokens
    if n == 0:
        raise InputError("late index: no token vectors to train centroids on (all texts are empty)")
    nlist = min(nlist or default_nlist(n), n)
    sample_size = min(n, nlist * KMEANS_POINTS_PER_CENTROID)
    rows = np.sort(np.random.default_rng(0).choice(n, size=sample_size, replace=False))
    sample = np.ascontiguousarray(store.decode(rows))
    if nlist == 1:
        centroid = sample.mean(axis=0, keepdims=True)
        return (centroid / max(np.linalg.norm(centroid), 1e-12)).astype(np.float32)
    kmeans = faiss.Kmeans(
        store.dimension, nlist, niter=KMEANS_ITERATIONS, seed=1234, spherical=True,
        max_points_per_centroid=KMEANS_POINTS_PER_CENTROID, min_points_per_centroid=1, verbose=False,
    )
    kmeans.train(sample)
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def assign_centroids(store: TokenStore, centroids: np.ndarray, start: int) -> np.ndarray:
    """The nearest centroid (inner product) of every stored token from row ``start`` on, int32."""
    faiss = require("faiss", "dense", "faiss-cpu")
    quantizer = faiss.IndexFlatIP(centroids.shape[1])
    quantizer.add(centroids)
    out = []
    for begin in range(start, store.n_tokens, BLOCK_TOKENS):
        block = np.ascontiguousarray(store.decode(slice(begin, min(begin + BLOCK_TOKENS, store.n_tokens))))
        out.append(quantizer.search(block, 1)[1][:, 0].astype(np.int32))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int32)
