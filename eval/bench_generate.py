"""``specrag bench generate``: our speculative decoder against transformers' decoding, on RAG prompts.

Builds RAG prompts from the top-5 dense hits of QA questions (only the paragraphs of the questions'
articles are indexed, to keep the run short), asks for an answer of a few sentences with citations, and
decodes every prompt in one process with: plain greedy ``generate``; ``generate`` with prompt lookup;
assisted generation (with ``--draft``); and our loop with each drafter and their combination. Prints time
to first token, decode tokens/s and the ratio against plain for each, checks that every greedy output of
ours is token-identical to plain greedy, and ends with one JSON line (the last line of stdout).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

BENCH_PROMPT = (
    "Answer the question in three or four sentences using only the numbered passages. Quote the passages' "
    "own words where you can, and cite the passages you used by number in square brackets, like [2]. If the "
    "passages do not contain the answer, say that you do not know."
)


def add_bench_parser(subparsers: Any) -> Any:
    """Register ``specrag bench`` with its ``generate`` command."""
    bench = subparsers.add_parser("bench", help="benchmarks of specrag components",
                                  description="Benchmarks of specrag components.")
    commands = bench.add_subparsers(dest="bench_command", metavar="COMMAND", required=True)
    parser = commands.add_parser(
        "generate", help="speculative decoding against transformers' generate on RAG prompts",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b", help="target model (pack name, path or hub id)")
    parser.add_argument("--draft", default=None, help="draft model with the same tokenizer (adds assisted generation "
                        "and our draft-model drafter)")
    parser.add_argument("--data", required=True, help="QA folder (corpus.jsonl, queries.jsonl with answers, qrels)")
    parser.add_argument("--n", type=int, default=20, help="number of questions (default 20)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated subset of: plain, prompt_lookup, assisted, ours_ngram, ours_sam, "
                             "ours_combined, ours_combined_fresh (no prefix reuse), ours_model, ours_combined_model "
                             "(default: all that apply)")
    parser.add_argument("--width-costs", default="measure",
                        help="'measure' (time verification widths on the first prompt), 'default' (MODELS.md "
                             "table), or JSON like '{\"1\": 1, \"8\": 1.7}'")
    parser.set_defaults(func=run_bench)
    return bench


def build_prompts(data: str, n: int, tokenizer_lm: Any, system_prompt: str = BENCH_PROMPT) -> tuple[list[list[int]], dict]:
    """Token ids of ``n`` RAG prompts (top-5 dense hits), and facts about how they were built."""
    from eval.chunking import load_qa_articles
    from indexes.dense import DenseIndex
    from rag.generate import GroundedGenerator
    from rag.io import read_documents
    from rag.types import Chunk, Context

    articles = load_qa_articles(data, limit=n, per_article=2)
    titles = {d.title for d in articles.documents}
    from pathlib import Path

    paragraphs = [p for p in read_documents(Path(data) / "corpus.jsonl") if p.title in titles]
    chunks = [Chunk.whole(p) for p in paragraphs]
    index = DenseIndex()
    index.add(chunks)
    questions = [q.text for q in articles.questions[:n]]
    hits = index.search(questions, k=5)
    generator = GroundedGenerator(model=tokenizer_lm.spec, system_prompt=system_prompt)
    prompts = [tokenizer_lm.encode_chat(generator.messages(q, Context.from_hits(h))) for q, h in zip(questions, hits)]
    return prompts, {"questions": questions, "indexed_paragraphs": len(chunks), "articles": len(titles),
                     "generator": generator}


class _Clock:
    """A transformers streamer that notes when the first new token arrives."""

    def __init__(self) -> None:
        self.calls, self.first = 0, None

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:  # the first call carries the prompt
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def run_builtin(lm: Any, prompt: list[int], max_new_tokens: int, **options: Any) -> tuple[list[int], float, float]:
    """transformers ``generate``: (new tokens without EOS, time to first token, decode seconds after it)."""
    import torch

    clock = _Clock()
    started = time.perf_counter()
    with torch.inference_mode():
        out = lm.model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                max_new_tokens=max_new_tokens, do_sample=False, streamer=clock, **options)
    ended = time.perf_counter()
    tokens = out[0, len(prompt):].tolist()
    cut = next((i for i, t in enumerate(tokens) if t in lm.eos_token_ids), len(tokens))
    first = clock.first or ended
    return tokens[:cut], first - started, ended - first


def run_ours(lm: Any, prompt: list[int], drafter: Any, max_new_tokens: int, generator: Any, policy: Any,
             tracker: Any) -> tuple[list[int], float, float, Any]:
    from rag.speculative import SpecStats, speculative_decode

    stats = SpecStats()
    started = time.perf_counter()
    session = generator.session(lm)  # a copy of the cached system-prompt prefix
    tokens = list(speculative_decode(lm, prompt, drafter, max_new_tokens=max_new_tokens, stats=stats,
                                     session=session, policy=policy, tracker=tracker))
    ended = time.perf_counter()
    first = started + stats.first_token_seconds if tokens else ended
    return tokens, first - started, ended - first, stats


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from rag.drafters import build_drafter
    from rag.generate import GroundedGenerator
    from rag.lm import load_causal_lm
    from rag.speculative import DEFAULT_WIDTH_COSTS, AcceptanceTracker, WidthPolicy, measure_width_costs

    torch.set_num_threads(args.threads)
    lm = load_causal_lm(args.model)
    draft = load_causal_lm(args.draft) if args.draft else None
    prompts, facts = build_prompts(args.data, args.n, lm)
    generator = facts["generator"]
    fresh = GroundedGenerator(model=generator.model, system_prompt=generator.system_prompt, reuse_prefix=False)
    if args.width_costs == "measure":
        costs = measure_width_costs(lm, prompts[0], [2, 3, 4, 6, 8, 12, 16], repeats=2)
    elif args.width_costs == "default":
        costs = dict(DEFAULT_WIDTH_COSTS)
    else:
        costs = {int(k): float(v) for k, v in json.loads(args.width_costs).items()}
    print(f"model {args.model}, draft {args.draft}, {len(prompts)} prompts of {min(map(len, prompts))}-"
          f"{max(map(len, prompts))} tokens, top-5 dense hits over {facts['indexed_paragraphs']} paragraphs "
          f"({facts['articles']} articles); {args.max_new_tokens} new tokens, {args.threads} threads")
    print("verification width costs (x one-token pass): "
          + ", ".join(f"{w}: {c:.2f}" for w, c in sorted(costs.items())))

    methods: dict[str, Any] = {
        "plain": lambda p: run_builtin(lm, p, args.max_new_tokens),
        "prompt_lookup": lambda p: run_builtin(lm, p, args.max_new_tokens, prompt_lookup_num_tokens=10),
    }
    if draft is not None:
        methods["assisted"] = lambda p: run_builtin(lm, p, args.max_new_tokens, assistant_model=draft.model)
    ours = {"ours_ngram": ["ngram"], "ours_sam": ["sam"], "ours_combined": ["sam", "ngram"],
            "ours_combined_fresh": ["sam", "ngram"]}  # fresh: no reuse of the system-prompt KV (its TTFT gain)
    if draft is not None:
        ours.update({"ours_model": ["model"], "ours_combined_model": ["sam", "ngram", "model"]})
    trackers = {name: AcceptanceTracker() for name in ours}
    for name, names in ours.items():
        methods[name] = (lambda names, name: lambda p: run_ours(
            lm, p, build_drafter(names, draft_lm=draft), args.max_new_tokens,
            fresh if name.endswith("_fresh") else generator, WidthPolicy(costs), trackers[name]))(names, name)
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in methods]
        if unknown:
            raise SystemExit(f"--methods: unknown {unknown}; known here: {', '.join(methods)}")
        methods = {m: methods[m] for m in methods if m in wanted or m == "plain"}

    results: dict[str, dict[str, Any]] = {m: {"ttft": [], "tokens": 0, "decode_s": 0.0, "outputs": [], "drafted": {},
                                              "accepted": {}, "passes": 0} for m in methods}
    for number, prompt in enumerate(prompts):
        for method, run in methods.items():  # interleaved, so load changes hit every method alike
            out = run(prompt)
            tokens, ttft, decode_s = out[:3]
            record = results[method]
            record["ttft"].append(ttft)
            record["tokens"] += max(len(tokens) - 1, 0)
            record["decode_s"] += decode_s
            record["outputs"].append(tokens)
            if len(out) > 3:
                stats = out[3]
                record["passes"] += stats.forward_passes - 1
                for key, value in stats.drafted.items():
                    record["drafted"][key] = record["drafted"].get(key, 0) + value
                for key, value in stats.accepted.items():
                    record["accepted"][key] = record["accepted"].get(key, 0) + value
        print(f"  prompt {number + 1}/{len(prompts)} (TTFT s / new tokens / decode tok/s so far / same as plain): " + ", ".join(
            f"{m} {results[m]['ttft'][-1]:.1f}/{len(results[m]['outputs'][-1])}/"
            f"{results[m]['tokens'] / max(results[m]['decode_s'], 1e-9):.2f}/"
            f"{results[m]['outputs'][-1] == results['plain']['outputs'][-1]}" for m in methods), flush=True)

    plain = results["plain"]
    plain_tps = plain["tokens"] / plain["decode_s"] if plain["decode_s"] else 0.0
    summary: dict[str, Any] = {}
    print(f"\n{'method':<22}{'TTFT s':>8}{'TTFT 2+':>9}{'decode tok/s':>14}{'x plain':>9}  identical  accepted/drafted")
    for method, record in results.items():
        tps = record["tokens"] / record["decode_s"] if record["decode_s"] else 0.0
        identical = all(a == b for a, b in zip(record["outputs"], plain["outputs"]))
        later = record["ttft"][1:] or record["ttft"]
        summary[method] = {"ttft_s": sum(record["ttft"]) / len(record["ttft"]), "ttft_later_s": sum(later) / len(later),
                           "decode_tps": tps, "speedup": tps / plain_tps if plain_tps else 0.0, "identical": identical}
        if method.startswith("ours"):
            summary[method].update({"drafted": record["drafted"], "accepted": record["accepted"],
                                    "mean_accepted_length": record["tokens"] / record["passes"] if record["passes"] else 0.0})
        shown = ", ".join(f"{k} {record['accepted'].get(k, 0)}/{v}" for k, v in record["drafted"].items())
        print(f"{method:<22}{summary[method]['ttft_s']:>8.2f}{summary[method]['ttft_later_s']:>9.2f}{tps:>14.2f}"
              f"{summary[method]['speedup']:>9.2f}  {str(identical):<9}  {shown}")
    ours_methods = [m for m in summary if m.startswith("ours")]
    builtin = [m for m in summary if not m.startswith("ours") and m != "plain"]
    best_ours = max(ours_methods, key=lambda m: summary[m]["decode_tps"]) if ours_methods else None
    best_builtin = max(builtin, key=lambda m: summary[m]["decode_tps"]) if builtin else "plain"
    ours_tps = summary[best_ours]["decode_tps"] if best_ours else 0.0
    line = {
        "model": args.model, "draft": args.draft, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
        "threads": args.threads, "identical": all(summary[m]["identical"] for m in ours_methods),
        "plain_decode_tps": plain_tps, "ours_method": best_ours, "ours_decode_tps": ours_tps,
        "speedup_vs_plain": ours_tps / plain_tps if plain_tps else 0.0, "best_builtin": best_builtin,
        "speedup_vs_best_builtin": ours_tps / summary[best_builtin]["decode_tps"] if summary[best_builtin]["decode_tps"] else 0.0,
        "plain_ttft_s": summary["plain"]["ttft_s"],
        "ours_ttft_later_s": summary[best_ours]["ttft_later_s"] if best_ours else None,
        "width_costs": {str(k): round(v, 3) for k, v in sorted(costs.items())},
        "prefix_tokens": len(generator.prefix_ids(lm)),
        "ttft_later_prefix_reuse_s": summary.get("ours_combined", {}).get("ttft_later_s"),
        "ttft_later_no_reuse_s": summary.get("ours_combined_fresh", {}).get("ttft_later_s"),
        "methods": {m: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()} for m, s in summary.items()},
    }
    print(json.dumps(line))
    return 0
