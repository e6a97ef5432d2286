"""The token store: documents' token vectors, compressed (float16 or int8), stacked in document order.

**Storage.** Token vectors are kept compressed: ``storage="int8"`` (the default: one signed byte per
dimension plus a float32 scale per token, about a quarter of float32) or ``"float16"`` (half). Both leave
MaxSim within about 1e-2 of float32; int8 is also the faster one to score here, because converting gathered
int8 rows to float32 costs numpy about a fifth of what float16 rows cost. The store scores MaxSim on its
compressed rows directly (:meth:`TokenStore.scores` for some documents, :meth:`TokenStore.all_scores` for
all), converting a block of rows to float32 at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from indexes.late.files import CHUNKS, OFFSETS, SCALES, TOKENS, load_array
from rag.errors import InputError

STORAGES = ("float16", "int8")
# Token rows converted to float32 at a time by brute-force MaxSim and centroid assignment.
BLOCK_TOKENS = 32768
# Token rows converted to float32 at a time by exact scoring of candidates (fits in cache).
SCORE_BLOCK = 1024


class TokenStore:
    """Token vectors of documents, compressed, stacked in document order: document ``i`` owns rows
    ``offsets[i]:offsets[i+1]``."""

    def __init__(self, storage: str, dimension: int = 0) -> None:
        self.storage = storage
        self.dimension = dimension
        self.offsets = np.zeros(1, dtype=np.int64)
        dtype = np.float16 if storage == "float16" else np.int8
        self.tokens = np.zeros((0, dimension), dtype=dtype)
        self.scales = np.zeros(0, dtype=np.float32)  # int8 only

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def compress(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.storage == "float16":
            return vectors.astype(np.float16), np.zeros(0, np.float32)
        scale = np.abs(vectors).max(axis=1) / 127.0 if len(vectors) else np.zeros(0, np.float32)
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        return np.clip(np.rint(vectors / scale[:, None]), -127, 127).astype(np.int8), scale

    def extended(self, documents: list[np.ndarray]) -> "TokenStore":
        """A new store with ``documents`` appended (this one is left unchanged)."""
        dimension = self.dimension or next((d.shape[1] for d in documents if d.size), 0)
        stacked = [d.reshape(-1, dimension) for d in documents]
        vectors = np.concatenate(stacked) if stacked else np.zeros((0, dimension), np.float32)
        codes, scales = self.compress(vectors.astype(np.float32, copy=False))
        new = TokenStore(self.storage, dimension)
        lengths = np.array([len(d) for d in stacked], dtype=np.int64)
        new.offsets = np.concatenate([self.offsets, self.offsets[-1] + np.cumsum(lengths)])
        new.tokens = np.concatenate([self.tokens.reshape(-1, dimension), codes]) if len(self.tokens) else codes
        new.scales = np.concatenate([self.scales, scales]) if self.storage == "int8" else self.scales
        return new

    def without(self, rows: np.ndarray) -> "TokenStore":
        """A new store without the documents at ``rows``."""
        keep_docs = np.ones(len(self), dtype=bool)
        keep_docs[rows] = False
        lengths = np.diff(self.offsets)
        keep_tokens = np.repeat(keep_docs, lengths)
        new = TokenStore(self.storage, self.dimension)
        new.offsets = np.concatenate([[0], np.cumsum(lengths[keep_docs])]).astype(np.int64)
        new.tokens = self.tokens[keep_tokens]
        new.scales = self.scales[keep_tokens] if self.storage == "int8" else self.scales
        return new

    def token_rows(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The token row indices of documents ``docs`` (in that order) and each document's length."""
        starts, lengths = self.offsets[docs], self.offsets[docs + 1] - self.offsets[docs]
        total = int(lengths.sum())
        shift = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        return np.arange(total, dtype=np.int64) + shift, lengths

    def decode(self, rows: np.ndarray | slice) -> np.ndarray:
        """Token vectors at ``rows`` as float32."""
        if self.storage == "float16":
            return self.tokens[rows].astype(np.float32)
        return self.tokens[rows].astype(np.float32) * self.scales[rows][:, None]

    def scores(
        self, query: np.ndarray, docs: np.ndarray, codes: np.ndarray | None = None, keep: np.ndarray | None = None
    ) -> np.ndarray:
        """Exact MaxSim (on the stored vectors) of one query against documents ``docs``.

        With ``codes`` (centroid id per token row) and ``keep`` (bool per centroid), only the tokens whose
        centroid is kept are scored (a document with none left scores 0). Rows are gathered and converted to
        float32 a block of ``SCORE_BLOCK`` at a time, so that the float32 copy stays in cache.
        """
        query = np.asarray(query, dtype=np.float32)
        rows, lengths = self.token_rows(np.asarray(docs, dtype=np.int64))
        if keep is not None and codes is not None:
            mask = keep[codes[rows]]
            lengths = np.bincount(np.repeat(np.arange(len(lengths)), lengths)[mask], minlength=len(lengths))
            rows = rows[mask]
        total = len(rows)
        scores = np.zeros(len(lengths), dtype=np.float32)
        if total == 0 or len(query) == 0:
            return scores
        sims = np.empty((len(query), total), dtype=np.float32)
        block = np.empty((min(SCORE_BLOCK, total), self.dimension), dtype=np.float32)
        for begin in range(0, total, SCORE_BLOCK):
            end = min(begin + SCORE_BLOCK, total)
            np.copyto(block[: end - begin], self.tokens[rows[begin:end]], casting="unsafe")
            np.matmul(query, block[: end - begin].T, out=sims[:, begin:end])
        if self.storage == "int8":
            sims *= self.scales[rows]
        nonempty = lengths > 0
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[nonempty]
        scores[nonempty] = np.maximum.reduceat(sims, starts, axis=1).sum(axis=0)
        return scores

    def all_scores(self, queries: list[np.ndarray]) -> np.ndarray:
        """Brute-force MaxSim of every query against every document, ``(queries, documents)`` float32.

        Token rows are decoded one block at a time and scored against all query tokens at once.
        """
        n_docs = len(self)
        result = np.zeros((len(queries), n_docs), dtype=np.float32)
        if not queries or n_docs == 0:
            return result
        stacked = np.concatenate(queries)
        qlens = np.array([len(q) for q in queries])
        qstarts = np.concatenate([[0], np.cumsum(qlens)[:-1]])
        lengths = np.diff(self.offsets)
        doc = 0
        while doc < n_docs:
            # Whole documents per block, at least one.
            end = int(np.searchsorted(self.offsets, self.offsets[doc] + BLOCK_TOKENS, side="right")) - 1
            end = min(max(end, doc + 1), n_docs)
            rows = slice(int(self.offsets[doc]), int(self.offsets[end]))
            block = self.tokens[rows].astype(np.float32)
            block_lengths = lengths[doc:end]
            nonempty = np.flatnonzero(block_lengths > 0)
            if len(nonempty) and len(block):
                sims = stacked @ block.T
                if self.storage == "int8":
                    sims *= self.scales[rows]
                starts = (self.offsets[doc:end] - self.offsets[doc])[nonempty]
                per_token = np.maximum.reduceat(sims, starts, axis=1)  # (query tokens, documents)
                result[:, doc + nonempty] = np.add.reduceat(per_token, qstarts, axis=0)
            doc = end
        return result

    @property
    def stored_bytes(self) -> int:
        return int(self.tokens.nbytes + self.scales.nbytes + self.offsets.nbytes)

    def save(self, directory: Path) -> list[str]:
        np.save(directory / OFFSETS, self.offsets, allow_pickle=False)
        np.save(directory / TOKENS, np.ascontiguousarray(self.tokens), allow_pickle=False)
        names = [OFFSETS, TOKENS]
        if self.storage == "int8":
            np.save(directory / SCALES, self.scales, allow_pickle=False)
            names.append(SCALES)
        return names

    @classmethod
    def read(cls, directory: Path, storage: str, n_docs: int) -> "TokenStore":
        store = cls(storage)
        store.offsets = load_array(directory / OFFSETS, np.int64)
        tokens = load_array(directory / TOKENS, np.float16 if storage == "float16" else np.int8)
        if tokens.ndim != 2:
            raise InputError(f"{directory / TOKENS}: expected a 2-d array, got shape {tokens.shape}")
        store.tokens, store.dimension = tokens, int(tokens.shape[1])
        if storage == "int8":
            store.scales = load_array(directory / SCALES, np.float32)
        if (
            len(store.offsets) != n_docs + 1 or store.offsets[0] != 0 or np.any(np.diff(store.offsets) < 0)
            or store.offsets[-1] != len(tokens) or (storage == "int8" and len(store.scales) != len(tokens))
        ):
            raise InputError(
                f"{directory}: {OFFSETS} ({len(store.offsets)} entries), {TOKENS} ({len(tokens)} rows) and "
                f"{CHUNKS} ({n_docs} chunks) do not agree"
            )
        return store
