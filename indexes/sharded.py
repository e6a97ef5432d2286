"""A sharded index: N ordinary specrag indexes, each served by a Ray actor, searched by scatter/gather.

    >>> from indexes.sharded import ShardedIndex
    >>> index = ShardedIndex(shard="dense", shards=4)        # cheap: no Ray, no actors, no models yet
    >>> index.load("scifact-sharded/index")                   # doctest: +SKIP  (starts one actor per shard)
    >>> hits = index.search(["what thins blood?"], k=10)      # doctest: +SKIP
    >>> index.last_report.failed                              # doctest: +SKIP  (shards that did not answer)
    []

Shards are written by :func:`indexes.ray_ingest.ingest` (Ray Data) or by :meth:`ShardedIndex.save`.
A chunk lives in shard ``crc32(utf-8 doc_id) % shards`` (:func:`shard_of`), so every chunk of a document
is in one shard and ``delete`` by id needs no global directory.

Search sends the whole query batch to every shard actor at once, waits for all of them (up to
``timeout_s``), takes each shard's top ``k`` and merges them by score, ties broken by chunk id. Whether
the merged list equals the list one index over all chunks would give depends on the scores:

- ``dense`` (and any index whose score of a chunk depends only on the query and the chunk: inner
  product, cosine, MaxSim late interaction, SPLADE impact scores with a fixed query encoding) is exact:
  the global top ``k`` is inside the union of the per-shard top ``k``, with the same scores. On SciFact
  (4 shards) the top-10 ids are identical to the single index for all 300 queries.
- ``bm25`` / ``bm25s`` use collection statistics (document frequency ``df``, number of documents ``N``,
  mean length ``avgdl``) that each shard computes over its own chunks. With ``statistics="shard"`` a chunk
  scores with its shard's statistics: on SciFact with 4 shards (about 1,300 documents each) nDCG@10 drops
  from 0.6789 to 0.6717 (-0.0072). With ``statistics="global"`` (the ``"auto"`` default for Lucene BM25
  with flat fields; :mod:`indexes.global_bm25`) the search takes two rounds: every shard reports ``N`` and
  the ``df`` of each query term, the driver sums them, and each shard searches with every term's boost
  multiplied by ``idf(global) / idf(shard)``, which replaces the shard's idf by the corpus-wide one (a
  single shard gives Anserini's own scores exactly). Only ``avgdl`` stays per shard. On SciFact: nDCG@10
  0.6793 against 0.6789 for one index (+0.0004). bm25s and multifield BM25 shards keep per-shard statistics.

A shard that raises, dies (``ray.kill``, a lost node) or does not answer within ``timeout_s`` is a
:class:`ShardError` naming the shard, its directory and what happened; with ``allow_partial=True`` the
call instead returns the merge of the shards that answered. Either way :attr:`ShardedIndex.last_report`
(a :class:`SearchReport`) says which shards answered, which failed and why, and how long each took.

On disk (format version 1) a sharded index is a directory holding ``manifest.json`` (see
:mod:`rag.manifest`; it adds ``shards`` (one ``{"directory", "count"}`` per shard), ``shard_component``
(the config of every shard), ``routing`` and optional ``ingest`` statistics, and checksums each shard's
manifest, which in turn checksums that shard's files) and ``shard-0000``, ``shard-0001``, ...: each a
normal saved index of the shard kind, loadable by itself (``DenseIndex.open("…/shard-0002")``).
Ray must see the directory at the same path on every node (a shared file system) for multi-node use.

Each shard's actor is an :class:`indexes.ray_workers.ShardServer`; :mod:`indexes.ray_workers` also holds
the Ray plumbing this module shares with :mod:`indexes.ray_ingest` (connecting, worker environment and
threads). Ray is an optional extra (``pip install 'specrag[ray]'``); importing this module does not import it.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from indexes.global_bm25 import check_global_statistics, merge_statistics, supports_global_statistics
from indexes.ray_workers import EXTRA, ShardServer, ensure_ray, worker_runtime_env
from rag.errors import InputError, SpecragError
from rag.io import atomic_directory
from rag.lazy import require
from rag.manifest import MANIFEST, SavedIndex, distinct_ids, read_manifest, verify_files, write_manifest
from rag.protocols import missing_methods, text_batch
from rag.registry import Component, PortableSpec, build, declared_params
from rag.types import Chunk, Hit

FORMAT_VERSION = 1
KIND = "sharded"
ROUTING = "crc32(utf-8 doc_id) % shards"
# How shards score collection statistics: see ShardedIndex and indexes.global_bm25.
STATISTICS = ("auto", "shard", "global")


def shard_of(doc_id: str, shards: int) -> int:
    """The shard that holds the chunks of document ``doc_id`` (stable across processes and machines)."""
    return zlib.crc32(doc_id.encode("utf-8")) % shards


def shard_directory(number: int) -> str:
    return f"shard-{number:04d}"


class ShardError(SpecragError):
    """One or more shards failed, died or timed out; ``failures`` lists them (:class:`ShardFailure`)."""

    def __init__(self, message: str, failures: Sequence["ShardFailure"] = ()) -> None:
        super().__init__(message)
        self.failures = list(failures)


@dataclass(frozen=True)
class ShardFailure:
    """A shard that did not answer: ``reason`` is ``"died"``, ``"timeout"`` or ``"error"``."""

    shard: int
    directory: str | None
    reason: str
    message: str

    def describe(self) -> str:
        where = f" ({self.directory})" if self.directory else ""
        return f"shard {self.shard}{where} {self.message}"


@dataclass
class SearchReport:
    """What one scatter/gather did: shards asked and answered, failures, seconds per shard and in all."""

    shards: int
    queries: int
    answered: list[int] = field(default_factory=list)
    failed: list[ShardFailure] = field(default_factory=list)
    shard_seconds: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def partial(self) -> bool:
        """True when the results leave out at least one shard."""
        return bool(self.failed)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, e.g. for a trace's ``extra``."""
        data = asdict(self)
        data["partial"] = self.partial
        return data


def write_shard_manifest(
    directory: Path, component: Mapping[str, Any], shard_component: Mapping[str, Any], counts: Sequence[int],
    **fields: Any,
) -> dict[str, Any]:
    """The manifest of a sharded index whose shards are already saved under ``directory``."""
    names = [shard_directory(n) for n in range(len(counts))]
    return write_manifest(
        directory,
        kind=KIND,
        format_version=FORMAT_VERSION,
        component=component,
        count=int(sum(counts)),
        files=[f"{name}/{MANIFEST}" for name in names],
        shards=[{"directory": name, "count": int(c)} for name, c in zip(names, counts)],
        shard_component=dict(shard_component),
        routing=ROUTING,
        **fields,
    )


def read_shard_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a saved sharded index, checked: layout, version, shard list, member checksums."""
    directory = Path(directory)
    manifest = read_manifest(directory, kind=KIND, format_version=FORMAT_VERSION)
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not shards:
        raise InputError(f"{directory}/{MANIFEST}: 'shards' must be a non-empty list of {{directory, count}}")
    for number, entry in enumerate(shards):
        if not isinstance(entry, dict) or entry.get("directory") != shard_directory(number):
            raise InputError(
                f"{directory}/{MANIFEST}: shard {number} must be {{'directory': {shard_directory(number)!r}, 'count': N}}, "
                f"got {entry!r}"
            )
    if manifest.get("routing") != ROUTING:
        raise InputError(f"{directory}/{MANIFEST}: routing {manifest.get('routing')!r}, this specrag routes by {ROUTING!r}")
    if not isinstance(manifest.get("shard_component"), dict) or "type" not in manifest["shard_component"]:
        raise InputError(f"{directory}/{MANIFEST}: 'shard_component' must be a {{type, params}} mapping")
    verify_files(directory, manifest)
    return manifest


@declared_params
class ShardedIndex(SavedIndex):
    """``shards`` indexes of kind ``shard`` (a registered name or ``{type, params}``), one Ray actor each.

    ``address`` is the Ray cluster (``None``: ``RAY_ADDRESS`` or a new local cluster; ignored when Ray is
    already initialised). ``timeout_s`` bounds one search (``None``: wait for every shard);
    ``allow_partial`` returns the shards that answered instead of raising :class:`ShardError`.
    ``cpus_per_shard`` is what each actor reserves for placement (4 shards fit a 2-CPU local cluster at
    the default 0.25 with room left for ingestion tasks); ``threads`` are each actor's torch/faiss
    threads. ``statistics`` is ``"shard"``, ``"global"`` (Lucene BM25 with flat fields: corpus-wide
    idf, see the module doc) or ``"auto"`` (global where supported). Hits keep the ``source`` of the
    shard index that scored them.
    """

    manifest_kind = KIND
    manifest_version = FORMAT_VERSION

    # A shard spec in; after construction, the built shard index's config.
    shard: str | Mapping[str, Any] | Component = "dense"
    shards: int = 4
    address: str | None = None
    timeout_s: float | None = 60.0
    allow_partial: bool = False
    cpus_per_shard: float = 0.25
    threads: int = 1
    start_timeout_s: float = 300.0
    statistics: str = "auto"
    name: str = "sharded"
    last_report: SearchReport | None = field(default=None, init=False)  # what the last search did
    _supports_global: bool = field(default=False, init=False)  # set in __post_init__ from the shard kind
    _portable: PortableSpec | None = field(default=None, init=False)  # the shard, as workers build it; set in __post_init__
    _actors: list[Any] = field(default_factory=list, init=False)  # Ray actor handles; started on first use
    # the directory each shard's actor loaded (None: started empty), set in __post_init__
    _directories: list[str | None] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        name, shards, timeout_s, statistics = self.name, self.shards, self.timeout_s, self.statistics
        if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
            raise InputError(f"sharded index {name!r}: shards must be a positive integer, got {shards!r}")
        if timeout_s is not None and timeout_s <= 0:
            raise InputError(f"sharded index {name!r}: timeout_s must be positive or None, got {timeout_s!r}")
        if self.cpus_per_shard < 0 or self.threads < 1 or self.start_timeout_s <= 0:
            raise InputError(
                f"sharded index {name!r}: need cpus_per_shard >= 0, threads >= 1 and start_timeout_s > 0, got "
                f"{self.cpus_per_shard}, {self.threads}, {self.start_timeout_s}"
            )
        template = build("index", self.shard)
        if isinstance(template, ShardedIndex):
            raise InputError(f"sharded index {name!r}: a shard cannot itself be a sharded index")
        missing = missing_methods("index", template)  # a built instance passed as shard skips build's check
        if missing:
            raise InputError(f"sharded index {name!r}: shard index {template!r} has no {missing[0]}(); it must implement the Index protocol")
        if statistics not in STATISTICS:
            raise InputError(f"sharded index {name!r}: statistics must be one of {', '.join(STATISTICS)}, got {statistics!r}")
        if statistics == "global":
            check_global_statistics(template, name)
        self._supports_global = supports_global_statistics(template)
        self._portable = PortableSpec.of("index", template)
        self.shard = template.to_config()
        self._directories = [None] * shards

    # -- the Index protocol ------------------------------------------------------------------------

    def add(self, chunks: Iterable[Chunk]) -> None:
        """Route ``chunks`` to their shards by document id and add them there, all shards at once.

        If a shard fails, the chunks already added to the others are deleted again.
        """
        chunks = list(chunks)
        if not chunks:
            return
        seen: set[str] = set()
        for chunk in chunks:
            if not isinstance(chunk, Chunk):
                raise InputError(f"sharded index {self.name!r}: expected Chunk objects, got {type(chunk).__name__}")
            if chunk.id in seen:
                raise InputError(f"sharded index {self.name!r}: chunk id {chunk.id!r} appears twice in the added chunks")
            seen.add(chunk.id)
        groups: dict[int, list[Chunk]] = {}
        for chunk in chunks:
            groups.setdefault(shard_of(chunk.doc_id, self.shards), []).append(chunk)
        actors = self._ensure_actors()
        calls = {number: actors[number].add.remote(group) for number, group in groups.items()}
        failures, _ = self._gather(calls, timeout_s=None)
        if failures:
            done = [n for n in calls if n not in {f.shard for f in failures}]
            ids = [c.id for c in chunks]
            self._ray().get([actors[n].delete.remote(ids) for n in done])
            raise self._error("add", failures)

    def search(self, queries: str | Sequence[str], k: int = 10) -> list[list[Hit]]:
        """The ``k`` best chunks per query over all shards, best first (ties by chunk id).

        One str is one query (a batch of one), not one query per character. Sets :attr:`last_report`.
        A failed shard raises :class:`ShardError` unless ``allow_partial``.
        """
        if k < 1:
            raise InputError(f"sharded index {self.name!r}: k must be at least 1, got {k}")
        queries = text_batch(queries, f"sharded index {self.name!r}")
        report = SearchReport(shards=self.shards, queries=len(queries))
        self.last_report = report
        if not queries:
            return []
        started = time.perf_counter()
        actors = self._ensure_actors()
        failures: list[ShardFailure] = []
        if self.uses_global_statistics:
            # Round one: every shard's document count and document frequencies of the query terms.
            stats_calls = {number: actor.term_statistics.remote(queries) for number, actor in enumerate(actors)}
            failures, shard_stats = self._gather(stats_calls, timeout_s=self.timeout_s)
            merged = merge_statistics(list(shard_stats.values()), len(queries))
            calls = {n: actors[n].search_global.remote(queries, k, merged) for n in sorted(shard_stats)}
        else:
            calls = {number: actor.search.remote(queries, k) for number, actor in enumerate(actors)}
        more, answers = self._gather(calls, timeout_s=self.timeout_s)
        failures = sorted(failures + more, key=lambda f: f.shard)
        report.failed = failures
        report.answered = sorted(answers)
        report.shard_seconds = {n: round(answer[1], 6) for n, answer in sorted(answers.items())}
        if failures and not self.allow_partial:
            report.seconds = time.perf_counter() - started
            raise self._error("search", failures)
        merged = [merge_hits([answers[n][0][q] for n in sorted(answers)], k) for q in range(len(queries))]
        report.seconds = time.perf_counter() - started
        return merged

    def delete(self, chunk_ids: Iterable[str]) -> int:
        """Remove the chunks with these ids from every shard; returns how many were removed."""
        ids = distinct_ids(chunk_ids)
        if not ids:
            return 0
        actors = self._ensure_actors()
        failures, answers = self._gather({n: a.delete.remote(ids) for n, a in enumerate(actors)}, timeout_s=None)
        if failures:
            raise self._error("delete", failures)
        return sum(answers.values())

    def __len__(self) -> int:
        if not self._actors:
            return 0
        failures, answers = self._gather({n: a.count.remote() for n, a in enumerate(self._actors)}, timeout_s=self.timeout_s)
        if failures:
            raise self._error("count", failures)
        return sum(answers.values())

    # -- persistence -------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Every shard saves itself into ``directory/shard-NNNN`` (in its actor), then the shard manifest; atomic.

        On a multi-node cluster ``directory`` must be on a file system every node sees at the same path.
        """
        actors = self._ensure_actors()
        with atomic_directory(directory) as staging:
            calls = {n: a.save.remote(str(staging.resolve() / shard_directory(n))) for n, a in enumerate(actors)}
            failures, counts = self._gather(calls, timeout_s=None)
            if failures:
                raise self._error("save", failures)
            write_shard_manifest(staging, self.to_config(), self.shard, [counts[n] for n in range(self.shards)])

    def load(self, directory: str | Path) -> None:
        """Start one actor per shard of a saved sharded index, each loading its shard; all or nothing."""
        directory = Path(directory).resolve()
        manifest = read_shard_manifest(directory)
        saved = manifest["shard_component"]
        if len(manifest["shards"]) != self.shards or saved.get("type") != self.shard["type"]:
            raise InputError(
                f"{directory}: holds {len(manifest['shards'])} shards of {saved.get('type')!r}, but this index has "
                f"{self.shards} shards of {self.shard['type']!r}; use ShardedIndex.open({str(directory)!r}) to adopt the saved config"
            )
        directories = [str(directory / entry["directory"]) for entry in manifest["shards"]]
        actors = self._start_actors(directories)
        self.close()
        self._actors, self._directories = actors, list(directories)

    # -- helpers -----------------------------------------------------------------------------------

    @property
    def uses_global_statistics(self) -> bool:
        """Whether searches score with corpus-wide statistics (see ``statistics``)."""
        if self.statistics == "global" and not self._supports_global:
            check_global_statistics(build("index", self.shard), self.name)
        return self.statistics == "global" or (self.statistics == "auto" and self._supports_global)

    @property
    def actors(self) -> list[Any]:
        """The shard actors (Ray handles), in shard order; started on first use."""
        return list(self._ensure_actors())

    def warm_up(self) -> None:
        """Start the actors and let each shard load its model or start Java now."""
        actors = self._ensure_actors()
        failures, _ = self._gather({n: a.warm_up.remote() for n, a in enumerate(actors)}, timeout_s=self.start_timeout_s)
        if failures:
            raise self._error("warm up", failures)

    def close(self) -> None:
        """Stop the shard actors (the saved shards stay on disk). The next call starts fresh ones."""
        if self._actors:
            ray = self._ray()
            for actor in self._actors:
                try:
                    ray.kill(actor)
                except Exception:  # already dead: nothing to stop
                    pass
        self._actors = []

    def _ray(self) -> Any:
        return ensure_ray(self.address)

    def _ensure_actors(self) -> list[Any]:
        if not self._actors:
            self._actors = self._start_actors([None] * self.shards)
            self._directories = [None] * self.shards
        return self._actors

    def _start_actors(self, directories: Sequence[str | None]) -> list[Any]:
        ray = self._ray()
        server = ray.remote(ShardServer).options(
            num_cpus=self.cpus_per_shard, scheduling_strategy="SPREAD", runtime_env=worker_runtime_env(),
        )
        actors = [server.remote(n, self._portable, d, self.threads) for n, d in enumerate(directories)]
        failures, _ = self._gather(
            {n: a.count.remote() for n, a in enumerate(actors)}, timeout_s=self.start_timeout_s, directories=directories,
        )
        if failures:
            for actor in actors:
                ray.kill(actor)
            raise self._error("start", failures)
        return actors

    def _gather(
        self, calls: Mapping[int, Any], timeout_s: float | None, directories: Sequence[str | None] | None = None,
    ) -> tuple[list[ShardFailure], dict[int, Any]]:
        """Wait for one call per shard; returns the failures and the answers by shard number."""
        ray = self._ray()
        exceptions = require("ray.exceptions", EXTRA, "ray[data]")
        directories = self._directories if directories is None else directories
        refs = list(calls.values())
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        ready_ids = {ref.hex() for ref in ready}
        failures: list[ShardFailure] = []
        answers: dict[int, Any] = {}
        for number, ref in calls.items():
            where = directories[number] if number < len(directories) else None
            if ref.hex() not in ready_ids:
                failures.append(ShardFailure(number, where, "timeout", f"did not answer within {timeout_s} s"))
                continue
            try:
                answers[number] = ray.get(ref)
            except exceptions.RayActorError as exc:
                failures.append(ShardFailure(number, where, "died", f"actor died ({_first_line(exc)})"))
            except exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None) or exc
                failures.append(ShardFailure(number, where, "error", f"failed: {type(cause).__name__}: {_first_line(cause)}"))
        return failures, answers

    def _error(self, what: str, failures: Sequence[ShardFailure]) -> ShardError:
        listed = "; ".join(f.describe() for f in failures)
        hint = " (pass allow_partial=True to get the other shards' hits)" if what == "search" else ""
        return ShardError(
            f"sharded index {self.name!r}: {what} failed on {len(failures)} of {self.shards} shards: {listed}{hint}", failures,
        )


def merge_hits(per_shard: Sequence[Sequence[Hit]], k: int) -> list[Hit]:
    """The ``k`` best of several best-first hit lists, by score, ties broken by chunk id."""
    hits = [hit for hits in per_shard for hit in hits]
    hits.sort(key=lambda hit: (-hit.score, hit.chunk.id))
    return hits[:k]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    # Ray's errors start with a traceback banner; the last line is the message itself.
    return (lines[-1] if lines else type(exc).__name__)[:300]
