"""Late interaction on SciFact: candidate search against brute-force MaxSim, reranking, and index size.

    python -m bench.late [--data ../shared/data/scifact] [--split train] [--cache DIR] [--grid] [--nlist N]
                         [--timed-queries 30] [--threads 2]

The queries are those judged in ``--split`` (default ``train``: the defaults are chosen on SciFact's 809
train queries and reported on its 300 test queries with ``--split test``); every line of output that
depends on the queries names the split. One run encodes the corpus and the queries once (MiniLM token
vectors, title + " " + text, at most 256 word pieces, special tokens dropped, L2-normalised; see
:mod:`indexes.late`) and reuses those vectors for every measurement, then prints:

- BM25 (Lucene, flat) top 100 reranked by MaxSim: nDCG@10;
- brute-force MaxSim over every document (the reference): nDCG@10 (int8 storage, and the same top 100
  rescored from float16 and float32 vectors);
- speed: brute force as a direct numpy implementation runs it (all float32 token vectors in memory, one query
  at a time) against the default candidate search (faiss centroids, centroid interaction, MaxSim on the
  candidates' tokens in probed centroids), interleaved query by query, one BLAS thread each, CPU and wall time, and the ratio;
- candidate search on every query: nDCG@10, recall@100 agreement with brute force (the share of brute
  force's top 100 that it also returns in its top 100, averaged over queries), CPU ms per query; with
  ``--grid`` also the other settings of :data:`GRID` (centroids, ``nprobe``, ``candidates``) and the one that
  :func:`choose` picks from them (how the defaults were chosen: run it on ``train``);
- sizes: float32 token vectors, what the index stores (int8; float16 computed), the ratio, bytes on disk.

Threads: torch ``--threads`` (encoding only), faiss and BLAS 1 in every timed part. ``--cache DIR`` keeps
the encodings as .npy files between runs (documents once, queries per split; for development; a run without
it encodes everything, a couple of minutes on two cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
# (centroids per sqrt(tokens), nprobe, candidates): the settings the defaults are chosen from. Factor 4 (4,096
# centroids on SciFact) is the third session's grid, factor 1 (1,024) the second session's
# (eval/results/late.md); the grid was first run on the test queries and is now run on train.
GRID = [
    (4, 32, 1024), (4, 64, 768), (4, 96, 512), (4, 128, 384), (4, 128, 448), (4, 128, 512), (4, 128, 768), (4, 192, 384),
    (1, 4, 256), (1, 32, 256), (1, 32, 512), (1, 32, 768), (1, 16, 1024), (1, 32, 1024), (1, 64, 1024),
]
BRUTE_QUERIES = 30
# Issue 3's target for candidate search: keep this share of brute-force MaxSim's top 100 ...
RECALL_TARGET = 0.95
# ... at this many times its speed (CPU time, one thread).
SPEED_TARGET = 10.0
# The choice keeps a margin over both targets, because the defaults must meet them on queries they were not
# chosen on (recall) and under other load (grid rows are timed one after another, so they carry the load's
# drift, about 10-20% in earlier runs). Applied to the earlier test-query grid, this rule picks the setting
# chosen there by hand (4,096 centroids, nprobe 128, 512 candidates).
RECALL_MARGIN = 0.01
SPEED_MARGIN = 1.2


def _flatten(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    dim = next(a.shape[1] for a in arrays if a.size)
    return np.concatenate([a.reshape(-1, dim) for a in arrays]), lengths


def _split(flat: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    return np.split(flat, np.cumsum(lengths)[:-1])


def encode(encoder, texts: list[str], query: bool, cache: Path | None, stem: str) -> tuple[list[np.ndarray], float]:
    """Token vectors of ``texts`` (from ``cache`` when present there) and the seconds encoding took."""
    if cache is not None and (cache / f"{stem}.npy").is_file():
        flat, lengths = np.load(cache / f"{stem}.npy"), np.load(cache / f"{stem}-lengths.npy")
        if len(lengths) == len(texts):
            return _split(flat.astype(np.float32), lengths), float("nan")
    started = time.perf_counter()
    vectors = encoder.encode_queries(texts) if query else encoder.encode_documents(texts)
    seconds = time.perf_counter() - started
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        flat, lengths = _flatten(vectors)
        np.save(cache / f"{stem}.npy", flat)
        np.save(cache / f"{stem}-lengths.npy", lengths)
    return vectors, seconds


def _recall_agreement(ours: list[list[tuple[int, float]]], reference: list[list[tuple[int, float]]], depth: int = 100) -> float:
    """Mean over queries of |ours top depth ∩ reference top depth| / |reference top depth|."""
    shares = []
    for mine, ref in zip(ours, reference):
        ref_rows = {r for r, _ in ref[:depth]}
        if ref_rows:
            shares.append(len(ref_rows & {r for r, _ in mine[:depth]}) / len(ref_rows))
    return float(np.mean(shares)) if shares else 0.0


def _metrics(index, query_ids: list[str], ranked: list[list[tuple[int, float]]], qrels) -> dict[str, float]:
    from eval.metrics import evaluate_run, hits_to_run
    from rag.types import Hit

    hits = [[Hit(chunk=index._chunks[r], score=s, source="bench") for r, s in row] for row in ranked]
    return evaluate_run(hits_to_run(query_ids, hits), qrels)


def _time_per_query(function, queries: list[np.ndarray]) -> tuple[list, float]:
    results, started = [], time.perf_counter()
    for q in queries:
        results.append(function(q))
    return results, (time.perf_counter() - started) / max(len(queries), 1)


def _brute_force_one(tokens: np.ndarray, starts: np.ndarray, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Direct brute-force MaxSim for one query over all float32 token vectors (the reference's speed)."""
    scores = np.maximum.reduceat(query @ tokens.T, starts, axis=1).sum(axis=0)
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return [(int(r), float(scores[r])) for r in top]


def choose(rows: list[dict]) -> tuple[dict | None, str]:
    """The grid row the defaults take, and why: among rows with recall@100 against brute force at least
    ``RECALL_TARGET + RECALL_MARGIN`` and a speed-up at least ``SPEED_TARGET * SPEED_MARGIN``, the highest
    recall (ties: the faster); without such a row, the same among rows that meet the bare targets."""
    for recall, speed, label in (
        (RECALL_TARGET + RECALL_MARGIN, SPEED_TARGET * SPEED_MARGIN, "with margin"),
        (RECALL_TARGET, SPEED_TARGET, "without margin"),
    ):
        kept = [r for r in rows if r["recall"] >= recall and r["speedup"] >= speed]
        if kept:
            best = max(kept, key=lambda r: (r["recall"], -r["ms"]))
            return best, f"highest recall among rows with recall >= {recall:.2f} and speed-up >= {speed:.0f}x ({label})"
    return None, f"no row keeps {RECALL_TARGET} of brute force's top 100 at {SPEED_TARGET:.0f}x its speed"


def _disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BEIR-layout folder (default: ../shared/data/scifact)")
    parser.add_argument("--split", default="train",
                        help="qrels split whose queries are searched (default: train, the split the defaults are chosen on)")
    parser.add_argument("--cache", type=Path, help="keep token encodings in this folder between runs")
    parser.add_argument("--grid", action="store_true", help="also try the other settings of GRID and print the one chosen")
    parser.add_argument("--nlist", type=int,
                        help="centroids of the index timed against brute force (default: the index's default_nlist)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for encoding (default 2)")
    parser.add_argument("--timed-queries", type=int, default=BRUTE_QUERIES,
                        help=f"queries timed for brute force against candidate search (default {BRUTE_QUERIES})")
    args = parser.parse_args(argv)

    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(1)
    from eval.beir import load_beir
    from eval.metrics import evaluate_run, hits_to_run
    from indexes.late import (
        CENTROIDS_PER_SQRT_TOKEN, LateInteractionIndex, LateRerankIndex, TokenEncoder, default_nlist, text_of,
    )
    from indexes.late.store import TokenStore
    from rag.registry import build

    dataset = load_beir(args.data, args.split)

    def target(value: float) -> str:
        # Issue 3's targets are SciFact test figures (from published runs); other splits have none.
        return f" (target {value} +- 0.005)" if args.split == "test" and dataset.name == "scifact" else ""

    chunks = build("chunker", "document").chunk_many(dataset.corpus)
    query_ids = list(dataset.queries)
    query_texts = [dataset.queries[q] for q in query_ids]
    encoder = TokenEncoder("minilm")
    docs, doc_seconds = encode(encoder, [text_of(c) for c in chunks], False, args.cache, "docs")
    queries, query_seconds = encode(encoder, query_texts, True, args.cache, f"queries-{args.split}")
    n_tokens = sum(len(d) for d in docs)
    print(f"{dataset.name}: {len(chunks)} documents, {n_tokens} document token vectors, {len(queries)} queries of split "
          f"{args.split!r}; "
          f"encoding {doc_seconds:.0f} s documents, {query_seconds:.1f} s queries (nan: read from --cache)", flush=True)

    # 1. BM25 flat top 100 reranked by MaxSim.
    rerank = LateRerankIndex()
    started = time.perf_counter()
    rerank.add_encoded(chunks, docs)
    rerank_build = time.perf_counter() - started
    started = time.perf_counter()
    reranked = rerank.search_encoded(query_texts, queries, 100)
    rerank_seconds = time.perf_counter() - started
    rerank_metrics = evaluate_run(hits_to_run(query_ids, reranked), dataset.qrels)
    print(f"BM25 flat top 100 + MaxSim: nDCG@10 {rerank_metrics['ndcg@10']:.4f}{target(0.716)}, "
          f"recall@100 {rerank_metrics['recall@100']:.4f}, mrr@10 {rerank_metrics['mrr@10']:.4f}; "
          f"BM25 indexing {rerank_build:.1f} s, search {len(queries) / rerank_seconds:.1f} queries/s", flush=True)
    del rerank

    # 2. The late index: int8 token vectors, centroids, lists.
    index = LateInteractionIndex(nlist=args.nlist)
    started = time.perf_counter()
    index.add_encoded(chunks, docs)
    print(f"late index (int8): centroids + assignment + lists {time.perf_counter() - started:.1f} s, "
          f"nlist {len(index._centroids)}", flush=True)

    # 3. Sizes.
    mb = 1 / 2 ** 20
    f16_bytes = index.stored_bytes - index._store.tokens.nbytes - index._store.scales.nbytes + n_tokens * index._store.dimension * 2
    with tempfile.TemporaryDirectory(prefix="bench-late-") as tmp:
        index.save(Path(tmp) / "late")
        disk = _disk_bytes(Path(tmp) / "late")
    print(f"size: float32 token vectors {index.token_bytes_float32 * mb:.0f} MiB; the int8 index stores "
          f"{index.stored_bytes * mb:.0f} MiB (ratio {index.compression_ratio():.2f}), {disk * mb:.0f} MiB on disk "
          f"with chunks.jsonl; float16 storage would be {f16_bytes * mb:.0f} MiB "
          f"(ratio {index.token_bytes_float32 / f16_bytes:.2f})", flush=True)
    # 4. Speed: brute force as a direct implementation runs it (all float32 token vectors in memory, one query
    # at a time) against candidate search, interleaved query by query so that machine load hits both alike,
    # one BLAS thread each. CPU time is reported beside wall time: this machine is shared.
    flat = np.concatenate([d for d in docs if len(d)]).astype(np.float32)
    lengths = np.array([len(d) for d in docs])
    if (lengths == 0).any():
        raise SystemExit("a document without tokens: the direct brute force below assumes none")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    sample = queries[: args.timed_queries]
    wall = {"brute": 0.0, "candidates": 0.0}
    cpu = {"brute": 0.0, "candidates": 0.0}
    with threadpool_limits(1):
        index._rank_one(sample[0], 100, index.nprobe, index.candidates)  # warm
        for q in sample:
            for name, run in (
                ("brute", lambda: _brute_force_one(flat, starts, q, 100)),
                ("candidates", lambda: index._rank_one(q, 100, index.nprobe, index.candidates)),
            ):
                w, c = time.perf_counter(), time.process_time()
                run()
                wall[name] += time.perf_counter() - w
                cpu[name] += time.process_time() - c
    flat = np.zeros((0, 1), np.float32)  # free the float32 copy
    n = len(sample)
    print(f"brute force (float32, direct) {cpu['brute'] / n * 1000:.0f} ms CPU/query ({wall['brute'] / n * 1000:.0f} ms wall); "
          f"candidate search (nprobe {index.nprobe}, candidates {index.candidates}) {cpu['candidates'] / n * 1000:.1f} ms "
          f"CPU/query ({wall['candidates'] / n * 1000:.1f} ms wall): {cpu['brute'] / cpu['candidates']:.1f}x by CPU time, "
          f"{wall['brute'] / wall['candidates']:.1f}x by wall time ({n} {args.split} queries, 1 thread, interleaved)", flush=True)

    # 5. Brute-force MaxSim over every document (the reference), batched over queries.
    started = time.perf_counter()
    brute = index.rank(queries, 100, exhaustive=True)
    brute_metrics = _metrics(index, query_ids, brute, dataset.qrels)
    print(f"exhaustive MaxSim (int8): nDCG@10 {brute_metrics['ndcg@10']:.4f}{target(0.712)}, "
          f"recall@100 {brute_metrics['recall@100']:.4f}, mrr@10 {brute_metrics['mrr@10']:.4f}; "
          f"{time.perf_counter() - started:.0f} s for all queries", flush=True)
    # float16 and float32 storage on the same top 100 (a document outside int8's top 100 cannot reach the top 10).
    for storage in ("float16", "float32"):
        store = TokenStore("float16").extended(docs) if storage == "float16" else None
        rescored = []
        for q, row in zip(queries, brute):
            rows = np.array([r for r, _ in row], dtype=np.int64)
            if store is not None:
                scores = store.scores(q, rows)
            else:
                scores = np.array([float((q @ docs[r].T).max(axis=1).sum()) for r in rows], dtype=np.float32)
            order = np.lexsort((rows, -scores))
            rescored.append([(int(rows[i]), float(scores[i])) for i in order])
        ndcg = _metrics(index, query_ids, rescored, dataset.qrels)["ndcg@10"]
        print(f"exhaustive MaxSim ({storage}, top 100 rescored): nDCG@10 {ndcg:.4f}", flush=True)
        del store

    # 6. Candidate search on every query: agreement with brute force, quality, CPU time per query; the timed
    # index's own setting first, then the grid, one index per centroid count (built when its rows come up).
    settings = [(len(index._centroids), index.nprobe, index.candidates)]
    if args.grid:
        settings += [(default_nlist(n_tokens, factor), nprobe, candidates) for factor, nprobe, candidates in GRID]
        settings = list(dict.fromkeys(settings))
    print(f"\ncandidate search, {len(queries)} {args.split} queries (speed-up: brute force's {cpu['brute'] / n * 1000:.0f} ms "
          f"CPU/query above over the row's; rows timed one after another)", flush=True)
    print("nlist nprobe candidates  ndcg@10  recall@100-vs-brute  ms-CPU/query  speedup-vs-brute(CPU)", flush=True)
    brute_cpu = cpu["brute"] / n
    rows = []
    for nlist in dict.fromkeys(s[0] for s in settings):
        if nlist != len(index._centroids):
            del index
            index = LateInteractionIndex(nlist=nlist)
            started = time.perf_counter()
            index.add_encoded(chunks, docs)
            print(f"  (late index with {nlist} centroids built in {time.perf_counter() - started:.1f} s)", flush=True)
        with threadpool_limits(1):
            for _, nprobe, candidates in (s for s in settings if s[0] == nlist):
                c = time.process_time()
                ranked = [index._rank_one(q, 100, nprobe, candidates) for q in queries]
                seconds = (time.process_time() - c) / len(queries)
                row = {"nlist": nlist, "nprobe": nprobe, "candidates": candidates, "ms": seconds * 1000,
                       "recall": _recall_agreement(ranked, brute), "speedup": brute_cpu / seconds,
                       "ndcg": _metrics(index, query_ids, ranked, dataset.qrels)["ndcg@10"]}
                rows.append(row)
                print(f"{nlist:5d} {nprobe:6d} {candidates:10d}  {row['ndcg']:.4f}   {row['recall']:.4f}              "
                      f"{row['ms']:8.1f}      {row['speedup']:5.1f}x", flush=True)
    if args.grid:
        chosen, why = choose(rows)
        if chosen is None:
            print(f"\nchosen on {args.split}: none ({why})", flush=True)
        else:
            factor = next(f for f, p, c in GRID if (default_nlist(n_tokens, f), p, c)
                          == (chosen["nlist"], chosen["nprobe"], chosen["candidates"]))
            print(f"\nchosen on {args.split}: {chosen['nlist']} centroids ({factor} per sqrt(tokens); default "
                  f"{CENTROIDS_PER_SQRT_TOKEN}), nprobe {chosen['nprobe']}, candidates {chosen['candidates']}: recall@100 "
                  f"{chosen['recall']:.4f}, {chosen['speedup']:.1f}x, nDCG@10 {chosen['ndcg']:.4f} ({why})", flush=True)

    return 0


if __name__ == "__main__":
    raise SystemExit(main())
