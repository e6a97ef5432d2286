"""The saved format of the late-interaction indexes: version, kinds, file names, and the checked ``.npy`` reader.

On disk (format version 1) a saved :class:`~indexes.late.index.LateInteractionIndex` is a directory holding
``manifest.json`` (see :mod:`rag.manifest`; adds ``model``, ``encoder``, ``dimension``, ``storage``,
``tokens``, ``nlist``, ``trained_tokens``, ``token_bytes_float32``, ``stored_bytes`` and
``compression_ratio``), ``chunks.jsonl`` (one ``Chunk.to_dict()`` per line, in storage order),
``offsets.npy`` (int64, documents + 1: document ``i`` owns token rows ``offsets[i]:offsets[i+1]``),
``tokens.npy`` (float16 or int8, tokens x dimension), ``scales.npy`` (int8 storage only),
``centroids.npy`` (float32) and ``codes.npy`` (int32 centroid id per token). A
:class:`~indexes.late.rerank_index.LateRerankIndex` saves the same token files (no centroids) and its BM25
index under ``bm25/``. All arrays are plain ``.npy`` files (no pickle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import InputError

FORMAT_VERSION = 1
KIND = "late"
RERANK_KIND = "late-rerank"
CHUNKS = "chunks.jsonl"
OFFSETS = "offsets.npy"
TOKENS = "tokens.npy"
SCALES = "scales.npy"
CENTROIDS = "centroids.npy"
CODES = "codes.npy"
BM25_DIR = "bm25"


def load_array(path: Path, dtype: Any) -> np.ndarray:
    """The array in ``path`` (no pickle), which must hold ``dtype``; anything else is an error naming the file."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    if array.dtype != dtype:
        raise InputError(f"{path}: holds {array.dtype}, expected {np.dtype(dtype)}")
    return array
