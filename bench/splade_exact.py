"""SPLADE through the Lucene impact index against an exact sparse dot product (scipy), on the same encodings.

    .venv/bin/python -m bench.splade_exact --data ../shared/data/scifact [--limit N] [--out result.json]

Encodes the corpus (one chunk per document, title + " " + text, as ``specrag eval retrieval --index splade``)
and the queries once with :class:`indexes.splade_encoder.SpladeEncoder`, then scores three runs of the top 100
documents per query (ties by document id):

- ``exact``: scipy dot products of the unquantised float weights (the reference);
- ``exact_quantised``: scipy dot products of the integer weights the index holds (``round(w * scale)``);
- ``impact``: a :class:`indexes.splade.SpladeIndex` (real Lucene impact index) given the same quantised
  document vectors, searched with its own (quantised) query encodings.

Prints one JSON object: the three metric sets, their nDCG@10 differences, timings and the saved index's size.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from eval.beir import load_beir
from eval.metrics import evaluate_run, hits_to_run
from rag.registry import build


def exact_run(
    queries: Any, documents: Any, doc_ids: list[str], query_ids: list[str], k: int
) -> dict[str, dict[str, float]]:
    """Top ``k`` documents by exact dot product (only positive scores: what an inverted index can match)."""
    scores = (queries @ documents.T).toarray().astype(np.float64)
    order_ids = np.asarray(doc_ids)
    run: dict[str, dict[str, float]] = {}
    for qid, row in zip(query_ids, scores):
        positive = np.flatnonzero(row > 0)
        # Best first, ties by document id (as the index breaks them).
        ranked = sorted(positive.tolist(), key=lambda j: (-row[j], order_ids[j]))[:k]
        run[qid] = {doc_ids[j]: float(row[j]) for j in ranked}
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument(
        "--limit", type=int, help="only the first N queries, their judged documents and 25 others per query"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", help="also write the JSON result here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from indexes.splade import SpladeIndex
    from indexes.splade_encoder import quantize

    dataset = load_beir(args.data, args.split)
    if args.limit is not None:
        dataset = dataset.subset(args.limit)
    chunks = build("chunker", "document").chunk_many(dataset.corpus)
    query_ids = list(dataset.queries)
    query_texts = [dataset.queries[q] for q in query_ids]
    index = SpladeIndex()
    encoder = index.encoder
    index.warm_up()

    started = time.perf_counter()
    documents = encoder.encode_documents([index.text_of(c) for c in chunks])
    encode_seconds = time.perf_counter() - started
    queries = encoder.encode_queries(query_texts)
    doc_ids = [c.doc_id for c in chunks]

    exact = evaluate_run(exact_run(queries, documents, doc_ids, query_ids, args.k), dataset.qrels)
    quantised_docs, quantised_queries = quantize(documents, index.scale), quantize(queries, index.scale)
    exact_q = evaluate_run(exact_run(quantised_queries, quantised_docs, doc_ids, query_ids, args.k), dataset.qrels)

    started = time.perf_counter()
    index._add_vectors(chunks, quantised_docs)  # the same vectors add() would index, without encoding twice
    lucene_seconds = time.perf_counter() - started
    started = time.perf_counter()
    hits = index.search(query_texts, args.k)
    search_seconds = time.perf_counter() - started
    impact = evaluate_run(hits_to_run(query_ids, hits), dataset.qrels)
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp) / "splade")
        size = sum(p.stat().st_size for p in (Path(tmp) / "splade").rglob("*") if p.is_file())
        lucene_size = sum(p.stat().st_size for p in (Path(tmp) / "splade" / "lucene").iterdir())

    result = {
        "dataset": dataset.name,
        "queries": len(query_ids),
        "documents": len(chunks),
        "scale": index.scale,
        "exact": exact,
        "exact_quantised": exact_q,
        "impact": impact,
        "ndcg@10 impact - exact": round(impact["ndcg@10"] - exact["ndcg@10"], 5),
        "ndcg@10 impact - exact_quantised": round(impact["ndcg@10"] - exact_q["ndcg@10"], 5),
        "document nonzeros per doc (float / quantised)": [
            round(documents.nnz / len(chunks), 1), round(quantised_docs.nnz / len(chunks), 1)
        ],
        "query nonzeros per query (float / quantised)": [
            round(queries.nnz / len(query_ids), 1), round(quantised_queries.nnz / len(query_ids), 1)
        ],
        "encode_seconds": round(encode_seconds, 1),
        "lucene_index_seconds": round(lucene_seconds, 1),
        "search_qps (incl. query encoding)": round(len(query_ids) / search_seconds, 1),
        "saved_index_bytes": size,
        "lucene_bytes": lucene_size,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
