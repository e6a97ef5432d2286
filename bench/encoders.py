"""Encoder dtype: bfloat16 against float32 for one encoder, in one run (throughput and retrieval quality).

    python -m bench.encoders [--encoder dense|late|splade] [--data ../shared/data/scifact]
                             [--splits test,train] [--limit N] [--block 128] [--threads 2]

Encodes the corpus (``title + " " + text``, as the indexes do) with the encoder (``dense``: MiniLM
sentence vectors; ``late``: MiniLM token vectors, as the late index stores them before compression;
``splade``: the splade-tiny term weights) in float32 and in bfloat16, in alternating blocks so that a
change in machine load hits both alike, and reports documents per second for each and their ratio. Then
it searches both encodings exactly (dense: inner product; late: MaxSim over every document; splade: the
sparse dot product, before the index's integer quantisation), the queries encoded in the same dtype as
the documents, and reports nDCG@10, Recall@100 and MRR@10 on each split named, plus the cosine between
the two encodings of each document. A bfloat16 default needs nDCG@10 within 0.002 of float32's on the
**train** split (the split that chooses defaults; test is reported) (issue 19). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
QUALITY_TOLERANCE = 0.002


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.encoders", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BEIR-layout data set (default: SciFact)")
    parser.add_argument("--encoder", choices=("dense", "late", "splade"), default="dense",
                        help="the encoder compared (default: dense)")
    parser.add_argument("--splits", default="test,train", help="query splits to score (default: test,train)")
    parser.add_argument("--limit", type=int, help="use only the first N documents (quality is then not comparable)")
    parser.add_argument("--block", type=int, default=128, help="documents per alternating block (default: 128)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--model", help="model pack, path or hub id (default: minilm; splade-tiny for splade)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from eval.beir import load_beir
    from eval.metrics import evaluate_run

    torch.set_num_threads(args.threads)
    splits = args.splits.split(",")
    data = {split: load_beir(args.data, split=split) for split in splits}
    docs = data[splits[0]].corpus[: args.limit]
    texts = [f"{d.title} {d.text}" if d.title else d.text for d in docs]
    model = args.model or DEFAULT_MODELS[args.encoder]
    encoders = {dtype: make_encoder(args.encoder, model, dtype) for dtype in ("float32", "bfloat16")}
    for encoder in encoders.values():  # load and warm up outside the timed blocks
        encoder.encode_documents(texts[:64])
    parts: dict[str, list] = {dtype: [] for dtype in encoders}
    seconds = {dtype: 0.0 for dtype in encoders}
    order = list(encoders)
    for number, begin in enumerate(range(0, len(texts), args.block)):
        block = texts[begin:begin + args.block]
        for dtype in order if number % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            parts[dtype].append(encoders[dtype].encode_documents(block))
            seconds[dtype] += time.perf_counter() - started
    encoded = {dtype: join(args.encoder, blocks) for dtype, blocks in parts.items()}
    cosines = cosine_per_document(args.encoder, encoded["float32"], encoded["bfloat16"])
    results: dict[str, dict] = {dtype: {"docs_per_second": len(texts) / seconds[dtype]} for dtype in encoders}
    for split, dataset in data.items():
        query_ids = list(dataset.queries)
        for dtype, corpus in encoded.items():
            queries = encoders[dtype].encode_queries([dataset.queries[q] for q in query_ids])
            scores = score(args.encoder, queries, corpus)
            top = np.argsort(-scores, axis=1)[:, :100]
            run = {qid: {docs[j].id: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(query_ids)}
            results[dtype][split] = evaluate_run(run, dataset.qrels)
    ratio = results["bfloat16"]["docs_per_second"] / results["float32"]["docs_per_second"]
    loss = {split: results["float32"][split]["ndcg@10"] - results["bfloat16"][split]["ndcg@10"] for split in splits}
    deciding = "train" if "train" in splits else splits[0]
    print(f"{args.encoder} encoder, model {model}: {len(texts)} documents, {args.threads} threads")
    print(f"{'dtype':<10}{'docs/s':>9}" + "".join(f"{split + ' nDCG@10':>16}{'R@100':>8}{'MRR@10':>8}" for split in splits))
    for dtype, row in results.items():
        print(f"{dtype:<10}{row['docs_per_second']:>9.1f}" + "".join(
            f"{row[s]['ndcg@10']:>16.4f}{row[s]['recall@100']:>8.4f}{row[s]['mrr@10']:>8.4f}" for s in splits))
    print(f"bfloat16 / float32 throughput: {ratio:.2f}x; nDCG@10 loss " +
          ", ".join(f"{split} {value:+.4f}" for split, value in loss.items()) +
          f" (tolerance {QUALITY_TOLERANCE}, decided on {deciding}); cosine to float32: min {cosines.min():.4f}, "
          f"mean {cosines.mean():.4f}")
    keeps = loss[deciding] <= QUALITY_TOLERANCE
    print("bfloat16 keeps quality" if keeps else "bfloat16 loses quality: float32 stays")
    print(json.dumps({"encoder": args.encoder, "model": model, "documents": len(texts), "splits": splits,
                      "threads": args.threads, "results": results, "throughput_ratio": ratio, "ndcg_loss": loss,
                      "decided_on": deciding, "cosine_min": float(cosines.min()),
                      "cosine_mean": float(cosines.mean()), "keeps_quality": keeps}))
    return 0


DEFAULT_MODELS = {"dense": "minilm", "late": "minilm", "splade": "splade-tiny"}


def make_encoder(kind: str, model: str, dtype: str) -> Any:
    """The encoder of ``kind`` in ``dtype``, progress bars off."""
    if kind == "dense":
        from rag.encoders import SentenceEncoder

        return SentenceEncoder(model, dtype=dtype)
    if kind == "late":
        from indexes.late import TokenEncoder

        return TokenEncoder(model, dtype=dtype, show_progress=False)
    from indexes.splade_encoder import SpladeEncoder

    return SpladeEncoder(model, dtype=dtype, show_progress=False)


def join(kind: str, blocks: list) -> Any:
    """One encoding of the corpus from the blocks': a matrix (dense, splade) or a list of token matrices (late)."""
    import numpy as np

    if kind == "dense":
        return np.concatenate(blocks)
    if kind == "late":
        return [vectors for block in blocks for vectors in block]
    from scipy import sparse

    return sparse.vstack(blocks, format="csr")


def cosine_per_document(kind: str, a: Any, b: Any) -> Any:
    """The cosine between each document's two encodings (late: of its token vectors, averaged)."""
    import numpy as np

    if kind == "late":
        return np.array([float((x * y).sum(axis=1).mean()) if len(x) else 1.0 for x, y in zip(a, b)])
    if kind == "splade":
        dots = np.asarray(a.multiply(b).sum(axis=1)).ravel()
        norms = np.sqrt(np.asarray(a.multiply(a).sum(axis=1)).ravel() * np.asarray(b.multiply(b).sum(axis=1)).ravel())
        return dots / np.maximum(norms, 1e-12)
    return (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def score(kind: str, queries: Any, corpus: Any) -> Any:
    """Exact scores, one row per query and one column per document."""
    import numpy as np

    if kind == "dense":
        return queries @ corpus.T
    if kind == "splade":
        return np.asarray((queries @ corpus.T).todense())
    from indexes.late.scoring import segment_maxsim

    tokens = np.concatenate([d for d in corpus if len(d)]).astype(np.float32)
    lengths = np.array([len(d) for d in corpus], dtype=np.int64)
    return np.stack([segment_maxsim(query, tokens, lengths) for query in queries])


if __name__ == "__main__":
    raise SystemExit(main())
