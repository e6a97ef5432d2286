"""Distributed ingestion with Ray Data: read, chunk, encode and index into N shards, each a normal index.

    >>> from indexes.ray_ingest import ingest
    >>> trace = ingest("../shared/data/scifact/corpus.jsonl", "scifact-sharded", index="dense",
    ...                chunker="document", shards=4)                        # doctest: +SKIP
    >>> ShardedIndex.open("scifact-sharded").search(["..."], k=10)           # doctest: +SKIP

or from the command line, as a pipeline directory that ``specrag ask`` loads like any other::

    specrag index --ray --shards 4 [--address ray://head:10001] --corpus corpus.jsonl --out my-index

The flow, all on the cluster:

1. **read**: a JSONL corpus (BEIR layout) becomes a Ray Dataset of lines (``ray.data.read_text``), or a
   list of :class:`~rag.types.Document` becomes one with ``ray.data.from_items``;
2. **chunk** (``map_batches``): each batch of lines is parsed and checked as :func:`rag.io.read_documents`
   checks them (errors name the file and the document id), chunked by the pipeline's chunker and tagged
   with its shard, ``crc32(doc_id) % shards`` (:func:`indexes.sharded.shard_of`);
3. **encode and index** (``groupby("shard").map_groups``, which runs ``map_batches`` over one group per
   shard): a worker builds the shard's index (any registered index kind: the encoding happens inside its
   ``add``, in the index's own batches), checks that no document id repeats in the shard and saves it to
   ``out/shard-NNNN``;
4. **manifest**: the driver writes the shard manifest (:func:`indexes.sharded.write_shard_manifest`).

The output directory is built beside ``out`` and renamed into place at the end, so a failed run leaves
what was there. Each shard is a saved index of its own kind (``DenseIndex.open(out / "shard-0000")``
works); :class:`indexes.sharded.ShardedIndex` serves them all. Every shard worker uses ``threads``
torch/faiss threads; ``workers`` shards are built at once (default: the cluster's CPUs / ``cpus_per_worker``).
On a multi-node cluster, ``out`` must be on a file system every node sees at the same path.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from indexes.ray_workers import EXTRA, ensure_ray, set_worker_threads, worker_runtime_env
from indexes.sharded import ShardedIndex, shard_directory, shard_of, write_shard_manifest
from rag.errors import InputError, SpecragError
from rag.io import atomic_directory
from rag.lazy import require
from rag.registry import PortableSpec, build
from rag.types import Chunk, Document, StageRecord, Trace

Spec = Any  # a registered name, a {"type", "params"} mapping, or a built component


def ingest(
    corpus: "str | Path | Sequence[Document]",
    out: str | Path,
    *,
    index: Spec = "dense",
    chunker: Spec = "recursive",
    shards: int = 4,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: float = 1.0,
    threads: int = 1,
    read_batch: int = 256,
    sharded_params: Mapping[str, Any] | None = None,
) -> Trace:
    """Chunk and index ``corpus`` into ``shards`` index shards under ``out`` with Ray Data; see the module doc.

    ``corpus`` is a JSONL file (or a list of documents); ``index`` and ``chunker`` are registered names or
    ``{type, params}`` specs. ``sharded_params`` are extra :class:`~indexes.sharded.ShardedIndex`
    parameters recorded in the manifest (``timeout_s``, ``allow_partial``, ...). Returns a trace with one
    ``ray-ingest`` stage (documents in, chunks out; ``extra`` holds per-shard counts and seconds).
    """
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise InputError(f"ray ingest: shards must be a positive integer, got {shards!r}")
    if workers is not None and workers < 1:
        raise InputError(f"ray ingest: workers must be at least 1, got {workers}")
    if threads < 1 or cpus_per_worker <= 0 or read_batch < 1:
        raise InputError(
            f"ray ingest: need threads >= 1, cpus_per_worker > 0 and read_batch >= 1, got {threads}, {cpus_per_worker}, {read_batch}"
        )
    template = build("index", index)
    chunker_component = build("chunker", chunker)
    sharded = ShardedIndex(shard=template, shards=shards, address=address, **dict(sharded_params or {}))
    shard = PortableSpec.of("index", template)
    source = _check_corpus(corpus)

    ray = ensure_ray(address)
    data = require("ray.data", EXTRA, "ray[data]")
    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_worker))
    started = time.perf_counter()
    with atomic_directory(out) as staging:
        staging = staging.resolve()
        # A few blocks per worker: enough to keep every worker chunking, few enough that the shuffle stays cheap.
        dataset = _read(data, source).repartition(2 * workers)
        chunked = dataset.map_batches(
            _as_function(_ChunkBatch(PortableSpec.of("chunker", chunker_component), shards, _where(source), threads)),
            batch_size=read_batch,
            batch_format="numpy",
            num_cpus=cpus_per_worker,
            runtime_env=worker_runtime_env(),
        )
        built = chunked.groupby("shard", num_partitions=shards).map_groups(
            _as_function(_ShardBuilder(shard, str(staging), threads)),
            batch_format="numpy",
            num_cpus=cpus_per_worker,
            concurrency=min(workers, shards),
            runtime_env=worker_runtime_env(),
        )
        try:
            rows = sorted(built.take_all(), key=lambda row: int(row["shard"]))
        except Exception as exc:  # Ray wraps a worker's error in its own; surface ours (file, document id) as is
            cause = _specrag_cause(exc)
            if cause is None:
                raise
            raise cause from None
        stats = {int(row["shard"]): row for row in rows}
        missing = [n for n in range(shards) if n not in stats]
        if missing:  # shards no document was routed to: still a valid (empty) index each
            empty = ray.remote(_save_empty).options(num_cpus=cpus_per_worker, runtime_env=worker_runtime_env())
            ray.get([empty.remote(shard, str(staging / shard_directory(n)), threads) for n in missing])
            for n in missing:
                stats[n] = {"shard": n, "documents": 0, "chunks": 0, "seconds": 0.0}
        seconds = time.perf_counter() - started
        counts = [int(stats[n]["chunks"]) for n in range(shards)]
        documents = sum(int(stats[n]["documents"]) for n in range(shards))
        per_shard = [
            {"shard": n, "documents": int(stats[n]["documents"]), "chunks": int(stats[n]["chunks"]),
             "seconds": round(float(stats[n]["seconds"]), 3)}
            for n in range(shards)
        ]
        if documents == 0:
            raise InputError(f"{source if isinstance(source, Path) else 'ray ingest'}: the corpus is empty (no documents)")
        write_shard_manifest(
            staging, sharded.to_config(), sharded.shard, counts,
            ingest={"documents": documents, "chunker": chunker_component.to_config(), "workers": workers, "threads": threads,
                    "seconds": round(seconds, 3), "shards": per_shard},
        )
    trace = Trace()
    trace.add(StageRecord(
        stage="ray-ingest", seconds=seconds, n_in=documents, n_out=sum(counts),
        extra={"shards": per_shard, "workers": workers, "threads": threads},
    ))
    return trace


def ingest_pipeline(
    corpus: "str | Path | Sequence[Document]",
    out: str | Path,
    config: "str | Path | dict[str, Any] | None" = None,
    *,
    shards: int = 4,
    address: str | None = None,
    **options: Any,
) -> Trace:
    """``specrag index --ray``: a pipeline directory like :meth:`rag.pipeline.Pipeline.save` writes, whose
    index is a :class:`~indexes.sharded.ShardedIndex` over shards of the configured index.

    ``Pipeline.load(out)`` (and ``specrag ask --index out``) then searches through shard actors.
    """
    from rag.config import dump_config
    from rag.pipeline import CONFIG_FILE, INDEX_DIR, Pipeline

    pipeline = Pipeline.from_config(config) if config is not None else Pipeline()
    if isinstance(pipeline.index, ShardedIndex):
        raise InputError("ray ingest: the pipeline's index is already 'sharded'; configure the shard kind (e.g. 'dense') instead")
    with atomic_directory(out) as staging:
        trace = ingest(
            corpus, staging / INDEX_DIR, index=pipeline.index, chunker=pipeline.chunker, shards=shards,
            address=address, sharded_params=None, **options,
        )
        data = pipeline.to_config()
        data["index"] = ShardedIndex(shard=pipeline.index, shards=shards, address=address).to_config()
        dump_config(data, staging / CONFIG_FILE)
    return trace


# -- the stages -----------------------------------------------------------------------------------------


def _check_corpus(corpus: "str | Path | Sequence[Document]") -> "Path | list[Document]":
    if isinstance(corpus, (str, Path)):
        path = Path(corpus)
        if not path.is_file():
            raise InputError(f"{path}: no such file (expected a JSONL corpus: one {{_id, title, text}} per line)")
        return path.resolve()
    documents = list(corpus)
    if not documents:
        raise InputError("ray ingest: no documents given (the corpus is empty)")
    seen: set[str] = set()
    for doc in documents:
        if not isinstance(doc, Document):
            raise InputError(f"ray ingest: expected Document objects, got {type(doc).__name__}")
        if doc.id in seen:
            raise InputError(f"ray ingest: duplicate document id {doc.id!r}")
        seen.add(doc.id)
    return documents


def _as_function(stage: Any) -> Any:
    """A plain function around a stage object (Ray Data runs functions as tasks; classes would become actors)."""

    def run(batch: dict[str, Any]) -> dict[str, Any]:
        return stage(batch)

    run.__name__ = type(stage).__name__.lstrip("_")
    return run


def _where(source: "Path | list[Document]") -> str | None:
    return str(source) if isinstance(source, Path) else None


def _read(data: Any, source: "Path | list[Document]") -> Any:
    if isinstance(source, Path):
        return data.read_text(str(source))
    lines = [
        {"text": json.dumps({"_id": d.id, "title": d.title, "text": d.text, "metadata": d.metadata}, ensure_ascii=False)}
        for d in source
    ]
    return data.from_items(lines, override_num_blocks=1)


def parse_document(line: str, where: str) -> Document | None:
    """A document from one corpus line, checked as :func:`rag.io.read_documents` checks it; ``None`` for a blank line."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno}) in line {line[:80]!r}") from None
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object per line, got {type(record).__name__}")
    doc_id = str(record.get("_id", record.get("id", "")) or "")
    at = f"{where} (document {doc_id!r})" if doc_id else where
    text, title = record.get("text"), record.get("title") or ""
    if not isinstance(text, str):
        raise InputError(f"{at}: document has no 'text' string")
    if not isinstance(title, str):
        raise InputError(f"{at}: 'title' must be a string")
    if not text.strip() and not title.strip():
        raise InputError(f"{at}: document has empty text")
    return Document(text=text, id=doc_id, title=title, metadata=record.get("metadata") or {})


class _ChunkBatch:
    """``map_batches`` stage: corpus lines -> chunks (as JSON) tagged with their shard."""

    def __init__(self, chunker: PortableSpec, shards: int, path: str | None, threads: int) -> None:
        self.chunker, self.shards, self.path, self.threads = chunker, shards, path, threads

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        set_worker_threads(self.threads)
        chunker = self.chunker.build()
        where = self.path or "documents"
        docs = [d for d in (parse_document(str(line), where) for line in batch["text"]) if d is not None]
        shards, chunks, doc_ids = [], [], []
        for doc in docs:
            shard = shard_of(doc.id, self.shards)
            for chunk in chunker.chunk(doc):
                shards.append(shard)
                doc_ids.append(doc.id)
                chunks.append(json.dumps(chunk.to_dict(), ensure_ascii=False))
        return {
            "shard": np.asarray(shards, dtype=np.int64),
            "doc_id": np.asarray(doc_ids, dtype=object),
            "chunk": np.asarray(chunks, dtype=object),
        }


class _ShardBuilder:
    """``map_groups`` stage: all chunks of one shard -> a saved index in ``root/shard-NNNN``."""

    def __init__(self, shard: PortableSpec, root: str, threads: int) -> None:
        self.shard, self.root, self.threads = shard, root, threads

    def __call__(self, group: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        started = time.perf_counter()
        set_worker_threads(self.threads)
        number = int(group["shard"][0])
        chunks = [Chunk.from_dict(json.loads(text)) for text in group["chunk"]]
        chunks.sort(key=lambda c: (c.doc_id, c.start, c.id))  # group order is not deterministic; this is
        _check_unique(chunks, number)
        index = self.shard.build()
        warm_up = getattr(index, "warm_up", None)
        if callable(warm_up):
            warm_up()
            set_worker_threads(self.threads)  # torch/faiss are imported now: set them directly too
        index.add(chunks)
        index.save(Path(self.root) / shard_directory(number))
        return {
            "shard": np.asarray([number], dtype=np.int64),
            "documents": np.asarray([len(set(group["doc_id"].tolist()))], dtype=np.int64),
            "chunks": np.asarray([len(index)], dtype=np.int64),
            "seconds": np.asarray([time.perf_counter() - started], dtype=np.float64),
        }


def _specrag_cause(exc: BaseException) -> SpecragError | None:
    """Our error (file, document id) behind a Ray Data failure, rebuilt from the worker's traceback.

    Ray Data reports a failed task as ``RayTaskError(UserCodeException)``; the original exception object
    does not cross the process boundary, only its traceback text, whose last ``rag.errors.X: message``
    line names our error and its message.
    """
    import rag.errors

    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or getattr(exc, "cause", None) or exc.__context__
    for link in chain:
        if isinstance(link, SpecragError) and type(link).__module__.startswith(("rag.", "indexes.", "chunkers.")):
            return link
    for link in chain:
        found = re.findall(r"^rag\.errors\.(\w+): (.+)$", str(link), flags=re.MULTILINE)
        if found:
            name, message = found[-1]
            cls = getattr(rag.errors, name, None)
            if isinstance(cls, type) and issubclass(cls, SpecragError):
                return cls(message)
    return None


def _check_unique(chunks: list[Chunk], number: int) -> None:
    seen: dict[str, str] = {}
    for chunk in chunks:
        if chunk.id in seen:
            raise InputError(
                f"shard {number}: chunk id {chunk.id!r} appears twice (document {chunk.doc_id!r}); "
                "document ids must be unique in the corpus"
            )
        seen[chunk.id] = chunk.doc_id


def _save_empty(shard: PortableSpec, directory: str, threads: int) -> int:
    set_worker_threads(threads)
    shard.build().save(directory)
    return 0
