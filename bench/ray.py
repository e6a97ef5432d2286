"""Ray ingestion and sharded search against the single-process path, in one run.

    python -m bench.ray [--data ../shared/data/scifact] [--kinds dense,bm25] [--shards 4] [--cpus 2]
                        [--limit N] [--latency-queries 50] [--out DIR]

For each index kind, on the same corpus (one chunk per document, the "document" chunker):

1. **single process**: chunk, ``index.add`` and ``index.save`` in this process (torch 2 threads, faiss 1),
   model loading included (a cold start, as a command-line run pays it);
2. **Ray**: :func:`indexes.ray_ingest.ingest` on a local cluster of ``--cpus`` CPUs (``--shards`` shards,
   one shard built per CPU at a time, torch/faiss 1 thread per worker), from reading the JSONL to the
   written shard manifest, worker start-up and model loading included;
3. **search**: every judged query of the split in one batch (k=100) on the single index and on a
   :class:`~indexes.sharded.ShardedIndex` over the shards (one actor per shard, 1 thread each); prints
   nDCG@10 for both, how many queries have identical top-10 ids, and the latency of the batch and of
   ``--latency-queries`` queries sent one per call (median), single vs sharded: the scatter/gather overhead.

``--reshard-dense DIR`` (with ``--kinds ''``) splits an already saved single dense index of the full
corpus into shards without encoding again and compares sharded and single search on every query: the
merge's exactness at full size when encoding the corpus twice does not fit the time at hand.

The last line is a JSON object with every number. Expect Ray to be slower than one process on a
2-CPU machine: the same cores do the same encoding plus Ray's scheduling, serialisation and worker start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from eval.beir import load_beir
from eval.metrics import evaluate_run, hits_to_run
from rag.registry import build, resolve

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"


def _top_ids(hits: list[list[Any]], k: int = 10) -> list[list[str]]:
    return [[hit.chunk.id for hit in row[:k]] for row in hits]


def _per_query_seconds(index: Any, queries: list[str], k: int) -> float:
    times = []
    for query in queries:
        started = time.perf_counter()
        index.search([query], k)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _open_sharded(path: Path) -> Any:
    """A saved sharded index with its actors started, waiting for every shard however loaded the machine."""
    from indexes.sharded import ShardedIndex

    sharded = ShardedIndex.open(path)
    sharded.timeout_s = None
    sharded.start_timeout_s = 3600.0  # four actors loading a model at once on a busy 2-core machine take minutes
    sharded.warm_up()
    return sharded


def bench_kind(kind: str, args: argparse.Namespace, dataset: Any, corpus_path: Path, root: Path) -> dict[str, Any]:
    import torch

    from indexes.ray_ingest import ingest

    docs = dataset.corpus
    query_ids = list(dataset.queries)
    queries = [dataset.queries[q] for q in query_ids]
    result: dict[str, Any] = {"kind": kind, "documents": len(docs), "queries": len(queries), "shards": args.shards}

    if args.search_only:
        # The indexes an earlier run saved under --out: compare searches only (no ingestion timings).
        single = resolve("index", kind).open(root / f"single-{kind}")
        print(f"[{kind}] reusing {root / f'single-{kind}'} and {root / f'ray-{kind}'} (--search-only)", flush=True)
    else:
        # 1. single process, cold
        torch.set_num_threads(2)
        started = time.perf_counter()
        single = build("index", kind)
        chunks = build("chunker", "document").chunk_many(docs)
        single.add(chunks)
        single.save(root / f"single-{kind}")
        result["single_seconds"] = round(time.perf_counter() - started, 2)
        result["single_docs_per_s"] = round(len(docs) / result["single_seconds"], 2)
        print(f"[{kind}] single process: {len(docs)} docs in {result['single_seconds']:.1f} s "
              f"({result['single_docs_per_s']:.1f} docs/s)", flush=True)

        # 2. Ray Data ingestion into shards
        started = time.perf_counter()
        trace = ingest(corpus_path, root / f"ray-{kind}", index=kind, chunker="document", shards=args.shards, threads=1)
        result["ray_seconds"] = round(time.perf_counter() - started, 2)
        result["ray_docs_per_s"] = round(len(docs) / result["ray_seconds"], 2)
        result["ray_shards"] = trace.stages[0].extra["shards"]
        result["ray_over_single"] = round(result["ray_docs_per_s"] / result["single_docs_per_s"], 3)
        print(f"[{kind}] Ray Data, {args.cpus} CPUs, {args.shards} shards: {len(docs)} docs in {result['ray_seconds']:.1f} s "
              f"({result['ray_docs_per_s']:.1f} docs/s; ratio Ray/single {result['ray_over_single']:.2f}); "
              f"per shard {[s['chunks'] for s in result['ray_shards']]} chunks", flush=True)

    # 3. search: quality and latency
    sharded = _open_sharded(root / f"ray-{kind}")
    single.search(queries[:2], 10)  # warm both paths
    sharded.search(queries[:2], 10)
    started = time.perf_counter()
    single_hits = single.search(queries, 100)
    result["single_batch_s"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    sharded_hits = sharded.search(queries, 100)
    result["sharded_batch_s"] = round(time.perf_counter() - started, 3)
    result["sharded_shard_s"] = sharded.last_report.shard_seconds
    same = sum(a == b for a, b in zip(_top_ids(single_hits), _top_ids(sharded_hits)))
    result["identical_top10"] = same
    result["max_top10_score_diff"] = max(
        (abs(a.score - b.score) for x, y in zip(single_hits, sharded_hits) for a, b in zip(x[:10], y[:10])), default=0.0
    )
    result["single"] = evaluate_run(hits_to_run(query_ids, single_hits), dataset.qrels)
    result["sharded"] = evaluate_run(hits_to_run(query_ids, sharded_hits), dataset.qrels)
    result["ndcg10_delta"] = round(result["sharded"]["ndcg@10"] - result["single"]["ndcg@10"], 4)
    result["statistics"] = "global" if sharded.uses_global_statistics else "shard"
    if sharded.uses_global_statistics:  # also score with each shard's own statistics, for comparison
        sharded.statistics = "shard"
        per_shard = sharded.search(queries, 100)
        result["sharded_shard_statistics"] = evaluate_run(hits_to_run(query_ids, per_shard), dataset.qrels)
        sharded.statistics = "global"
        print(f"[{kind}] nDCG@10 with per-shard statistics: {result['sharded_shard_statistics']['ndcg@10']:.4f} "
              f"(delta {result['sharded_shard_statistics']['ndcg@10'] - result['single']['ndcg@10']:+.4f})", flush=True)
    latency = queries[: args.latency_queries]
    result["single_query_ms"] = round(1000 * _per_query_seconds(single, latency, 10), 2)
    result["sharded_query_ms"] = round(1000 * _per_query_seconds(sharded, latency, 10), 2)
    print(f"[{kind}] nDCG@10 single {result['single']['ndcg@10']:.4f}, sharded ({result['statistics']} statistics) "
          f"{result['sharded']['ndcg@10']:.4f} "
          f"(delta {result['ndcg10_delta']:+.4f}); identical top-10 ids on {same}/{len(queries)} queries "
          f"(largest score difference at equal rank {result['max_top10_score_diff']:.2e})", flush=True)
    print(f"[{kind}] batch of {len(queries)} queries (k=100): single {result['single_batch_s']:.3f} s, sharded "
          f"{result['sharded_batch_s']:.3f} s (slowest shard {max(result['sharded_shard_s'].values()):.3f} s); "
          f"one query per call (median of {len(latency)}): single {result['single_query_ms']:.1f} ms, "
          f"sharded {result['sharded_query_ms']:.1f} ms (overhead {result['sharded_query_ms'] - result['single_query_ms']:+.1f} ms)",
          flush=True)
    sharded.close()
    return result


def reshard_dense(single_dir: Path, out: Path, shards: int) -> Path:
    """Split a saved flat dense index into ``shards`` dense shards by the ShardedIndex routing, reusing its
    vectors (no re-encoding), and write the shard manifest: the scatter/gather merge on a full corpus
    without paying for the encoding twice. Uses the dense index's internals; a benchmark tool only."""
    import faiss
    import numpy as np

    from indexes.dense import DenseIndex
    from indexes.sharded import ShardedIndex, shard_directory, shard_of, write_shard_manifest
    from rag.io import atomic_directory

    single = DenseIndex.open(single_dir)
    flat = single._faiss
    ids = faiss.vector_to_array(flat.id_map)
    vectors = flat.index.reconstruct_n(0, flat.ntotal)
    rows: dict[int, list[int]] = {}
    for row, faiss_id in enumerate(ids.tolist()):
        rows.setdefault(shard_of(single._chunks[faiss_id].doc_id, shards), []).append(row)
    spec = single.to_config()
    counts = []
    with atomic_directory(out) as staging:
        for number in range(shards):
            picked = rows.get(number, [])
            shard = DenseIndex(**spec["params"])
            shard._faiss = shard._new_faiss(vectors[picked])
            shard._faiss.add_with_ids(vectors[picked], np.arange(len(picked), dtype=np.int64))
            shard._chunks = {i: single._chunks[int(ids[row])] for i, row in enumerate(picked)}
            shard._ids = {chunk.id: i for i, chunk in shard._chunks.items()}
            shard._next_id = len(picked)
            shard.save(staging / shard_directory(number))
            counts.append(len(picked))
        write_shard_manifest(staging, ShardedIndex(shard=spec, shards=shards).to_config(), spec, counts)
    return out


def bench_resharded(single_dir: Path, args: argparse.Namespace, dataset: Any, root: Path) -> dict[str, Any]:
    from indexes.dense import DenseIndex

    query_ids = list(dataset.queries)
    queries = [dataset.queries[q] for q in query_ids]
    out = reshard_dense(single_dir, root / "resharded-dense", args.shards)
    single = DenseIndex.open(single_dir)
    sharded = _open_sharded(out)
    single_hits, sharded_hits = single.search(queries, 100), sharded.search(queries, 100)
    same = sum(a == b for a, b in zip(_top_ids(single_hits), _top_ids(sharded_hits)))
    diff = max((abs(a.score - b.score) for x, y in zip(single_hits, sharded_hits) for a, b in zip(x[:10], y[:10])), default=0.0)
    result = {
        "kind": "dense (resharded from a saved single index)", "single_index": str(single_dir), "documents": len(single),
        "queries": len(queries), "identical_top10": same, "max_top10_score_diff": diff,
        "single": evaluate_run(hits_to_run(query_ids, single_hits), dataset.qrels),
        "sharded": evaluate_run(hits_to_run(query_ids, sharded_hits), dataset.qrels),
    }
    print(f"[dense, resharded {single_dir}] {len(single)} chunks in {args.shards} shards: identical top-10 ids on "
          f"{same}/{len(queries)} queries (largest score difference at equal rank {diff:.2e}); nDCG@10 single "
          f"{result['single']['ndcg@10']:.4f}, sharded {result['sharded']['ndcg@10']:.4f}", flush=True)
    sharded.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ray", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BEIR-layout data set (default: SciFact)")
    parser.add_argument("--kinds", default="dense,bm25", help="comma-separated index kinds (default: dense,bm25)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster (default: 2)")
    parser.add_argument("--limit", type=int, help="use only the first N queries and their subset corpus")
    parser.add_argument("--latency-queries", type=int, default=50)
    parser.add_argument("--out", type=Path, help="keep the indexes here (default: a temporary directory)")
    parser.add_argument("--search-only", action="store_true",
                        help="reuse the single and sharded indexes an earlier run saved under --out and only "
                        "compare their searches (no ingestion)")
    parser.add_argument("--reshard-dense", type=Path, metavar="DIR",
                        help="also split this saved flat dense index (of the same corpus) into shards, reusing its "
                        "vectors, and compare sharded search with it on every query")
    args = parser.parse_args(argv)
    if args.search_only and args.out is None:
        parser.error("--search-only needs --out (the folder an earlier run kept its indexes in)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import faiss
    import ray
    import torch

    torch.set_num_threads(2)
    faiss.omp_set_num_threads(1)
    dataset = load_beir(args.data)
    root = args.out or Path(tempfile.mkdtemp(prefix="specrag-bench-ray-"))
    root.mkdir(parents=True, exist_ok=True)
    corpus_path = Path(args.data) / "corpus.jsonl"
    if args.limit:
        dataset = dataset.subset(args.limit)
        corpus_path = root / "corpus.jsonl"
        with corpus_path.open("w", encoding="utf-8") as handle:
            for doc in dataset.corpus:
                handle.write(json.dumps({"_id": doc.id, "title": doc.title, "text": doc.text}) + "\n")
    print(f"{len(dataset.corpus)} documents, {len(dataset.queries)} queries from {args.data}; Ray {ray.__version__} "
          f"local cluster of {args.cpus} CPUs; {args.shards} shards; indexes under {root}", flush=True)
    from indexes.ray_workers import keep_jvm_signal_handlers

    keep_jvm_signal_handlers()
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    results = [bench_kind(kind.strip(), args, dataset, corpus_path, root) for kind in args.kinds.split(",") if kind.strip()]
    if args.reshard_dense:
        results.append(bench_resharded(args.reshard_dense, args, dataset, root))
    ray.shutdown()
    if args.out is None:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"data": str(args.data), "cpus": args.cpus, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
