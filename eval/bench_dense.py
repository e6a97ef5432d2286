"""Dense search: specrag's DenseIndex against raw faiss, and the approximate kinds against exact search.

    python -m eval.bench_dense [--data ../shared/data/scifact] [--rounds 20]

On SciFact (5,183 documents, 300 test queries, all-MiniLM-L6-v2 from the ``minilm`` pack, one faiss
thread), the corpus and the queries are embedded once; every index below gets the same vectors.

Part 1, our layer's cost: ``DenseIndex.search_vectors(queries, k)`` (faiss search, then ``Hit``
objects) against the same faiss index searched directly, reading each result's chunk id and score (what
any caller has to do), at k=10 and k=100. The sides take turns round by round, the order rotating, so
that load changes hit both alike; the target is at least 0.9x raw faiss's queries/s.

Part 2, the kinds: ``flat`` (exact), ``hnsw`` and ``ivfpq`` with their defaults: nDCG@10, recall@100,
build seconds, size on disk, queries/s (search only, one batch call of all queries), and, against flat,
the nDCG@10 loss and the speedup, side by side in one run. SciFact is small: flat search over 5k vectors
is already cheap, so the approximate kinds' speedups here understate what they give on large corpora.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from eval.beir import load_beir
from eval.metrics import evaluate_run, hits_to_run
from indexes.dense import DenseIndex
from rag.registry import build

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
TARGET = 0.90
K = 100
KINDS = ("flat", "hnsw", "ivfpq")


def _interleaved(sides: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Summed seconds per side over ``rounds``, the side order rotating each round."""
    names = list(sides)
    totals = {name: 0.0 for name in names}
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            sides[name]()
            totals[name] += time.perf_counter() - started
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a BEIR-layout folder (default: SciFact)")
    parser.add_argument("--rounds", type=int, default=20, help="timed passes over all queries per side")
    parser.add_argument("--cache", type=Path, help="keep the embeddings in this folder and reuse them next time")
    args = parser.parse_args(argv)

    import faiss
    import torch

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(2)
    dataset = load_beir(args.data, "test")
    chunks = build("chunker", "document").chunk_many(dataset.corpus)
    query_ids = list(dataset.queries)
    exact = DenseIndex(kind="flat")
    started = time.perf_counter()
    cached = args.cache / "documents.npy" if args.cache else None
    if cached is not None and cached.is_file():
        doc_vectors, query_vectors = np.load(cached), np.load(args.cache / "queries.npy")
    else:
        doc_vectors = exact.encoder.encode_documents([exact.text_of(c) for c in chunks])
        query_vectors = exact.encoder.encode_queries([dataset.queries[q] for q in query_ids])
        if cached is not None:
            args.cache.mkdir(parents=True, exist_ok=True)
            np.save(cached, doc_vectors)
            np.save(args.cache / "queries.npy", query_vectors)
    print(f"{dataset.name}: {len(chunks)} documents, {len(query_ids)} queries, embedded in "
          f"{time.perf_counter() - started:.1f} s (shared by every index below)")

    # Part 1: our layer against raw faiss on the same index object.
    exact.add_vectors(chunks, doc_vectors)
    raw, id_of = exact._faiss, {faiss_id: c.id for faiss_id, c in exact._chunks.items()}
    for k in (10, K):
        def raw_faiss(k: int = k) -> None:
            scores, ids = raw.search(query_vectors, k)
            [[(id_of[i], s) for s, i in zip(rs, ri) if i != -1] for rs, ri in zip(scores.tolist(), ids.tolist())]

        sides = {"specrag DenseIndex": lambda k=k: exact.search_vectors(query_vectors, k), "raw faiss": raw_faiss}
        _interleaved(sides, 2)  # warm-up
        totals = _interleaved(sides, args.rounds)
        qps = {name: args.rounds * len(query_ids) / seconds for name, seconds in totals.items()}
        ratio = qps["specrag DenseIndex"] / qps["raw faiss"]
        print(f"\nour layer vs raw faiss (flat, k={k}, {args.rounds} rounds of {len(query_ids)} queries, 1 thread):")
        for name, value in qps.items():
            print(f"  {name:<20} {value:9.0f} queries/s")
        print(f"  ratio {ratio:.3f} (target >= {TARGET}: {'OK' if ratio >= TARGET else 'MISSED'})")

    # Part 2: the kinds, side by side.
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for kind in KINDS:
            index = exact if kind == "flat" else DenseIndex(kind=kind)
            started = time.perf_counter()
            if kind != "flat":
                index.add_vectors(chunks, doc_vectors)
            build_seconds = time.perf_counter() - started if kind != "flat" else float("nan")
            index.search_vectors(query_vectors[:10], K)  # warm-up
            seconds = min(_timed(lambda: index.search_vectors(query_vectors, K)) for _ in range(5))
            metrics = evaluate_run(hits_to_run(query_ids, index.search_vectors(query_vectors, K)), dataset.qrels)
            index.save(Path(scratch) / kind)
            rows.append({
                "kind": kind, "ndcg@10": metrics["ndcg@10"], "recall@100": metrics["recall@100"],
                "qps": len(query_ids) / seconds, "build_seconds": build_seconds,
                "bytes": (Path(scratch) / kind / "vectors.faiss").stat().st_size,
            })
    flat = rows[0]
    print(f"\nkinds (search only: one batch call of {len(query_ids)} queries, best of 5; sizes are vectors.faiss):")
    print(f"  {'kind':<6} {'nDCG@10':>8} {'loss':>7} {'R@100':>7} {'queries/s':>10} {'speedup':>8} {'build s':>8} {'MB':>6}")
    for row in rows:
        print(f"  {row['kind']:<6} {row['ndcg@10']:8.4f} {flat['ndcg@10'] - row['ndcg@10']:7.4f} "
              f"{row['recall@100']:7.4f} {row['qps']:10.0f} {row['qps'] / flat['qps']:7.2f}x "
              f"{row['build_seconds']:8.2f} {row['bytes'] / 1e6:6.2f}")
    return 0


def _timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


if __name__ == "__main__":
    raise SystemExit(main())
