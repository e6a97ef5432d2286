"""Encoder dtype: bfloat16 against float32 for the dense index, in one run (throughput and retrieval quality).

    python -m eval.bench_encoders [--data ../shared/data/scifact] [--split test] [--limit N] [--block 128]
                                  [--threads 2]

Encodes the corpus (``title + " " + text``, as the dense index does) with the MiniLM pack in float32 and in
bfloat16, in alternating blocks so that a change in machine load hits both alike, and reports documents
per second for each and their ratio. Then it searches both sets of vectors exactly (inner product; the
queries encoded in the same dtype as the documents) and reports nDCG@10, Recall@100 and MRR@10 for each
on the split named, plus the cosine between the two embeddings of each document. bfloat16 becomes the
dense index's default only if nDCG@10 stays within 0.002 of float32's (issue 19). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
QUALITY_TOLERANCE = 0.002


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.bench_encoders", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BEIR-layout data set (default: SciFact)")
    parser.add_argument("--split", default="test", help="queries to score (default: test)")
    parser.add_argument("--limit", type=int, help="use only the first N documents (quality is then not comparable)")
    parser.add_argument("--block", type=int, default=128, help="documents per alternating block (default: 128)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--model", default="minilm", help="model pack, path or hub id (default: minilm)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from eval.beir import load_beir
    from eval.metrics import evaluate_run
    from rag.encoders import SentenceEncoder

    torch.set_num_threads(args.threads)
    data = load_beir(args.data, split=args.split)
    docs = data.corpus[: args.limit]
    texts = [f"{d.title} {d.text}" if d.title else d.text for d in docs]
    encoders = {dtype: SentenceEncoder(args.model, dtype=dtype) for dtype in ("float32", "bfloat16")}
    for encoder in encoders.values():  # load and warm up outside the timed blocks
        encoder.encode_documents(texts[:64])
    vectors = {dtype: [] for dtype in encoders}
    seconds = {dtype: 0.0 for dtype in encoders}
    order = list(encoders)
    for number, begin in enumerate(range(0, len(texts), args.block)):
        block = texts[begin:begin + args.block]
        for dtype in order if number % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            vectors[dtype].append(encoders[dtype].encode_documents(block))
            seconds[dtype] += time.perf_counter() - started
    matrices = {dtype: np.concatenate(parts) for dtype, parts in vectors.items()}
    a, b = matrices["float32"], matrices["bfloat16"]
    cosines = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    query_ids = list(data.queries)
    results = {}
    for dtype, matrix in matrices.items():
        queries = encoders[dtype].encode_queries([data.queries[q] for q in query_ids])
        scores = queries @ matrix.T
        top = np.argsort(-scores, axis=1)[:, :100]
        run = {qid: {docs[j].id: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(query_ids)}
        results[dtype] = {"docs_per_second": len(texts) / seconds[dtype], **evaluate_run(run, data.qrels)}
    ratio = results["bfloat16"]["docs_per_second"] / results["float32"]["docs_per_second"]
    loss = results["float32"]["ndcg@10"] - results["bfloat16"]["ndcg@10"]
    print(f"{len(texts)} documents, {len(query_ids)} {args.split} queries, {args.threads} threads, model {args.model}")
    print(f"{'dtype':<10}{'docs/s':>9}{'nDCG@10':>9}{'R@100':>8}{'MRR@10':>8}")
    for dtype, row in results.items():
        print(f"{dtype:<10}{row['docs_per_second']:>9.1f}{row['ndcg@10']:>9.4f}{row['recall@100']:>8.4f}{row['mrr@10']:>8.4f}")
    print(f"bfloat16 / float32 throughput: {ratio:.2f}x; nDCG@10 loss {loss:+.4f} (tolerance {QUALITY_TOLERANCE}); "
          f"cosine to float32: min {cosines.min():.4f}, mean {cosines.mean():.4f}")
    verdict = "bfloat16 keeps quality" if loss <= QUALITY_TOLERANCE else "bfloat16 loses quality: float32 stays"
    print(verdict)
    print(json.dumps({"documents": len(texts), "queries": len(query_ids), "split": args.split, "threads": args.threads,
                      "model": args.model, "results": results, "throughput_ratio": ratio, "ndcg_loss": loss,
                      "cosine_min": float(cosines.min()), "cosine_mean": float(cosines.mean()),
                      "keeps_quality": loss <= QUALITY_TOLERANCE}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
