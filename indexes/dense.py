"""Dense retrieval: sentence-transformers embeddings in a faiss index, saved as plain versioned files.

    >>> from indexes.dense import DenseIndex
    >>> from rag.types import Chunk
    >>> index = DenseIndex("minilm")                              # cheap; the model loads on first use
    >>> index.add([Chunk("c1", "d1", "Aspirin thins the blood.", 0, 24)])   # doctest: +SKIP
    >>> index.search(["what thins blood?"], k=1)[0][0].chunk.id                # doctest: +SKIP
    'c1'
    >>> index.save("my-index"); DenseIndex.open("my-index")                    # doctest: +SKIP

On disk (format version 1) a saved index is a directory holding ``manifest.json`` (see
:mod:`rag.manifest`; dense adds ``index_kind``, ``faiss_factory``, ``model``, ``dimension``,
``metric`` and ``next_id``), ``vectors.faiss`` (``faiss.write_index``) and ``chunks.jsonl`` (one
``Chunk.to_dict()`` per line plus its int64 ``faiss_id``, in faiss-id order).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rag.encoders import SentenceEncoder, check_dtype
from rag.errors import InputError
from rag.io import read_jsonl
from rag.lazy import require
from rag.manifest import SavedIndex
from rag.protocols import chunks_to_score, text_batch
from rag.registry import declared_params
from rag.types import Chunk, Hit

FORMAT_VERSION = 1
KIND = "dense"
VECTORS = "vectors.faiss"
CHUNKS = "chunks.jsonl"
METRIC = "ip"
_DIRECT_MAP_LOCK = threading.Lock()


@dataclass(frozen=True)
class FaissKind:
    """How one ``kind`` of dense index is built in faiss.

    ``factory`` is a ``faiss.index_factory`` string, a template for kinds whose shape depends on the data
    (``{nlist}`` and ``{pq_m}`` are filled when the index is trained). The ``IDMap2`` prefix gives stable
    int64 ids to kinds that have none of their own; IVF kinds store ids in their inverted lists.
    ``needs_training``: the first ``add`` trains the index on the vectors it adds. ``supports_remove``:
    faiss can remove vectors; for kinds that cannot (HNSW), a delete leaves the vector in the graph as a
    tombstone that searches skip.
    """

    factory: str
    needs_training: bool = False
    supports_remove: bool = True
    description: str = ""


KINDS: dict[str, FaissKind] = {
    # Exact inner product over L2-normalised embeddings (= cosine), the reference every other kind
    # is measured against.
    "flat": FaissKind(factory="IDMap2,Flat", description="exact inner product"),
    # Graph search: no training, fast and close to exact; faiss cannot remove from an HNSW graph.
    "hnsw": FaissKind(
        factory="IDMap2,HNSW32", supports_remove=False,
        description="HNSW graph (M=32), ef_search candidates per query",
    ),
    # Inverted lists of product-quantised residuals: trained on the first add, several times smaller
    # than flat, searched over nprobe lists.
    "ivfpq": FaissKind(
        factory="IVF{nlist},PQ{pq_m}x8", needs_training=True,
        description="IVF with nlist lists (4*sqrt(n), at most n/39, by default) and pq_m 8-bit sub-quantizers "
                    "(192 by default: 2 dimensions each for MiniLM)",
    ),
}

# Product quantisation with 8-bit codes trains 256 centroids per sub-space: fewer training vectors fail.
MIN_PQ_TRAINING = 256
# faiss's k-means warns below 39 training points per centroid; the default nlist respects it.
POINTS_PER_CENTROID = 39
# IVF-PQ defaults, chosen on SciFact's train queries by `python -m bench.dense --split train --grid`
# (eval/results/dense.md): the smallest vectors, then the fewest lists probed, losing at most 0.01 nDCG@10
# against exact search. PQ96 / nprobe 32, chosen earlier on the test queries, loses 0.032 on train.
DEFAULT_NPROBE = 64
DEFAULT_PQ_M = 192


def default_nlist(n_train: int) -> int:
    """IVF lists for ``n_train`` training vectors: about 4*sqrt(n), at most n/39 (k-means' floor)."""
    return max(1, min(int(4 * n_train ** 0.5), n_train // POINTS_PER_CENTROID))


def faiss_kind(kind: str) -> FaissKind:
    """The faiss recipe for ``kind``; an unknown kind lists the supported ones."""
    try:
        return KINDS[kind]
    except KeyError:
        supported = ", ".join(sorted(KINDS))
        raise InputError(f"dense index kind {kind!r} is not supported; supported kinds: {supported}") from None


@declared_params
class DenseIndex(SavedIndex):
    """Chunks embedded with a sentence-transformers model, searched by inner product in faiss.

    ``kind`` is one of :data:`KINDS`: ``flat`` (exact), ``hnsw`` or ``ivfpq``. ``include_title`` embeds
    ``title + " " + text`` when a chunk has a title (as BEIR's exact search does); ``name`` is the
    ``source`` of the hits it returns. Search-time knobs: ``ef_search`` (HNSW candidate list) and
    ``nprobe`` (IVF lists visited); training-time knobs of ``ivfpq``: ``nlist`` (0 picks
    :func:`default_nlist` from the first add) and ``pq_m`` (sub-quantizers; must divide the dimension).
    Knobs of other kinds are recorded but unused. ``mmap`` loads saved vectors memory-mapped (read-only
    pages shared with the OS cache) instead of reading them into memory, for indexes larger than RAM.
    ``dtype`` is the encoder's (``float32`` or ``bfloat16``; see :class:`rag.encoders.SentenceEncoder`).
    Constructing is cheap: the model loads on the first ``add`` or ``search``.
    """

    manifest_kind = KIND
    manifest_version = FORMAT_VERSION
    saved_params = ("model", "kind", "include_title")

    model: str = "minilm"
    kind: str = "flat"
    batch_size: int = 64
    include_title: bool = True
    name: str = "dense"
    ef_search: int = 128
    nprobe: int = DEFAULT_NPROBE
    nlist: int = 0
    pq_m: int = DEFAULT_PQ_M
    mmap: bool = False
    dtype: str = "float32"
    _factory: str = field(default="", init=False)  # the resolved faiss factory string, once the faiss index exists
    _faiss: Any = field(default=None, init=False)  # built on the first add (it needs the dimension) or by load
    _chunks: dict[int, Chunk] = field(default_factory=dict, init=False)  # faiss id -> chunk
    _ids: dict[str, int] = field(default_factory=dict, init=False)  # chunk id -> faiss id
    _next_id: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        faiss_kind(self.kind)
        for label, value in (("batch_size", self.batch_size), ("ef_search", self.ef_search), ("nprobe", self.nprobe),
                             ("pq_m", self.pq_m)):
            if value < 1:
                raise InputError(f"dense index {self.name!r}: {label} must be at least 1, got {value}")
        if self.nlist < 0:
            raise InputError(
                f"dense index {self.name!r}: nlist must be 0 (choose from the data) or positive, got {self.nlist}"
            )
        check_dtype(self.model, self.dtype)  # at construction, like the other encoder users, not at the first add

    # -- the Index protocol ------------------------------------------------------------------------

    def add(self, chunks: list[Chunk]) -> None:
        """Embed and add ``chunks``. A chunk id already in the index (or twice in ``chunks``) is an error.

        Everything is encoded (and, for a kind that needs it, trained) before the index changes, so a
        failure leaves it as it was.
        """
        chunks = list(chunks)
        if not chunks:
            return
        self._check_new_ids(chunks)
        self.add_vectors(chunks, self.encoder.encode_documents([self.text_of(c) for c in chunks]))

    def add_vectors(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        """Add ``chunks`` with embeddings computed beforehand (one float32 row per chunk, made by this
        index's ``model`` from :meth:`text_of`): for encoders run elsewhere, e.g. on worker processes."""
        chunks = list(chunks)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(chunks):
            raise InputError(
                f"dense index {self.name!r}: expected one vector per chunk ({len(chunks)}), got shape {vectors.shape}"
            )
        if not chunks:
            return
        self._check_new_ids(chunks)
        index = self._faiss if self._faiss is not None else self._new_faiss(vectors)
        if index.d != vectors.shape[1]:
            raise InputError(
                f"dense index {self.name!r}: model {self.model!r} gave {vectors.shape[1]}-d vectors, "
                f"but the index holds {index.d}-d vectors"
            )
        ids = np.arange(self._next_id, self._next_id + len(chunks), dtype=np.int64)
        index.add_with_ids(vectors, ids)
        self._faiss = index
        for faiss_id, chunk in zip(ids.tolist(), chunks):
            self._chunks[faiss_id] = chunk
            self._ids[chunk.id] = faiss_id
        self._next_id += len(chunks)

    def search(self, queries: str | Sequence[str], k: int = 10) -> list[list[Hit]]:
        """The ``k`` best chunks for each query, best first; scores are inner products (cosines).

        One str is one query (a batch of one), not one query per character.
        """
        if k < 1:
            raise InputError(f"dense index {self.name!r}: k must be at least 1, got {k}")
        queries = text_batch(queries, f"dense index {self.name!r}")
        if not queries or len(self) == 0:
            return [[] for _ in queries]
        return self.search_vectors(self.encoder.encode_queries(queries), k)

    def search_vectors(self, vectors: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Like :meth:`search`, for query embeddings computed beforehand (float32, one row per query)."""
        if k < 1:
            raise InputError(f"dense index {self.name!r}: k must be at least 1, got {k}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise InputError(f"dense index {self.name!r}: query vectors must be 2-d, got shape {vectors.shape}")
        if len(self) == 0:
            return [[] for _ in range(len(vectors))]
        if vectors.shape[1] != self._faiss.d:
            raise InputError(
                f"dense index {self.name!r}: query vectors are {vectors.shape[1]}-d, the index holds {self._faiss.d}-d"
            )
        # Tombstoned vectors (deleted from a kind that cannot remove) may fill some of the top slots.
        tombstones = self._faiss.ntotal - len(self._chunks)
        scores, ids = self._faiss.search(vectors, min(k + tombstones, self._faiss.ntotal), params=self._search_params())
        # Hits are built with positional arguments and local names: at k=100 building them is most of
        # what this layer adds to faiss (see bench/dense.py).
        chunks, name, make = self._chunks, self.name, Hit
        if tombstones == 0:
            return [
                [make(chunks[i], s, name) for s, i in zip(row_scores, row_ids) if i != -1]
                for row_scores, row_ids in zip(scores.tolist(), ids.tolist())
            ]
        return [
            [make(chunks[i], s, name) for s, i in zip(row_scores, row_ids) if i in chunks][:k]
            for row_scores, row_ids in zip(scores.tolist(), ids.tolist())
        ]

    def score_chunks(self, query: str, chunk_ids: str | Sequence[str]) -> list[float]:
        """The score :meth:`search` gives each of ``chunk_ids`` for ``query`` when it returns it, in their order.

        Only these chunks are scored: the query is encoded as :meth:`search` encodes it and multiplied with
        their stored vectors (:meth:`score_vectors`), whatever the ``kind``. For ``flat`` and ``hnsw`` the
        stored vector is the chunk's embedding; for ``ivfpq`` it is the one faiss searches with (the list's
        centroid plus the decoded residual), so the score is ``ivfpq``'s approximate one, not the exact
        cosine. Whether approximate search would find the chunk at all (``nprobe``, ``ef_search``) does not
        enter: the score is what search reports when it does. An id the index does not hold is an error;
        one str is one id.

            >>> index.score_chunks("what thins blood?", ["c1"])                  # doctest: +SKIP
            [0.62...]
        """
        chunk_ids = chunks_to_score(f"dense index {self.name!r}", query, chunk_ids, self)  # before the model runs
        if not chunk_ids:
            return []
        return self.score_vectors(self.encoder.encode_queries([query])[0], chunk_ids)

    def score_vectors(self, vector: np.ndarray, chunk_ids: str | Sequence[str]) -> list[float]:
        """Like :meth:`score_chunks`, for a query embedding computed beforehand (one float32 vector, or a
        ``(1, d)`` row, as :meth:`search_vectors` takes them)."""
        chunk_ids = text_batch(chunk_ids, f"dense index {self.name!r}", item="chunk id")
        faiss_ids = self._faiss_ids(chunk_ids)
        vector = np.asarray(vector, dtype=np.float32)
        if vector.ndim == 2 and len(vector) == 1:
            vector = vector[0]
        if vector.ndim != 1:
            raise InputError(f"dense index {self.name!r}: expected one query vector, got shape {vector.shape}")
        if not chunk_ids:
            return []
        if vector.shape[0] != self._faiss.d:
            raise InputError(
                f"dense index {self.name!r}: the query vector is {vector.shape[0]}-d, the index holds {self._faiss.d}-d"
            )
        stored = self._stored_vectors(np.asarray(faiss_ids, dtype=np.int64))
        return (stored @ vector).tolist()

    def remove(self, chunk_ids: list[str]) -> None:
        """Remove these chunks (:meth:`delete` is the public call). Kinds whose faiss index cannot remove
        vectors (HNSW) keep them as tombstones that searches skip; the space comes back when the index is rebuilt.
        """
        found = sorted(self._ids[c] for c in chunk_ids)
        if faiss_kind(self.kind).supports_remove:
            removed = int(self._faiss.remove_ids(np.asarray(found, dtype=np.int64)))
            if removed != len(found):
                raise RuntimeError(f"dense index {self.name!r}: faiss removed {removed} of {len(found)} vectors")
        for faiss_id in found:
            del self._ids[self._chunks.pop(faiss_id).id]

    def __len__(self) -> int:
        return len(self._chunks)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._ids

    # -- persistence -------------------------------------------------------------------------------

    def write_files(self, staging: Path) -> tuple[list[str], dict[str, Any]]:
        faiss = require("faiss", "dense", "faiss-cpu")
        index = self._faiss if self._faiss is not None else self._empty_faiss()
        faiss.write_index(index, str(staging / VECTORS))
        self._write_chunks(staging / CHUNKS)
        return [VECTORS, CHUNKS], dict(
            index_kind=self.kind,
            faiss_factory=self._factory or self._resolved_factory(0),
            model=self.model,
            dimension=int(index.d),
            metric=METRIC,
            next_id=self._next_id,
        )

    def read_files(self, directory: Path, manifest: dict[str, Any]) -> None:
        faiss = require("faiss", "dense", "faiss-cpu")
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if self.mmap else 0
        index = faiss.read_index(str(directory / VECTORS), flags)
        chunks = _read_chunks(directory / CHUNKS)
        _check_consistent(directory, manifest, index, chunks, faiss, faiss_kind(self.kind).supports_remove)
        # Swap state only once everything was read and checked. An empty index of a kind that trains was
        # saved as a placeholder: the next add trains a real one.
        empty_untrained = faiss_kind(self.kind).needs_training and index.ntotal == 0
        self._faiss = None if empty_untrained else index
        self._factory = "" if empty_untrained else str(manifest.get("faiss_factory", ""))
        self._chunks = chunks
        self._ids = {chunk.id: faiss_id for faiss_id, chunk in chunks.items()}
        self._next_id = int(manifest.get("next_id", max(chunks, default=-1) + 1))


    # -- helpers -----------------------------------------------------------------------------------

    @property
    def encoder(self) -> SentenceEncoder:
        """The shared encoder for ``model`` (models are cached per process, so this is cheap)."""
        return SentenceEncoder(self.model, batch_size=self.batch_size, dtype=self.dtype)

    def warm_up(self) -> None:
        """Load the model now, so that the first ``add`` or ``search`` does not pay for it."""
        self.encoder.backend

    def text_of(self, chunk: Chunk) -> str:
        """The text that is embedded for ``chunk``."""
        if self.include_title and chunk.title:
            return f"{chunk.title} {chunk.text}"
        return chunk.text

    def _new_faiss(self, vectors: np.ndarray) -> Any:
        """A faiss index for these first vectors, trained on them when the kind needs it."""
        faiss = require("faiss", "dense", "faiss-cpu")
        dimension = int(vectors.shape[1])
        spec = faiss_kind(self.kind)
        if spec.needs_training and len(vectors) < MIN_PQ_TRAINING:
            raise InputError(
                f"dense index {self.name!r}: kind {self.kind!r} trains on its first add, which needs at least "
                f"{MIN_PQ_TRAINING} chunks; got {len(vectors)} (add more at once, or use kind 'flat' or 'hnsw')"
            )
        if spec.needs_training and dimension % self.pq_m:
            raise InputError(
                f"dense index {self.name!r}: pq_m={self.pq_m} must divide the embedding dimension {dimension}"
            )
        factory = self._resolved_factory(len(vectors))
        index = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
        if spec.needs_training:
            ivf = faiss.try_extract_index_ivf(index)
            ivf = faiss.downcast_index(ivf) if ivf is not None else None
            if ivf is not None and hasattr(ivf, "do_polysemous_training"):
                # The factory turns on polysemous training (simulated annealing of the PQ codes for
                # Hamming filtering, which we never use): minutes of CPU on this machine for nothing.
                ivf.do_polysemous_training = False
            index.train(vectors)
        self._factory = factory
        return index

    def _empty_faiss(self) -> Any:
        """An empty index to save before anything was added (untrained kinds only need the dimension)."""
        faiss = require("faiss", "dense", "faiss-cpu")
        factory = "IDMap2,Flat" if faiss_kind(self.kind).needs_training else self._resolved_factory(0)
        return faiss.index_factory(int(self.encoder.dimension), factory, faiss.METRIC_INNER_PRODUCT)

    def _resolved_factory(self, n_train: int) -> str:
        return faiss_kind(self.kind).factory.format(nlist=self.nlist or default_nlist(n_train), pq_m=self.pq_m)

    def _search_params(self) -> Any:
        """Per-call faiss search parameters for this kind (so the knobs need no global state)."""
        faiss = require("faiss", "dense", "faiss-cpu")
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=max(self.ef_search, 1))
        if faiss_kind(self.kind).needs_training and faiss.try_extract_index_ivf(self._faiss) is not None:
            return faiss.SearchParametersIVF(nprobe=self.nprobe)
        return None

    def _faiss_ids(self, chunk_ids: list[str]) -> list[int]:
        """The faiss ids of these chunks; an id the index does not hold is an error naming it."""
        try:
            return [self._ids[chunk_id] for chunk_id in chunk_ids]
        except KeyError as exc:
            raise InputError(f"dense index {self.name!r}: chunk id {exc.args[0]!r} is not in the index") from None

    def _stored_vectors(self, faiss_ids: np.ndarray) -> np.ndarray:
        """The vectors faiss scores these ids with, ``(len(faiss_ids), d)`` float32.

        IDMap2 kinds (flat, HNSW) reconstruct by id through their own id map. An IVF index finds an id's
        list and offset only through a direct map, which faiss does not keep by default: the first call
        makes a hash-table one (one pass over the lists; ids are arbitrary, so not the array kind), which
        faiss then keeps up to date through adds and removes and saves with the index.
        """
        faiss = require("faiss", "dense", "faiss-cpu")
        ivf = faiss.try_extract_index_ivf(self._faiss)
        if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
            with _DIRECT_MAP_LOCK:  # two first calls at once would both build it
                if ivf.direct_map.type == faiss.DirectMap.NoMap:
                    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        return np.asarray(self._faiss.reconstruct_batch(faiss_ids), dtype=np.float32).reshape(len(faiss_ids), -1)

    def _check_new_ids(self, chunks: list[Chunk]) -> None:
        batch: set[str] = set()
        for chunk in chunks:
            if chunk.id in self._ids:
                raise InputError(f"dense index {self.name!r}: chunk id {chunk.id!r} is already in the index")
            if chunk.id in batch:
                raise InputError(f"dense index {self.name!r}: chunk id {chunk.id!r} appears twice in the added chunks")
            batch.add(chunk.id)

    def _write_chunks(self, path: Path) -> None:
        with path.open("w", encoding="utf-8") as handle:
            for faiss_id in sorted(self._chunks):
                chunk = self._chunks[faiss_id]
                try:
                    line = json.dumps({"faiss_id": faiss_id, **chunk.to_dict()}, ensure_ascii=False)
                except TypeError as exc:
                    raise InputError(
                        f"dense index {self.name!r}: chunk {chunk.id!r} has metadata that is not JSON ({exc})"
                    ) from None
                handle.write(line + "\n")


def _read_chunks(path: Path) -> dict[int, Chunk]:
    chunks: dict[int, Chunk] = {}
    for number, record in read_jsonl(path):
        try:
            faiss_id = int(record.pop("faiss_id"))
            chunk = Chunk.from_dict(record)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}, line {number}: not a saved chunk ({exc})") from None
        if faiss_id in chunks:
            raise InputError(f"{path}, line {number}: faiss id {faiss_id} appears twice")
        chunks[faiss_id] = chunk
    return chunks


def _check_consistent(
    directory: Path, manifest: dict[str, Any], index: Any, chunks: dict[int, Chunk], faiss: Any,
    supports_remove: bool = True,
) -> None:
    # Kinds that cannot remove keep deleted vectors as tombstones: faiss may hold more than the chunks.
    vectors_ok = index.ntotal == len(chunks) if supports_remove else index.ntotal >= len(chunks)
    if not vectors_ok or manifest.get("count", len(chunks)) != len(chunks):
        raise InputError(
            f"{directory}: {VECTORS} holds {index.ntotal} vectors, {CHUNKS} {len(chunks)} chunks and the manifest "
            f"counts {manifest.get('count')}; they must agree"
        )
    if "dimension" in manifest and index.d != manifest["dimension"]:
        raise InputError(f"{directory}: {VECTORS} holds {index.d}-d vectors, the manifest says {manifest['dimension']}")
    if hasattr(index, "id_map"):  # IDMap-wrapped kinds keep their ids apart; check they match the chunks
        stored = set(faiss.vector_to_array(index.id_map).tolist())
        if (stored != set(chunks)) if supports_remove else not set(chunks) <= stored:
            raise InputError(f"{directory}: the ids in {VECTORS} and in {CHUNKS} differ")
    seen: set[str] = set()
    for chunk in chunks.values():
        if chunk.id in seen:
            raise InputError(f"{directory}/{CHUNKS}: chunk id {chunk.id!r} appears twice")
        seen.add(chunk.id)
