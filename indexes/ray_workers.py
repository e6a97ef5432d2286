"""Ray plumbing shared by the sharded index and Ray Data ingestion: connecting, what every worker is told, and
the shard actor.

- :func:`ensure_ray` connects (or starts a local cluster) after :func:`keep_jvm_signal_handlers`, so that a
  Lucene index in the same process survives Ray;
- :func:`worker_runtime_env` carries specrag's environment settings (:data:`WORKER_ENV`) to workers on other
  nodes, and :func:`set_worker_threads` fixes torch's and faiss's threads inside a worker;
- :class:`ShardServer` is the actor behind each shard of :class:`indexes.sharded.ShardedIndex`.

Ray is an optional extra (``pip install 'specrag[ray]'``); importing this module does not import it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Mapping

from indexes.global_bm25 import global_scorer
from rag.lazy import require
from rag.registry import PortableSpec
from rag.types import Chunk, Hit

EXTRA = "ray"
# Passed to every actor and Ray Data worker, so that workers behave like the driver (no hub, quiet tokenizers).
WORKER_ENV = ("SPECRAG_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "SPECRAG_JAVA_HOME")


def set_worker_threads(threads: int) -> None:
    """Fix torch's and faiss's thread counts in a worker.

    The environment variables cover libraries imported later (the shard's index imports torch or faiss
    on first use); libraries already imported are set directly. Nothing heavy is imported here.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(threads)


def worker_runtime_env() -> dict[str, Any]:
    """A Ray ``runtime_env`` carrying specrag's environment settings to workers on other nodes."""
    env = {name: os.environ[name] for name in WORKER_ENV if name in os.environ}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return {"env_vars": env}


def keep_jvm_signal_handlers() -> None:
    """Stop Ray from installing its failure signal handler in this process (unless the user chose).

    Ray's handler replaces the SIGSEGV handler that a JVM relies on for implicit null checks, so a Lucene
    index used in the same process (BM25, SPLADE) can then crash the process ("Lucene Merge Thread:
    segfault at 8"), as it did in our test suite once Ray had run. Call before ``ray.init``.
    """
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")


def ensure_ray(address: str | None) -> Any:
    """The ``ray`` module, connected: to ``address``, to the cluster ``RAY_ADDRESS`` names, or a local one."""
    keep_jvm_signal_handlers()
    ray = require("ray", EXTRA, "ray[data]")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    return ray


class ShardServer:
    """The actor that holds one shard: builds the shard's index, loads it, and answers calls on it."""

    def __init__(self, number: int, shard: PortableSpec, directory: str | None, threads: int) -> None:
        set_worker_threads(threads)
        self.number = number
        self.index = shard.build()
        if directory is not None:
            self.index.load(directory)
        set_worker_threads(threads)  # again: loading may have imported torch or faiss

    def count(self) -> int:
        return len(self.index)

    def warm_up(self) -> int:
        warm_up = getattr(self.index, "warm_up", None)
        if callable(warm_up):
            warm_up()
        return len(self.index)

    def search(self, queries: list[str], k: int) -> tuple[list[list[Hit]], float]:
        started = time.perf_counter()
        hits = self.index.search(queries, k)
        return hits, time.perf_counter() - started

    def term_statistics(self, queries: list[str]) -> dict[str, Any]:
        return global_scorer(self.index).statistics(queries)

    def search_global(self, queries: list[str], k: int, statistics: Mapping[str, Any]) -> tuple[list[list[Hit]], float]:
        started = time.perf_counter()
        hits = global_scorer(self.index).search(queries, k, statistics)
        return hits, time.perf_counter() - started

    def add(self, chunks: list[Chunk]) -> int:
        self.index.add(chunks)
        return len(self.index)

    def delete(self, chunk_ids: list[str]) -> int:
        return int(self.index.delete(chunk_ids))

    def save(self, directory: str) -> int:
        self.index.save(directory)
        return len(self.index)
