"""Indexing throughput: specrag's dense indexing path against sentence-transformers called directly.

    python -m bench.indexing [--data ../shared/data/scifact] [--limit N] [--block 128] [--repeats 1]

Both sides encode the same texts (``title + " " + text``) with the same model, batch size 64 and
normalisation. (a) is ``SentenceTransformer.encode`` on prebuilt texts; (b) is the whole pipeline path:
the "document" chunker, then ``DenseIndex.add`` (text assembly, encoding, faiss add) into one index.
Threads are fixed (torch 2, faiss 1). Both are warmed up first, then the corpus is processed in blocks,
alternating which side goes first, so that a change in machine load hits both sides alike. The last line
is the ratio pipeline / direct (higher is better; the target is at least 0.90).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from eval.beir import load_beir
from rag.registry import build
from rag.types import Document

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
TARGET = 0.90
WARM_UP = 64


def _direct(model: object, texts: list[str], batch_size: int) -> float:
    started = time.perf_counter()
    model.encode(texts, batch_size=batch_size, normalize_embeddings=True)  # type: ignore[attr-defined]
    return time.perf_counter() - started


def _pipeline(chunker: object, index: object, docs: list[Document]) -> float:
    started = time.perf_counter()
    index.add(chunker.chunk_many(docs))  # type: ignore[attr-defined]
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.indexing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BEIR-layout data set (default: SciFact)")
    parser.add_argument("--limit", type=int, help="use only the first N documents")
    parser.add_argument("--block", type=int, default=128, help="documents per alternating block (default: 128)")
    parser.add_argument("--repeats", type=int, default=1, help="passes over the corpus per side (default: 1)")
    parser.add_argument("--model", default="minilm", help="model pack, path or hub id (default: minilm)")
    args = parser.parse_args(argv)

    import faiss
    import torch

    # Explicit, as STACK.md asks for benchmarks: two faiss threads competing with torch's are slower.
    torch.set_num_threads(2)
    faiss.omp_set_num_threads(1)

    from indexes.dense import DenseIndex
    from rag.encoders import load_sentence_transformer, resolve_model_path

    docs = load_beir(args.data).corpus[: args.limit]
    texts = [f"{d.title} {d.text}" if d.title else d.text for d in docs]
    path = resolve_model_path(args.model)
    model = load_sentence_transformer(path)  # the pipeline shares this model through the same cache
    chunker = build("chunker", "document")
    print(f"{len(docs)} documents from {args.data}; model {args.model} ({path}); torch threads 2, faiss threads 1")

    _direct(model, texts[:WARM_UP], 64)
    _pipeline(chunker, DenseIndex(args.model), docs[:WARM_UP])

    direct_seconds = pipeline_seconds = 0.0
    for repeat in range(args.repeats):
        index = DenseIndex(args.model)
        for number, start in enumerate(range(0, len(docs), args.block)):
            block_docs, block_texts = docs[start : start + args.block], texts[start : start + args.block]
            if (number + repeat) % 2 == 0:
                direct_seconds += _direct(model, block_texts, 64)
                pipeline_seconds += _pipeline(chunker, index, block_docs)
            else:
                pipeline_seconds += _pipeline(chunker, index, block_docs)
                direct_seconds += _direct(model, block_texts, 64)
        assert len(index) == len(docs)

    total = len(docs) * args.repeats
    direct_rate, pipeline_rate = total / direct_seconds, total / pipeline_seconds
    print(f"direct sentence-transformers: {direct_rate:8.2f} docs/s ({direct_seconds:.1f} s)")
    print(f"specrag chunker + DenseIndex: {pipeline_rate:8.2f} docs/s ({pipeline_seconds:.1f} s)")
    ratio = pipeline_rate / direct_rate
    verdict = "OK" if ratio >= TARGET else "BELOW TARGET"
    print(f"ratio pipeline/direct: {ratio:.3f} (target >= {TARGET:.2f}: {verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
