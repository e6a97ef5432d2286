"""How often looked-up drafts are accepted, by match length: the data behind the acceptance priors.

    python -m bench.draft_acceptance --data ../shared/data/hotpotqa-dev-fullwiki-500 [--n 20] [--drafter sam]
                                     [--model qwen2.5-0.5b] [--max-new-tokens 64] [--threads 1]

Builds the RAG prompts of ``specrag bench generate`` and decodes them greedily with our speculative loop,
forced to verify every draft at full length (15 tokens; the width policy is given one free width), so
every proposed draft is observed whatever it is worth. For each match-length bucket of the acceptance
tracker (0, 1, 2-3, 4-7, 8-15, 16+ tokens) it prints the number of drafts, the rate at which the first
draft token was accepted, and the rate at which each later token was accepted given the one before was;
``rag.generation.speculative.DEFAULT_FIRST_PRIORS`` and ``DEFAULT_CONTINUE_PRIOR`` come from this output on HotpotQA
(not the benchmark's SQuAD prompts). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def measure(data: str, n: int, drafter_name: str, model: str, max_new_tokens: int) -> dict[str, Any]:
    """Per-bucket draft counts and first/later acceptance rates with forced full-length drafts."""
    from bench.generate import build_prompts
    from rag.generation.drafters import build_drafter
    from rag.generation.hf import load_causal_lm
    from rag.generation.speculative import AcceptanceTracker, WidthPolicy, speculative_decode

    lm = load_causal_lm(model)
    prompts, facts = build_prompts(data, n, lm)
    totals = AcceptanceTracker(decay=1.0)  # no decay: its counts are the totals over every draft
    free_width = WidthPolicy({1: 1.0, 16: 1.0})  # a 16-wide pass "costs" one token: always draft in full
    for prompt in prompts:
        for _ in speculative_decode(lm, prompt, build_drafter([drafter_name]), max_new_tokens=max_new_tokens,
                                    session=facts["generator"].session(lm), policy=free_width, tracker=totals):
            pass
    labels = AcceptanceTracker.bucket_labels()
    buckets = {}
    for (_, bucket), (first_ok, first_failed, later_ok, later_failed) in sorted(totals.counts.items()):
        n_drafts = first_ok + first_failed
        if n_drafts:
            later = later_ok + later_failed
            buckets[labels[bucket]] = {"drafts": int(n_drafts), "first_rate": first_ok / n_drafts,
                                       "later_rate": later_ok / later if later else None}
    return {"data": data, "prompts": len(prompts), "drafter": drafter_name, "model": model, "buckets": buckets}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="QA folder (corpus.jsonl, queries.jsonl with answers)")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--drafter", default="sam", choices=["sam", "ngram"])
    parser.add_argument("--model", default="qwen2.5-0.5b")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    result = measure(args.data, args.n, args.drafter, args.model, args.max_new_tokens)
    print(f"{'match length':>13}{'drafts':>8}{'first token':>13}{'later tokens':>14}")
    for name, row in result["buckets"].items():
        later = "-" if row["later_rate"] is None else f"{row['later_rate']:.3f}"
        print(f"{name:>13}{row['drafts']:>8}{row['first_rate']:>13.3f}{later:>14}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
