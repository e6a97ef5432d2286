"""Chunking throughput: perplexity chunking (SmolLM2-135M) on each engine against semantic chunking, in one run.

    python -m bench.chunking [--data ../shared/data/squad-v1.1-dev] [--words 10000] [--repeats 1]
                             [--chunkers semantic,perplexity] [--params JSON]
                             [--engines transformers:float32,transformers:bfloat16,llama.cpp]

One document of ``--words`` words is built by joining SQuAD paragraphs (corpus order) with blank lines.
Every chunker is built with the evaluation's parameters (``eval.chunking.EVAL_PARAMS``); the chunkers that
run an LM (perplexity, margin) are built once per engine of ``--engines`` (the first is the baseline).
Each is warmed up on a short text (models load outside the timing), then times ``chunk(document)``; with
``--repeats`` the order alternates, so that a change in machine load hits every chunker alike. Torch uses
2 threads. Prints seconds, characters/s and words/s per chunker; for the LM chunkers on the other engines
their time against the baseline engine's and how many of the baseline's chunk boundaries they keep; the
perplexity/semantic time ratio (the paper reports 45.8% on GPU, against similarity chunking with a larger
embedding model), and whether the perplexity chunker handled the document in under two minutes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rag.types import Document

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad-v1.1-dev"
TARGET_SECONDS = 120.0
ENGINES = ("transformers:float32", "transformers:bfloat16", "llama.cpp")
LM_CHUNKERS = ("perplexity", "margin")


def build_document(data_dir: str | Path, words: int) -> Document:
    """Paragraphs of ``data_dir/corpus.jsonl`` in order, joined by blank lines, until ``words`` words."""
    from rag.io import read_documents

    texts: list[str] = []
    count = 0
    for paragraph in read_documents(Path(data_dir) / "corpus.jsonl"):
        texts.append(paragraph.text)
        count += len(paragraph.text.split())
        if count >= words:
            break
    return Document(text="\n\n".join(texts), id=f"bench-{words}-words")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chunking", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="QA/BEIR folder whose corpus.jsonl gives the text")
    parser.add_argument("--words", type=int, default=10_000, help="document length in words (default 10000)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per chunker (default 1)")
    parser.add_argument("--chunkers", default="semantic,perplexity", help="registered chunkers (default semantic,perplexity)")
    parser.add_argument("--params", type=json.loads, default=None, metavar="JSON", help="per-chunker parameter overrides")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help=f"engines for the LM chunkers, the first the baseline (default {','.join(ENGINES)})")
    args = parser.parse_args(argv)

    import os

    import torch

    torch.set_num_threads(args.threads)
    from eval.chunking import EVAL_PARAMS, SIZE_TOKENIZER, WARM_UP
    from rag.text import token_starts_many
    from rag.registry import build

    doc = build_document(args.data, args.words)
    words = len(doc.text.split())
    overrides = args.params or {}
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    # (label, registered name, extra parameters): the LM chunkers once per engine, labelled "name [engine]".
    runs = []
    for name in (n.strip() for n in args.chunkers.split(",") if n.strip()):
        if name in LM_CHUNKERS:
            runs += [(f"{name} [{engine}]", name, {"engine": engine}) for engine in engines]
        else:
            runs.append((name, name, {}))
    names = [label for label, _, _ in runs]
    chunkers = {label: build("chunker", {"type": name, "params": {**EVAL_PARAMS.get(name, {}), **overrides.get(name, {}),
                                                                 **extra}})
                for label, name, extra in runs}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"document: {words} words, {len(doc.text):,} characters; torch threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} CPUs, load average {load:.1f} at start"
    )
    for name, chunker in chunkers.items():
        started = time.perf_counter()
        chunker.chunk(WARM_UP)
        print(f"  {name}: models loaded and warmed up in {time.perf_counter() - started:.1f} s ({chunker!r})")

    seconds = {name: 0.0 for name in names}
    results = {}
    for repeat in range(args.repeats):
        order = names if repeat % 2 == 0 else names[::-1]
        for name in order:
            started = time.perf_counter()
            results[name] = chunkers[name].chunk(doc)
            seconds[name] += time.perf_counter() - started

    print("\n| chunker | seconds | chars/s | words/s | chunks | mean tokens | x baseline engine time | baseline's boundaries kept |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, name, extra in runs:
        per_run = seconds[label] / args.repeats
        chunks = results[label]
        mean_tokens = sum(map(len, token_starts_many(SIZE_TOKENIZER, [c.text for c in chunks]))) / max(len(chunks), 1)
        ratio = kept = "-"
        baseline = f"{name} [{engines[0]}]"
        if extra and label != baseline:
            ratio = f"{seconds[label] / seconds[baseline]:.2f}"
            ours, theirs = {c.start for c in chunks}, {c.start for c in results[baseline]}
            kept = f"{len(ours & theirs) / max(len(theirs), 1):.1%}"
        print(
            f"| {label} | {per_run:.1f} | {len(doc.text) / per_run:,.0f} | {words / per_run:,.0f} | "
            f"{len(chunks)} | {mean_tokens:.1f} | {ratio} | {kept} |"
        )
    perplexity = f"perplexity [{engines[0]}]"
    if perplexity in seconds and "semantic" in seconds:
        ratio = seconds[perplexity] / seconds["semantic"]
        print(f"\n{perplexity} / semantic time: {ratio:.2f}x (paper, GPU: Meta-Chunking at 0.458x of similarity chunking)")
    for label in names:
        if label.startswith("perplexity"):
            per_run = seconds[label] / args.repeats
            verdict = "OK" if per_run < TARGET_SECONDS else "OVER TARGET"
            print(f"{label} chunking of a {words}-word document: {per_run:.1f} s (target < {TARGET_SECONDS:.0f} s: {verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
