"""BM25 first, MaxSim second: :class:`LateRerankIndex` reranks Lucene BM25's top ``depth`` by exact MaxSim
on token vectors it stores at indexing time (same token files as the late index, no centroids; its BM25
index is saved under ``bm25/``, see :mod:`indexes.late.files`).
"""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from indexes.bm25 import BM25Index
from indexes.late.encoder import TokenEncoder, query_vectors, text_of
from indexes.late.files import BM25_DIR, CHUNKS, FORMAT_VERSION, RERANK_KIND
from indexes.late.scoring import query_token_vectors, top_positions
from indexes.late.store import STORAGES, TokenStore
from rag.errors import InputError
from rag.manifest import MANIFEST, SavedIndex, check_new_ids, read_chunks, write_chunks
from rag.protocols import chunks_to_score, text_batch
from rag.registry import declared_params
from rag.types import Chunk, Hit


@declared_params
class LateRerankIndex(SavedIndex):
    """BM25 (Lucene, flat) top ``depth`` reranked by exact MaxSim on the stored token vectors.

    ``add`` indexes chunks in BM25 and stores their token vectors (compressed as ``storage``); ``search``
    returns at most ``max(depth, k)`` BM25 candidates, reordered by MaxSim, cut at ``k``. Offline the
    token vectors are MiniLM token vectors, not a trained ColBERT (see :mod:`indexes.late.encoder`).
    """

    manifest_kind = RERANK_KIND
    manifest_version = FORMAT_VERSION
    saved_params = ("model", "storage", "max_length")

    model: str = "minilm"
    depth: int = 100
    k1: float = 0.9
    b: float = 0.4
    storage: str = "int8"
    max_length: int = 256
    batch_size: int = 32
    name: str = "late-rerank"
    dtype: str = "float32"
    _encoder: TokenEncoder = field(init=False)  # built in __post_init__ (cheap: the model loads on first use)
    _bm25: BM25Index = field(init=False)  # built in __post_init__: the first stage, flat fields
    _chunks: list[Chunk] = field(default_factory=list, init=False)
    _rows: dict[str, int] = field(default_factory=dict, init=False)
    _store: TokenStore = field(init=False)  # built in __post_init__, empty, with this index's storage

    def __post_init__(self) -> None:
        name, storage, depth = self.name, self.storage, self.depth
        if storage not in STORAGES:
            raise InputError(f"late-rerank index {name!r}: storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        if depth < 1:
            raise InputError(f"late-rerank index {name!r}: depth must be at least 1, got {depth}")
        self._encoder = TokenEncoder(
            self.model, max_length=self.max_length, batch_size=self.batch_size, dtype=self.dtype
        )
        self._bm25 = BM25Index(k1=self.k1, b=self.b, fields="flat", name=f"{name}-bm25")
        self._store = TokenStore(storage)

    def add(self, chunks: Iterable[Chunk]) -> None:
        """Index ``chunks`` in BM25 and store their token vectors; all or nothing."""
        chunks = list(chunks)
        if not chunks:
            return
        check_new_ids(self.name, self._rows, chunks)
        vectors = self._encoder.encode_documents([text_of(c) for c in chunks])
        self.add_encoded(chunks, vectors)

    def add_encoded(self, chunks: list[Chunk], vectors: list[np.ndarray]) -> None:
        """Add chunks with token vectors computed already (benchmarks reuse one encoding)."""
        chunks = list(chunks)
        check_new_ids(self.name, self._rows, chunks)
        store = self._store.extended(list(vectors))
        self._bm25.add(chunks)
        self._store = store
        start = len(self._chunks)
        self._chunks.extend(chunks)
        self._rows.update((c.id, start + i) for i, c in enumerate(chunks))

    def search(self, queries: str | Sequence[str], k: int = 10) -> list[list[Hit]]:
        """BM25's top ``max(depth, k)`` per query, reranked by MaxSim, best first (ties by BM25 rank).

        One str is one query (a batch of one), not one query per character.
        """
        if k < 1:
            raise InputError(f"late-rerank index {self.name!r}: k must be at least 1, got {k}")
        queries = text_batch(queries, f"late-rerank index {self.name!r}")
        if not queries:
            return []
        vectors = query_vectors(self._encoder, self.name, queries)
        return self.search_encoded(queries, vectors, k)

    def search_encoded(self, queries: list[str], vectors: list[np.ndarray], k: int) -> list[list[Hit]]:
        """Search with the query texts (for BM25) and their token vectors (for MaxSim)."""
        first = self._bm25.search(queries, max(self.depth, k)) if len(self) else [[] for _ in queries]
        results = []
        for query, hits in zip(vectors, first):
            rows = np.array([self._rows[h.chunk.id] for h in hits], dtype=np.int64)
            if len(rows) == 0:
                results.append([])
                continue
            scores = self._store.scores(np.asarray(query, np.float32), rows)
            results.append(
                [Hit(chunk=self._chunks[rows[i]], score=float(scores[i]), source=self.name) for i in top_positions(scores, k)]
            )
        return results

    def score_chunks(self, query: str, chunk_ids: str | Sequence[str]) -> list[float]:
        """The score :meth:`search` gives each of ``chunk_ids`` for ``query`` when it returns it, in their order:
        exact MaxSim of the query's token vectors against the chunk's stored ones, for these chunks only.

        Whether BM25 would put a chunk in its top ``depth`` does not enter (search never returns one it does
        not, a chunk with a blank text included; its MaxSim is still given). An id the index does not hold
        is an error; one str is one id.
        """
        chunk_ids = chunks_to_score(f"late-rerank index {self.name!r}", query, chunk_ids, self)  # before the model
        if not chunk_ids:
            return []
        return self.score_encoded(query_vectors(self._encoder, self.name, [query])[0], chunk_ids)

    def score_encoded(self, query: np.ndarray, chunk_ids: str | Sequence[str]) -> list[float]:
        """Like :meth:`score_chunks`, for one query's token vectors (as :meth:`search_encoded` takes them)."""
        chunk_ids = text_batch(chunk_ids, f"late-rerank index {self.name!r}", item="chunk id")
        rows = self._row_numbers(chunk_ids)
        if not len(rows):
            return []
        query = query_token_vectors(f"late-rerank index {self.name!r}", query, self._store.dimension)
        return self._store.scores(query, rows).tolist()

    def _row_numbers(self, chunk_ids: list[str]) -> np.ndarray:
        """The storage rows of these chunks; an id the index does not hold is an error naming it."""
        try:
            return np.array([self._rows[chunk_id] for chunk_id in chunk_ids], dtype=np.int64)
        except KeyError as exc:
            raise InputError(f"late-rerank index {self.name!r}: chunk id {exc.args[0]!r} is not in the index") from None

    def remove(self, chunk_ids: list[str]) -> None:
        """Remove these chunks from BM25 and the token store (:meth:`delete` is the public call)."""
        rows = sorted(self._rows[c] for c in chunk_ids)
        ids = [self._chunks[r].id for r in rows]
        store = self._store.without(np.asarray(rows, dtype=np.int64))
        self._bm25.delete(ids)
        gone = set(rows)
        self._store = store
        self._chunks = [c for i, c in enumerate(self._chunks) if i not in gone]
        self._rows = {c.id: i for i, c in enumerate(self._chunks)}

    def __len__(self) -> int:
        return len(self._chunks)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._rows

    def compression_ratio(self) -> float:
        """Uncompressed float32 token vectors / stored token bytes (0 when empty)."""
        raw = self._store.n_tokens * self._store.dimension * 4
        return round(raw / self._store.stored_bytes, 3) if self._store.n_tokens else 0.0

    def write_files(self, staging: Path) -> tuple[list[str], dict[str, Any]]:
        self._bm25.save(staging / BM25_DIR)
        write_chunks(staging / CHUNKS, self._chunks, self.name)
        return [CHUNKS, f"{BM25_DIR}/{MANIFEST}", *self._store.save(staging)], dict(
            model=self.model,
            dimension=self._store.dimension,
            storage=self.storage,
            tokens=self._store.n_tokens,
            compression_ratio=self.compression_ratio(),
        )

    def read_files(self, directory: Path, manifest: dict[str, Any]) -> None:
        chunks = list(read_chunks(directory / CHUNKS).values())
        store = TokenStore.read(directory, self.storage, len(chunks))
        bm25 = BM25Index(k1=self.k1, b=self.b, fields="flat", name=f"{self.name}-bm25")
        bm25.load(directory / BM25_DIR)
        if len(bm25) != len(chunks) or any(c.id not in bm25 for c in chunks):
            raise InputError(f"{directory}: {BM25_DIR}/ and {CHUNKS} hold different chunks")
        self._bm25, self._store, self._chunks = bm25, store, chunks
        self._rows = {c.id: i for i, c in enumerate(chunks)}

    @property
    def bm25(self) -> BM25Index:
        """The first-stage BM25 index (read-only for callers)."""
        return self._bm25

    def warm_up(self) -> None:
        self._encoder.backend
        self._bm25.warm_up()
