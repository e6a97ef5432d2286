"""Compression speed on a long context: surprisal pruning on each engine against extractive, in one run.

    python -m bench.compression [--data ../shared/data/squad-v1.1-dev] [--tokens 4000] [--repeats 1]
                                [--threads 2] [--rate 3]

The context is SQuAD paragraphs in corpus order, one hit each, until ``--tokens`` tokens of the
generator's tokenizer (the budget's unit). Every compressor is built, warmed up on one short hit (models
load outside the timing), then times ``compress(question, hits)`` at a third of the tokens; with
``--repeats`` the order alternates, so that a change in machine load hits every compressor alike. Each timed
run is a compressor built for it: an instance keeps the scores of the last question and hits it saw, so a
second run on the same instance would time only the selection (milliseconds) and halve the mean. Prints
seconds, tokens/s, the time against fp32 surprisal (the transformers engine in float32, the default) and,
for the other surprisal variants (bfloat16, llama.cpp on the pack's GGUF file, int8), the share of fp32
surprisal's kept words they keep too; then what the scorer's matrix products alone cost
at this CPU's fp32 matrix-multiply rate measured at one of the model's shapes (an estimate of the floor for
fp32 surprisal: the scorer reads every token once through a 135M-parameter model).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from rag.types import Chunk, Hit

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad-v1.1-dev"
QUESTION = "When was the stadium built?"
COMPRESSORS: dict[str, tuple[str, dict[str, Any]]] = {
    "surprisal": ("surprisal", {}),
    "surprisal bf16": ("surprisal", {"engine": "transformers:bfloat16"}),
    "surprisal llama.cpp": ("surprisal", {"engine": "llama.cpp"}),
    "surprisal int8": ("surprisal", {"quantize": "int8"}),
    "extractive": ("extractive", {}),
    "extractive+surprisal": ("extractive+surprisal", {}),
}


def build_hits(data_dir: str | Path, tokens: int) -> list[Hit]:
    """SQuAD paragraphs of ``data_dir/corpus.jsonl`` in order, one hit each, until ``tokens`` generator tokens."""
    from rag.compression import DEFAULT_TOKENIZER, TokenCounter
    from rag.io import read_documents

    counter = TokenCounter(DEFAULT_TOKENIZER)
    hits: list[Hit] = []
    total = 0
    for paragraph in read_documents(Path(data_dir) / "corpus.jsonl"):
        hits.append(Hit(chunk=Chunk.whole(paragraph), score=1.0, source="bench"))
        total += counter.count([paragraph.text])[0]
        if total >= tokens:
            break
    return hits


def gemm_gflops(seconds: float = 1.0) -> float:
    """This CPU's fp32 matrix-multiply rate (GFLOP/s, torch's threads) at SmolLM2-135M's MLP shape on 512 tokens."""
    import torch

    a, w = torch.randn(512, 576), torch.randn(1536, 576)
    torch.nn.functional.linear(a, w)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.nn.functional.linear(a, w)
        runs += 1
    return 2 * 512 * 576 * 1536 * runs / (time.perf_counter() - started) / 1e9


def time_compressors(
    makers: Mapping[str, Callable[[], Any]], hits: list[Hit], repeats: int = 1, question: str = QUESTION
) -> tuple[dict[str, float], dict[str, Any]]:
    """Mean seconds of ``compress(question, hits)`` per compressor, and each one's last context.

    ``makers`` builds a compressor per name. One built first is warmed up on a short hit (models load
    outside the timing and stay loaded); every timed run then gets a compressor of its own, so no run
    reuses scores cached by an earlier one. Runs alternate their order by repeat.
    """
    for make in makers.values():
        make().compress("warm up", hits[:1])
    names = list(makers)
    total = {name: 0.0 for name in names}
    contexts: dict[str, Any] = {}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            compressor = makers[name]()
            started = time.perf_counter()
            contexts[name] = compressor.compress(question, hits)
            total[name] += time.perf_counter() - started
    return {name: total[name] / repeats for name in names}, contexts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compression", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="QA/BEIR folder whose corpus.jsonl gives the text")
    parser.add_argument("--tokens", type=int, default=4000, help="context length in generator tokens (default 4000)")
    parser.add_argument("--rate", type=float, default=3.0, help="compression factor (default 3: keep a third)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per compressor (default 1)")
    parser.add_argument("--compressors", default=",".join(COMPRESSORS), help=f"from {', '.join(COMPRESSORS)}")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from rag.generation.hf import load_causal_lm
    from rag.registry import build

    hits = build_hits(args.data, args.tokens)
    names = [n.strip() for n in args.compressors.split(",") if n.strip()]
    unknown = [n for n in names if n not in COMPRESSORS]
    if unknown:
        parser.error(f"unknown compressors {unknown}; choose from {', '.join(COMPRESSORS)}")
    specs = {n: {"type": COMPRESSORS[n][0], "params": {**COMPRESSORS[n][1], "rate": 1 / args.rate}} for n in names}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    seconds, contexts = time_compressors({n: (lambda spec=spec: build("compressor", spec)) for n, spec in specs.items()},
                                         hits, args.repeats)
    original = next(iter(contexts.values())).original_tokens
    print(
        f"context: {len(hits)} SQuAD paragraphs, {original:,} generator tokens, compressed {args.rate:g}x; torch threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} CPUs, load average {load:.1f} at start\n"
    )
    print("| compressor | seconds | tokens/s | kept tokens | x surprisal fp32 time | fp32 surprisal's words kept |")
    print("|---|---:|---:|---:|---:|---:|")
    base = seconds.get("surprisal")
    base_words = set(contexts["surprisal"].text.split()) if "surprisal" in contexts else None
    for name in names:
        per_run = seconds[name]
        ratio = f"{seconds[name] / base:.2f}" if base else "-"
        same = "-"
        if base_words and name.startswith("surprisal"):
            same = f"{len(base_words & set(contexts[name].text.split())) / len(base_words):.1%}"
        print(f"| {name} | {per_run:.1f} | {original / per_run:,.0f} | {contexts[name].kept_tokens:,} | {ratio} | {same} |")
    lm = load_causal_lm("smollm2-135m")
    scorer_tokens = len(lm.tokenizer("\n\n".join(h.chunk.text for h in hits))["input_ids"])
    parameters = sum(p.numel() for p in lm.model.parameters())  # tied: the embedding is also the output layer
    rate = gemm_gflops()
    floor = 2 * parameters * scorer_tokens / rate / 1e9
    print(
        f"\nSmolLM2-135M reads {scorer_tokens:,} of its tokens: {2 * parameters * scorer_tokens / 1e12:.2f} TFLOP of matrix "
        f"products. This CPU multiplies at {rate:.0f} GFLOP/s with {args.threads} thread(s) (fp32), so the matrix "
        f"products of fp32 surprisal alone take about {floor:.1f} s at that rate (one shape's rate: an estimate)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
