"""Dense search: specrag's DenseIndex against raw faiss, and the approximate kinds against exact search.

    python -m bench.dense [--data ../shared/data/scifact] [--split train] [--rounds 20] [--grid] [--threads 2]

On SciFact (5,183 documents, all-MiniLM-L6-v2 from the ``minilm`` pack, one faiss thread), the corpus and
the queries of ``--split`` (default ``train``, 809 queries: the split the IVF-PQ defaults are chosen on;
``--split test`` gives the 300 test queries the README reports) are embedded once; every index below gets
the same vectors. The output names the split.

Part 1, our layer's cost: ``DenseIndex.search_vectors(queries, k)`` (faiss search, then ``Hit``
objects) against the same faiss index searched directly, reading each result's chunk id and score (what
any caller has to do), at k=10 and k=100. The sides take turns round by round, the order rotating, so
that load changes hit both alike; the target is at least 0.9x raw faiss's queries/s.

Part 2, the kinds: ``flat`` (exact), ``hnsw`` and ``ivfpq`` with their defaults: nDCG@10, recall@100,
build seconds, size on disk, queries/s (search only, one batch call of all queries), and, against flat,
the nDCG@10 loss and the speedup (the kind and flat take turns, batch by batch), side by side in one run. SciFact is small: flat search over 5k vectors
is already cheap, so the approximate kinds' speedups here understate what they give on large corpora.

Part 3, with ``--grid``: ``ivfpq`` over :data:`IVFPQ_GRID` (sub-quantizers x lists probed, at the default
number of lists), the same columns, and the setting :func:`choose_ivfpq` picks (how the defaults were chosen:
run it on ``train``).
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
from indexes.dense import DenseIndex, default_nlist
from rag.registry import build

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
TARGET = 0.90
K = 100
KINDS = ("flat", "hnsw", "ivfpq")
# Rounds of one batch search per side when a kind's speed is compared with flat's.
SPEED_ROUNDS = 5
# (pq_m, nprobe): the IVF-PQ settings the defaults are chosen from (first tried on the test queries, see
# eval/results/dense.md; here the full 3 x 3 of those values). nlist stays at default_nlist.
IVFPQ_GRID = [(pq_m, nprobe) for pq_m in (48, 96, 192) for nprobe in (16, 32, 64)]
# Largest nDCG@10 loss against exact (flat) search a default may cost. Applied to the earlier test-query
# grid, any bound from 0.0076 to 0.030 picks the setting chosen there by hand (PQ96, nprobe 32).
MAX_LOSS = 0.01


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


def choose_ivfpq(rows: list[dict]) -> tuple[dict | None, str]:
    """The IVF-PQ setting the defaults take, and why: among rows whose nDCG@10 loss against flat is at most
    ``MAX_LOSS``, the smallest vectors, then the fewest lists probed (the least search work)."""
    kept = [r for r in rows if r["loss"] <= MAX_LOSS]
    if not kept:
        return None, f"no setting loses at most {MAX_LOSS} nDCG@10 against flat"
    best = min(kept, key=lambda r: (r["bytes"], r["nprobe"]))
    return best, f"smallest vectors, then fewest lists probed, among settings losing at most {MAX_LOSS} nDCG@10"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a BEIR-layout folder (default: SciFact)")
    parser.add_argument("--rounds", type=int, default=20, help="timed passes over all queries per side")
    parser.add_argument("--cache", type=Path, help="keep the embeddings in this folder and reuse them next time")
    parser.add_argument("--split", default="train",
                        help="qrels split whose queries are searched (default: train, the split the defaults are chosen on)")
    parser.add_argument("--grid", action="store_true", help="also run the IVF-PQ grid and print the setting chosen")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for embedding (default 2)")
    args = parser.parse_args(argv)

    import faiss
    import torch

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(args.threads)
    dataset = load_beir(args.data, args.split)
    chunks = build("chunker", "document").chunk_many(dataset.corpus)
    query_ids = list(dataset.queries)
    exact = DenseIndex(kind="flat")
    started = time.perf_counter()
    doc_vectors = _cached(args.cache, "documents", len(chunks),
                          lambda: exact.encoder.encode_documents([exact.text_of(c) for c in chunks]))
    query_vectors = _cached(args.cache, f"queries-{args.split}", len(query_ids),
                            lambda: exact.encoder.encode_queries([dataset.queries[q] for q in query_ids]))
    print(f"{dataset.name}: {len(chunks)} documents, {len(query_ids)} queries of split {args.split!r}, embedded in "
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
        print(f"\nour layer vs raw faiss (flat, k={k}, {args.rounds} rounds of {len(query_ids)} {args.split} queries, 1 thread):")
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
            qps, speedup = _speed_against_flat(index, exact, query_vectors)
            metrics = evaluate_run(hits_to_run(query_ids, index.search_vectors(query_vectors, K)), dataset.qrels)
            index.save(Path(scratch) / kind)
            rows.append({
                "kind": kind, "ndcg@10": metrics["ndcg@10"], "recall@100": metrics["recall@100"],
                "qps": qps, "speedup": speedup, "build_seconds": build_seconds,
                "bytes": (Path(scratch) / kind / "vectors.faiss").stat().st_size,
            })
        flat = rows[0]
        print(f"\nkinds (search only: one batch call of {len(query_ids)} {args.split} queries; {SPEED_ROUNDS} rounds "
              f"taking turns with flat, speedup = flat's time / the kind's; sizes are vectors.faiss):")
        print(f"  {'kind':<6} {'nDCG@10':>8} {'loss':>7} {'R@100':>7} {'queries/s':>10} {'speedup':>8} {'build s':>8} {'MB':>6}")
        for row in rows:
            print(f"  {row['kind']:<6} {row['ndcg@10']:8.4f} {flat['ndcg@10'] - row['ndcg@10']:7.4f} "
                  f"{row['recall@100']:7.4f} {row['qps']:10.0f} {row['speedup']:7.2f}x "
                  f"{row['build_seconds']:8.2f} {row['bytes'] / 1e6:6.2f}", flush=True)

        # Part 3: the IVF-PQ grid, one index per pq_m (nprobe is a search-time knob).
        if args.grid:
            print(f"\nivfpq grid ({len(query_ids)} {args.split} queries; loss and speedup against flat above):")
            print(f"  {'pq_m':>4} {'nprobe':>6} {'nDCG@10':>8} {'loss':>7} {'R@100':>7} {'queries/s':>10} {'speedup':>8} "
                  f"{'build s':>8} {'MB':>6}", flush=True)
            grid = []
            for pq_m in dict.fromkeys(m for m, _ in IVFPQ_GRID):
                index = DenseIndex(kind="ivfpq", pq_m=pq_m)
                started = time.perf_counter()
                index.add_vectors(chunks, doc_vectors)
                build_seconds = time.perf_counter() - started
                index.save(Path(scratch) / f"ivfpq-{pq_m}")
                size = (Path(scratch) / f"ivfpq-{pq_m}" / "vectors.faiss").stat().st_size
                for nprobe in (p for m, p in IVFPQ_GRID if m == pq_m):
                    index.nprobe = nprobe
                    qps, speedup = _speed_against_flat(index, exact, query_vectors)
                    metrics = evaluate_run(hits_to_run(query_ids, index.search_vectors(query_vectors, K)), dataset.qrels)
                    row = {"pq_m": pq_m, "nprobe": nprobe, "ndcg@10": metrics["ndcg@10"],
                           "loss": flat["ndcg@10"] - metrics["ndcg@10"], "recall@100": metrics["recall@100"],
                           "qps": qps, "speedup": speedup, "build_seconds": build_seconds, "bytes": size}
                    grid.append(row)
                    print(f"  {pq_m:4d} {nprobe:6d} {row['ndcg@10']:8.4f} {row['loss']:7.4f} {row['recall@100']:7.4f} "
                          f"{row['qps']:10.0f} {speedup:7.2f}x {build_seconds:8.2f} {size / 1e6:6.2f}",
                          flush=True)
            chosen, why = choose_ivfpq(grid)
            if chosen is None:
                print(f"\nchosen on {args.split}: none ({why})")
            else:
                print(f"\nchosen on {args.split}: PQ{chosen['pq_m']}x8, nprobe {chosen['nprobe']} (nlist "
                      f"{default_nlist(len(chunks))}): nDCG@10 {chosen['ndcg@10']:.4f}, loss {chosen['loss']:.4f} ({why})")
    return 0


def _cached(cache: Path | None, stem: str, rows: int, embed: Callable[[], np.ndarray]) -> np.ndarray:
    """``embed()``, or its result saved under ``cache`` as ``stem.npy`` when that holds ``rows`` rows."""
    path = cache / f"{stem}.npy" if cache is not None else None
    if path is not None and path.is_file():
        vectors = np.load(path)
        if len(vectors) == rows:
            return vectors
    vectors = embed()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return vectors


def _speed_against_flat(index: DenseIndex, flat: DenseIndex, queries: np.ndarray) -> tuple[float, float]:
    """Queries/s of ``index`` (one batch call of ``queries`` at k=100) and its speedup against ``flat``,
    the two taking turns for ``SPEED_ROUNDS`` rounds, so that load changes on a shared machine hit both alike."""
    if index is flat:
        sides = {"index": lambda: index.search_vectors(queries, K)}
        _interleaved(sides, 1)  # warm-up
        return SPEED_ROUNDS * len(queries) / _interleaved(sides, SPEED_ROUNDS)["index"], 1.0
    sides = {"flat": lambda: flat.search_vectors(queries, K), "index": lambda: index.search_vectors(queries, K)}
    _interleaved(sides, 1)  # warm-up
    totals = _interleaved(sides, SPEED_ROUNDS)
    return SPEED_ROUNDS * len(queries) / totals["index"], totals["flat"] / totals["index"]


if __name__ == "__main__":
    raise SystemExit(main())
