"""Dense retrieval: sentence-transformers embeddings in a faiss index, saved as plain versioned files.

    >>> from indexes.dense import DenseIndex
    >>> from rag.types import Chunk
    >>> index = DenseIndex("minilm")                              # cheap; the model loads on first use
    >>> index.add([Chunk("c1", "d1", "Aspirin thins the blood.", 0, 24)])   # doctest: +SKIP
    >>> index.search(["what thins blood?"], k=1)[0][0].chunk.id                # doctest: +SKIP
    'c1'
    >>> index.save("my-index"); DenseIndex.open("my-index")                    # doctest: +SKIP

On disk (format version 1) a saved index is a directory holding ``manifest.json`` (see
:mod:`indexes.manifest`; dense adds ``index_kind``, ``faiss_factory``, ``model``, ``dimension``,
``metric`` and ``next_id``), ``vectors.faiss`` (``faiss.write_index``) and ``chunks.jsonl`` (one
``Chunk.to_dict()`` per line plus its int64 ``faiss_id``, in faiss-id order).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from indexes.manifest import SavedIndex, read_manifest, verify_files, write_manifest
from rag.encoders import SentenceEncoder
from rag.errors import InputError
from rag.io import atomic_directory, read_jsonl
from rag.lazy import require
from rag.types import Chunk, Hit

FORMAT_VERSION = 1
KIND = "dense"
VECTORS = "vectors.faiss"
CHUNKS = "chunks.jsonl"
METRIC = "ip"


@dataclass(frozen=True)
class FaissKind:
    """How one ``kind`` of dense index is built in faiss.

    ``factory`` is a ``faiss.index_factory`` string; the ``IDMap2`` prefix gives stable int64 ids that
    survive deletes. Kinds that must be trained (IVF-PQ) or cannot remove vectors (HNSW) will say so
    here when they are added, and ``DenseIndex`` will consult these flags rather than the kind's name.
    """

    factory: str
    needs_training: bool = False
    supports_remove: bool = True


KINDS: dict[str, FaissKind] = {
    # Exact inner product over L2-normalised embeddings (= cosine), the reference every other kind
    # is measured against.
    "flat": FaissKind(factory="IDMap2,Flat"),
}


def faiss_kind(kind: str) -> FaissKind:
    """The faiss recipe for ``kind``; an unknown kind lists the supported ones."""
    try:
        return KINDS[kind]
    except KeyError:
        supported = ", ".join(sorted(KINDS))
        raise InputError(f"dense index kind {kind!r} is not supported; supported kinds: {supported}") from None


class DenseIndex(SavedIndex):
    """Chunks embedded with a sentence-transformers model, searched by inner product in faiss.

    ``include_title`` embeds ``title + " " + text`` when a chunk has a title (as BEIR's exact search
    does); ``name`` is the ``source`` of the hits it returns. Constructing is cheap: the model loads on
    the first ``add`` or ``search``.
    """

    manifest_kind = KIND
    manifest_version = FORMAT_VERSION

    def __init__(
        self,
        model: str = "minilm",
        kind: str = "flat",
        batch_size: int = 64,
        include_title: bool = True,
        name: str = "dense",
    ) -> None:
        faiss_kind(kind)
        if batch_size < 1:
            raise InputError(f"dense index {name!r}: batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.kind = kind
        self.batch_size = batch_size
        self.include_title = include_title
        self.name = name
        self._faiss: Any = None  # built on the first add (it needs the dimension) or by load
        self._chunks: dict[int, Chunk] = {}  # faiss id -> chunk
        self._ids: dict[str, int] = {}  # chunk id -> faiss id
        self._next_id = 0

    # -- the Index protocol ------------------------------------------------------------------------

    def add(self, chunks: list[Chunk]) -> None:
        """Embed and add ``chunks``. A chunk id already in the index (or twice in ``chunks``) is an error.

        Everything is encoded before the index changes, so a failure leaves it as it was.
        """
        chunks = list(chunks)
        if not chunks:
            return
        self._check_new_ids(chunks)
        vectors = self.encoder.encode_documents([self.text_of(c) for c in chunks])
        index = self._faiss if self._faiss is not None else self._new_faiss(vectors.shape[1])
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

    def search(self, queries: list[str], k: int = 10) -> list[list[Hit]]:
        """The ``k`` best chunks for each query, best first; scores are inner products (cosines)."""
        if k < 1:
            raise InputError(f"dense index {self.name!r}: k must be at least 1, got {k}")
        queries = list(queries)
        if not queries or len(self) == 0:
            return [[] for _ in queries]
        vectors = self.encoder.encode_queries(queries)
        scores, ids = self._faiss.search(vectors, min(k, len(self)))
        return [
            [
                Hit(chunk=self._chunks[faiss_id], score=float(score), source=self.name)
                for score, faiss_id in zip(row_scores.tolist(), row_ids.tolist())
                if faiss_id != -1
            ]
            for row_scores, row_ids in zip(scores, ids)
        ]

    def delete(self, chunk_ids: Iterable[str]) -> int:
        """Remove the chunks with these ids; returns how many were removed (unknown ids are skipped)."""
        found = sorted({self._ids[c] for c in chunk_ids if c in self._ids})
        if not found:
            return 0
        if not faiss_kind(self.kind).supports_remove:
            raise InputError(f"dense index {self.name!r}: kind {self.kind!r} cannot remove vectors; rebuild it")
        removed = int(self._faiss.remove_ids(np.asarray(found, dtype=np.int64)))
        if removed != len(found):
            raise RuntimeError(f"dense index {self.name!r}: faiss removed {removed} of {len(found)} vectors")
        for faiss_id in found:
            del self._ids[self._chunks.pop(faiss_id).id]
        return removed

    def __len__(self) -> int:
        return len(self._chunks)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._ids

    # -- persistence -------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write the index to ``directory`` atomically: a failed save leaves what was there intact."""
        faiss = require("faiss", "dense", "faiss-cpu")
        index = self._faiss if self._faiss is not None else self._new_faiss(self.encoder.dimension)
        with atomic_directory(directory) as staging:
            faiss.write_index(index, str(staging / VECTORS))
            self._write_chunks(staging / CHUNKS)
            write_manifest(
                staging,
                kind=KIND,
                format_version=FORMAT_VERSION,
                component=self.to_config(),
                count=len(self),
                files=[VECTORS, CHUNKS],
                index_kind=self.kind,
                faiss_factory=faiss_kind(self.kind).factory,
                model=self.model,
                dimension=int(index.d),
                metric=METRIC,
                next_id=self._next_id,
            )

    def load(self, directory: str | Path) -> None:
        """Replace this index's contents with a saved one, after checking version, checksums and config.

        The saved index must have been built with this index's ``model``, ``kind`` and ``include_title``;
        use :meth:`open` to adopt whatever configuration was saved.
        """
        directory = Path(directory)
        manifest = read_manifest(directory, kind=KIND, format_version=FORMAT_VERSION)
        self._check_compatible(directory, manifest)
        verify_files(directory, manifest)
        faiss = require("faiss", "dense", "faiss-cpu")
        index = faiss.read_index(str(directory / VECTORS))
        chunks = _read_chunks(directory / CHUNKS)
        _check_consistent(directory, manifest, index, chunks, faiss)
        # Swap state only once everything was read and checked.
        self._faiss = index
        self._chunks = chunks
        self._ids = {chunk.id: faiss_id for faiss_id, chunk in chunks.items()}
        self._next_id = int(manifest.get("next_id", max(chunks, default=-1) + 1))


    # -- helpers -----------------------------------------------------------------------------------

    @property
    def encoder(self) -> SentenceEncoder:
        """The shared encoder for ``model`` (models are cached per process, so this is cheap)."""
        return SentenceEncoder(self.model, batch_size=self.batch_size)

    def warm_up(self) -> None:
        """Load the model now, so that the first ``add`` or ``search`` does not pay for it."""
        self.encoder.backend

    def text_of(self, chunk: Chunk) -> str:
        """The text that is embedded for ``chunk``."""
        if self.include_title and chunk.title:
            return f"{chunk.title} {chunk.text}"
        return chunk.text

    def _new_faiss(self, dimension: int) -> Any:
        faiss = require("faiss", "dense", "faiss-cpu")
        return faiss.index_factory(int(dimension), faiss_kind(self.kind).factory, faiss.METRIC_INNER_PRODUCT)

    def _check_new_ids(self, chunks: list[Chunk]) -> None:
        batch: set[str] = set()
        for chunk in chunks:
            if chunk.id in self._ids:
                raise InputError(f"dense index {self.name!r}: chunk id {chunk.id!r} is already in the index")
            if chunk.id in batch:
                raise InputError(f"dense index {self.name!r}: chunk id {chunk.id!r} appears twice in the added chunks")
            batch.add(chunk.id)

    def _check_compatible(self, directory: Path, manifest: dict[str, Any]) -> None:
        saved = manifest.get("component", {}).get("params", {})
        for key in ("model", "kind", "include_title"):
            if key in saved and saved[key] != getattr(self, key):
                raise InputError(
                    f"{directory}: saved with {key}={saved[key]!r}, but this index has {key}={getattr(self, key)!r}; "
                    f"configure it the same way, or use DenseIndex.open({str(directory)!r}) to adopt the saved config"
                )

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
    directory: Path, manifest: dict[str, Any], index: Any, chunks: dict[int, Chunk], faiss: Any
) -> None:
    if index.ntotal != len(chunks) or manifest.get("count", len(chunks)) != len(chunks):
        raise InputError(
            f"{directory}: {VECTORS} holds {index.ntotal} vectors, {CHUNKS} {len(chunks)} chunks and the manifest "
            f"counts {manifest.get('count')}; they must agree"
        )
    if "dimension" in manifest and index.d != manifest["dimension"]:
        raise InputError(f"{directory}: {VECTORS} holds {index.d}-d vectors, the manifest says {manifest['dimension']}")
    if hasattr(index, "id_map"):  # IDMap-wrapped kinds keep their ids apart; check they match the chunks
        if set(faiss.vector_to_array(index.id_map).tolist()) != set(chunks):
            raise InputError(f"{directory}: the ids in {VECTORS} and in {CHUNKS} differ")
    seen: set[str] = set()
    for chunk in chunks.values():
        if chunk.id in seen:
            raise InputError(f"{directory}/{CHUNKS}: chunk id {chunk.id!r} appears twice")
        seen.add(chunk.id)
