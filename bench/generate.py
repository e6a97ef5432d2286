"""``specrag bench generate`` and ``specrag bench engines``: decoding speed on RAG prompts, engine by engine.

``bench generate`` builds RAG prompts from the top-5 dense hits of QA questions (only the paragraphs of
the questions' articles are indexed, to keep the run short), asks for an answer of a few sentences with
citations, and decodes every prompt, interleaved, on each engine named with ``--engines``, with:

- ``plain``: our decoding loop, one token per pass: the baseline every ratio on that engine is against;
- ``ours_combined``: the HEADLINE method, named before the run: the default grounded generator's
  configuration (suffix-automaton + n-gram drafters, the width costs measured for that engine, the
  system-prompt KV reused);
- on request (``--methods``): our other drafters (``ours_ngram``, ``ours_sam``, ``ours_combined_fresh``
  without prefix reuse, token recycling alone and as the fallback, with path drafts (``ours_recycling``,
  ``ours_combined_recycling``) and tree drafts (``ours_recycling_tree``, ``ours_combined_recycling_tree``;
  verified as trees on transformers, as their main path on llama.cpp), ``ours_model`` and
  ``ours_combined_model`` with ``--draft``), and on transformers engines transformers' own ``hf_generate``,
  ``hf_prompt_lookup`` and ``hf_assisted`` (with ``--draft``);
  context-aware decoding at ``a = --alpha``: ``cad`` (one token per pass) and ``cad_combined`` (the
  headline's drafters verifying against the contrasted distribution), checked against ``cad``'s output.

Every method gets its own ratio against ``plain`` on the same engine. Time to first token is reported over
all prompts and over prompts 2+ for every method (prefix reuse only helps from the second prompt), and
ratios compare like with like. Each speculative output is checked against the same engine's plain greedy
output; where one differs, the first differing position and the two top logits of plain decoding there
are printed (a near-tie is numerics: batched and single-token passes round differently; a clear gap is a
bug). Greedy outputs of each engine are compared with ``transformers:float32``'s (prompts that differ and
where). Ends with one JSON line (the last line of stdout).

``bench engines`` first prints, for every engine, the calibration table (prompt tokens/s, one-token
decode, verification cost by width 1-32, estimated answer time), then runs ``bench generate``'s plain and
headline methods on every engine and reports mean seconds per answer (prompt + decode) with and without
speculation.
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
HEADLINE = "ours_combined"  # the default generator's configuration, named before any run
DEFAULT_ENGINES = "transformers:float32,transformers:bfloat16,llama.cpp"
OUR_DRAFTERS = {"ours_ngram": ["ngram"], "ours_sam": ["sam"], "ours_combined": ["sam", "ngram"],
                "ours_combined_fresh": ["sam", "ngram"], "ours_model": ["model"],
                "ours_combined_model": ["sam", "ngram", "model"], "ours_recycling": ["recycling"],
                "ours_combined_recycling": ["sam", "ngram", "recycling"], "ours_recycling_tree": ["recycling-tree"],
                "ours_combined_recycling_tree": ["sam", "ngram", "recycling-tree"]}
HF_METHODS = ("hf_generate", "hf_prompt_lookup", "hf_assisted")
# Context-aware decoding (rag.generation.contrast) at a = --alpha: plain CAD, and CAD with the headline's
# drafters, which must equal CAD's own greedy output (its reference), not plain decoding's.
CAD_METHODS = {"cad": None, "cad_combined": ["sam", "ngram"]}
REFERENCE = {"cad_combined": "cad"}


def add_bench_parser(subparsers: Any) -> Any:
    """Register ``specrag bench`` with its ``generate`` and ``engines`` commands."""
    bench = subparsers.add_parser("bench", help="benchmarks of specrag components",
                                  description="Benchmarks of specrag components.")
    commands = bench.add_subparsers(dest="bench_command", metavar="COMMAND", required=True)
    for command, help_text in (("generate", "speculative decoding against plain decoding on RAG prompts, per engine"),
                               ("engines", "every engine's calibration table, then answer time with and without "
                                           "speculation")):
        parser = commands.add_parser(command, help=help_text, description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--model", default="qwen2.5-0.5b", help="target model (pack name, path or hub id)")
        parser.add_argument("--data", required=True, help="QA folder (corpus.jsonl, queries.jsonl with answers)")
        parser.add_argument("--n", type=int, default=20, help="number of questions (default 20)")
        parser.add_argument("--max-new-tokens", type=int, default=64)
        parser.add_argument("--threads", type=int, default=2, help="torch and llama.cpp threads (default 2)")
        parser.add_argument("--engines", default=DEFAULT_ENGINES,
                            help=f"comma-separated engines (default {DEFAULT_ENGINES}; 'auto' adds the chosen one); "
                                 "engines that cannot run here are skipped with the reason")
        if command == "generate":
            parser.add_argument("--draft", default=None, help="draft model with the same tokenizer (enables "
                                "ours_model, ours_combined_model and hf_assisted)")
            parser.add_argument("--methods", default=None,
                                help="comma-separated methods besides plain and the headline: "
                                     + ", ".join([m for m in OUR_DRAFTERS if m != HEADLINE] + list(HF_METHODS)
                                                 + list(CAD_METHODS)))
            parser.add_argument("--alpha", type=float, default=0.5,
                                help="context-aware decoding's a for the cad methods (default 0.5)")
            parser.add_argument("--width-costs", default="measure",
                                help="'measure' (time verification widths on the first prompt, per engine), "
                                     "'default' (the built-in table), or JSON like '{\"1\": 1, \"8\": 1.7}'")
        parser.set_defaults(func=run_bench if command == "generate" else run_engines)
    return bench


def build_prompts(data: str, n: int, tokenizer_lm: Any, system_prompt: str = BENCH_PROMPT) -> tuple[list[list[int]], dict]:
    """Token ids of ``n`` RAG prompts (top-5 dense hits), and facts about how they were built."""
    from eval.chunking import load_qa_articles
    from indexes.dense import DenseIndex
    from rag.generation.generator import GroundedGenerator
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


def run_builtin(lm: Any, prompt: list[int], max_new_tokens: int, **options: Any) -> tuple[list[int], float, float, None]:
    """transformers ``generate``: (new tokens without EOS, time to first token, decode seconds after it, None)."""
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
    return tokens[:cut], first - started, ended - first, None


def run_ours(lm: Any, prompt: list[int], drafter: Any, max_new_tokens: int, generator: Any, policy: Any,
             tracker: Any, contrast: tuple[list[int], float] | None = None) -> tuple[list[int], float, float, Any]:
    """Our loop, speculative when ``drafter`` is given, else plain: (tokens, TTFT, decode seconds, stats).

    ``contrast`` (the prompt without passages, a) decodes context-aware; its second prefill is in the TTFT.
    """
    from rag.generation.decode import decode
    from rag.generation.speculative import SpecStats, speculative_decode

    stats = SpecStats()
    # Every method starts from the same cache: the system prompt (when the generator reuses it), never the
    # question, which an engine with one shared context (llama.cpp) still holds from the previous method.
    lm.retain(generator.prefix_ids(lm) if generator.reuse_prefix else [])
    started = time.perf_counter()
    session = generator.session(lm)  # a copy of the cached system-prompt prefix (or a fresh session)
    if contrast is not None:
        from rag.generation.contrast import ContrastSession

        session = ContrastSession(session, generator.session(lm), contrast[0], contrast[1])
    if drafter is None:
        tokens = list(decode(lm, prompt, max_new_tokens=max_new_tokens, stats=stats, session=session))
    else:
        tokens = list(speculative_decode(lm, prompt, drafter, max_new_tokens=max_new_tokens, stats=stats,
                                         session=session, policy=policy, tracker=tracker))
    ended = time.perf_counter()
    first = started + stats.first_token_seconds if tokens else ended
    return tokens, first - started, ended - first, stats


def divergence(lm: Any, prompt: list[int], reference: list[int], other: list[int],
               contrast: tuple[list[int], float] | None = None) -> dict[str, Any] | None:
    """Where ``other`` first leaves ``reference`` (the reference method's greedy output), with the reference
    decoding's two top logits there: plain decoding's, or context-aware decoding's with ``contrast`` (the
    prompt without passages, a)."""
    import torch

    from rag.generation.engine import first_divergence

    position = first_divergence(reference, other)
    if position is None:
        return None
    session = lm.new_session()
    if contrast is not None:
        from rag.generation.contrast import ContrastSession

        session = ContrastSession(session, lm.new_session(), contrast[0], contrast[1])
        session.prefill(prompt)  # the prompt first: it marks where the answer starts
    logits = session.prefill(prompt + reference[:position]).float()
    top = torch.topk(logits, 2)
    return {"position": position, "plain_token": reference[position] if position < len(reference) else None,
            "other_token": other[position] if position < len(other) else None,
            "top2_logits": [round(float(v), 4) for v in top.values], "gap": round(float(top.values[0] - top.values[1]), 4)}


def _load_engines(model: str, names: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    from rag.errors import SpecragError
    from rag.generation.engine import canonical_engine, load_engine

    engines, skipped = {}, {}
    for name in names:
        try:
            engine = load_engine(model, canonical_engine(name))
        except (SpecragError, OSError, RuntimeError) as exc:
            skipped[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"engine {name}: skipped ({skipped[name]})")
            continue
        engines.setdefault(engine.name, engine)
    return engines, skipped


def run_bench(args: argparse.Namespace) -> int:
    """``specrag bench generate``."""
    line = bench_generate(args, methods_wanted=_methods_wanted(args))
    print(json.dumps(line))
    return 0


def _methods_wanted(args: argparse.Namespace) -> list[str]:
    wanted = [m.strip() for m in (getattr(args, "methods", None) or "").split(",") if m.strip()]
    known = set(OUR_DRAFTERS) | set(HF_METHODS) | set(CAD_METHODS) | {"plain"}
    unknown = [m for m in wanted if m not in known]
    if unknown:
        from rag.errors import InputError

        raise InputError(f"--methods: unknown {unknown}; known: {', '.join(sorted(known))}")
    needs_draft = [m for m in wanted if m in ("ours_model", "ours_combined_model", "hf_assisted")]
    if needs_draft and not getattr(args, "draft", None):
        from rag.errors import InputError

        raise InputError(f"--methods {', '.join(needs_draft)} need --draft")
    if "cad_combined" in wanted and "cad" not in wanted:
        wanted.insert(wanted.index("cad_combined"), "cad")  # its reference
    return ["plain", HEADLINE] + [m for m in wanted if m not in ("plain", HEADLINE)]


def bench_generate(args: argparse.Namespace, methods_wanted: list[str]) -> dict[str, Any]:
    """Run every method on every engine, interleaved; print the tables; return the summary (the JSON line)."""
    import torch

    from rag.generation.drafters import RecycleTable, build_drafter
    from rag.generation.engine import first_divergence, load_engine
    from rag.generation.generator import GroundedGenerator
    from rag.generation.speculative import DEFAULT_WIDTH_COSTS, AcceptanceTracker, WidthPolicy, measure_width_costs

    torch.set_num_threads(args.threads)
    engines, skipped = _load_engines(args.model, args.engines.split(","))
    if not engines:
        from rag.errors import SpecragError

        raise SpecragError(f"bench generate: none of the engines {args.engines} can run {args.model}")
    first = next(iter(engines.values()))
    prompts, facts = build_prompts(args.data, args.n, first)
    draft_name = getattr(args, "draft", None)
    print(f"model {args.model}, draft {draft_name}, {len(prompts)} prompts of {min(map(len, prompts))}-"
          f"{max(map(len, prompts))} tokens, top-5 dense hits over {facts['indexed_paragraphs']} paragraphs "
          f"({facts['articles']} articles); {args.max_new_tokens} new tokens, {args.threads} threads")
    print(f"headline method (named before the run): {HEADLINE} = the default generator's configuration; "
          f"engines: {', '.join(engines)}")
    plan: dict[str, dict[str, Any]] = {}
    costs_by_engine: dict[str, dict[int, float]] = {}
    contrast_by_engine: dict[str, dict[tuple[int, ...], tuple[list[int], float]]] = {}  # for CAD divergences
    for name, lm in engines.items():
        width_costs = getattr(args, "width_costs", "measure")
        if width_costs == "measure":
            costs = measure_width_costs(lm, prompts[0], [2, 4, 8, 12, 16, 32], repeats=2)
        elif width_costs == "default":
            costs = dict(DEFAULT_WIDTH_COSTS)
        else:
            costs = {int(k): float(v) for k, v in json.loads(width_costs).items()}
        costs_by_engine[name] = costs
        print(f"{name}: verification width costs (x one-token pass): "
              + ", ".join(f"{w}: {c:.2f}" for w, c in sorted(costs.items())))
        generator = GroundedGenerator(model=args.model, engine=name, system_prompt=BENCH_PROMPT)
        fresh = GroundedGenerator(model=args.model, engine=name, system_prompt=BENCH_PROMPT, reuse_prefix=False)
        draft = load_engine(draft_name, name) if draft_name else None
        methods: dict[str, Any] = {}
        for method in methods_wanted:
            if method == "plain":
                methods[method] = (lambda lm, g: lambda p: run_ours(lm, p, None, args.max_new_tokens, g, None, None))(
                    lm, generator)
            elif method in OUR_DRAFTERS:
                # What a method learns carries over from prompt to prompt, as in the generator: acceptance
                # rates, and token recycling's table (the paper's hot start).
                tracker, recycle = AcceptanceTracker(), RecycleTable()
                methods[method] = (lambda lm, names, g, costs, tracker, recycle, draft: lambda p: run_ours(
                    lm, p, build_drafter(names, draft_lm=draft, recycle=recycle), args.max_new_tokens, g,
                    WidthPolicy(costs), tracker))(
                    lm, OUR_DRAFTERS[method], fresh if method.endswith("_fresh") else generator, costs, tracker,
                    recycle, draft)
            elif method in CAD_METHODS:
                if name not in contrast_by_engine:  # each prompt without its passages, once per engine
                    contrast_by_engine[name] = {
                        tuple(p): (lm.encode_chat(generator.messages_without_context(q)), args.alpha)
                        for p, q in zip(prompts, facts["questions"])}
                methods[method] = (lambda lm, names, g, costs, tracker, contrasts: lambda p: run_ours(
                    lm, p, build_drafter(names) if names else None, args.max_new_tokens, g,
                    WidthPolicy(costs), tracker, contrast=contrasts[tuple(p)]))(
                    lm, CAD_METHODS[method], generator, costs, AcceptanceTracker(), contrast_by_engine[name])
            elif name.startswith("transformers"):
                options = {"hf_generate": {}, "hf_prompt_lookup": {"prompt_lookup_num_tokens": 10},
                           "hf_assisted": {"assistant_model": getattr(draft, "model", None)}}[method]
                methods[method] = (lambda lm, options: lambda p: run_builtin(lm, p, args.max_new_tokens, **options))(
                    lm, options)
        plan[name] = methods

    results = {e: {m: {"ttft": [], "tokens": 0, "decode_s": 0.0, "answer_s": [], "outputs": [], "drafted": {},
                       "accepted": {}, "passes": 0} for m in methods} for e, methods in plan.items()}
    for number, prompt in enumerate(prompts):
        for engine_name, methods in plan.items():  # interleaved, so load changes hit every method alike
            for method, run in methods.items():
                tokens, ttft, decode_s, stats = run(prompt)
                record = results[engine_name][method]
                record["ttft"].append(ttft)
                record["answer_s"].append(ttft + decode_s)
                record["tokens"] += max(len(tokens) - 1, 0)
                record["decode_s"] += decode_s
                record["outputs"].append(tokens)
                if stats is not None and method != "plain":
                    record["passes"] += stats.forward_passes - 1
                    for key, value in stats.drafted.items():
                        record["drafted"][key] = record["drafted"].get(key, 0) + value
                    for key, value in stats.accepted.items():
                        record["accepted"][key] = record["accepted"].get(key, 0) + value
        print(f"  prompt {number + 1}/{len(prompts)} done (" + "; ".join(
            f"{e} {m} {len(results[e][m]['outputs'][-1])} tokens" for e in plan for m in plan[e]) + ")", flush=True)

    summary: dict[str, Any] = {}
    reference = results.get("transformers:float32", {}).get("plain", {}).get("outputs")
    print(f"\n{'engine':<22}{'method':<22}{'TTFT s':>8}{'TTFT 2+':>9}{'answer s':>10}{'decode tok/s':>14}"
          f"{'x plain':>9}  identical  accepted/drafted")
    for engine_name, methods in results.items():
        lm = engines[engine_name]
        plain = methods["plain"]
        plain_tps = plain["tokens"] / plain["decode_s"] if plain["decode_s"] else 0.0
        entry: dict[str, Any] = {"methods": {}, "width_costs": {str(k): round(v, 3) for k, v in
                                                                sorted(costs_by_engine[engine_name].items())}}
        for method, record in methods.items():
            contrasts = contrast_by_engine.get(engine_name, {}) if method in CAD_METHODS else {}
            tps = record["tokens"] / record["decode_s"] if record["decode_s"] else 0.0
            reference_method = REFERENCE.get(method, "plain")
            expected = methods[reference_method]
            same = [a == b for a, b in zip(record["outputs"], expected["outputs"])]
            later = record["ttft"][1:] or record["ttft"]
            item = {"ttft_s": sum(record["ttft"]) / len(record["ttft"]), "ttft_later_s": sum(later) / len(later),
                    "answer_s": sum(record["answer_s"]) / len(record["answer_s"]), "decode_tps": tps,
                    "speedup_vs_plain": tps / plain_tps if plain_tps else 0.0,
                    "answer_speedup_vs_plain": (sum(plain["answer_s"]) / sum(record["answer_s"])
                                                if sum(record["answer_s"]) else 0.0),
                    "identical": all(same), "identical_prompts": sum(same), "reference": reference_method}
            if reference_method != "plain":
                item["answer_speedup_vs_reference"] = (sum(expected["answer_s"]) / sum(record["answer_s"])
                                                       if sum(record["answer_s"]) else 0.0)
            if method != "plain" and method != "cad":  # (CAD differs from plain decoding on purpose)
                item["divergences"] = [dict(prompt=i, **d) for i, (ok, p, ref, out) in
                                       enumerate(zip(same, prompts, expected["outputs"], record["outputs"]))
                                       if not ok and (d := divergence(lm, p, ref, out, contrasts.get(tuple(p))))
                                       is not None]
            if (method.startswith("ours") or method in CAD_METHODS) and record["passes"]:
                item.update({"drafted": record["drafted"], "accepted": record["accepted"],
                             "mean_accepted_length": record["tokens"] / record["passes"]})
            entry["methods"][method] = item
            shown = ", ".join(f"{k} {record['accepted'].get(k, 0)}/{v}" for k, v in record["drafted"].items())
            print(f"{engine_name:<22}{method:<22}{item['ttft_s']:>8.2f}{item['ttft_later_s']:>9.2f}"
                  f"{item['answer_s']:>10.2f}{tps:>14.2f}{item['speedup_vs_plain']:>9.2f}  {str(item['identical']):<9}  "
                  f"{shown}")
            if reference_method != "plain":
                print(f"    {method}: identical to {reference_method} on {sum(same)} of {len(same)} prompts; answer "
                      f"time {item['answer_speedup_vs_reference']:.2f}x {reference_method}'s")
            for d in item.get("divergences", []):
                print(f"    differs from {reference_method} on prompt {d['prompt']} at token {d['position']}: "
                      f"{reference_method} top-2 logits {d['top2_logits']} (gap {d['gap']})")
        if reference is not None and engine_name != "transformers:float32":
            differing = [(i, first_divergence(ref, out)) for i, (ref, out) in
                         enumerate(zip(reference, plain["outputs"])) if ref != out]
            entry["greedy_vs_float32"] = {"differing_prompts": len(differing),
                                          "first_positions": {str(i): pos for i, pos in differing}}
            print(f"    {engine_name} plain greedy differs from transformers:float32 on {len(differing)} of "
                  f"{len(prompts)} prompts" + (f" (prompt: first differing token {dict(differing)})" if differing else ""))
        summary[engine_name] = entry
    line: dict[str, Any] = {
        "model": args.model, "draft": draft_name, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
        "threads": args.threads, "headline": HEADLINE, "skipped_engines": skipped,
        "prefix_tokens": len(GroundedGenerator(model=args.model, system_prompt=BENCH_PROMPT).prefix_ids(first)),
        "engines": _rounded(summary),
    }
    fp32 = summary.get("transformers:float32", {}).get("methods", {}).get(HEADLINE)
    if fp32:
        line["headline_vs_float32_headline"] = {
            e: round(s["methods"][HEADLINE]["decode_tps"] / fp32["decode_tps"], 3) if fp32["decode_tps"] else None
            for e, s in summary.items() if HEADLINE in s["methods"]}
    return line


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def run_engines(args: argparse.Namespace) -> int:
    """``specrag bench engines``: calibration table per engine, then answer time with and without speculation."""
    import torch

    from rag.generation.calibrate import ANSWER_TOKENS, PROMPT_TOKENS, WIDTHS, measure

    torch.set_num_threads(args.threads)
    engines, skipped = _load_engines(args.model, args.engines.split(","))
    print(f"model {args.model}, {args.threads} threads; prompt {PROMPT_TOKENS} tokens, warm cache")
    widths = [w for w in WIDTHS if w > 1]
    print(f"{'engine':<22}{'prompt tok/s':>13}{'1-token ms':>11}" + "".join(f"{'w' + str(w):>7}" for w in widths)
          + f"{'answer s':>10}")
    table = {}
    for name, lm in engines.items():
        result = measure(lm)
        table[name] = {"prompt_tokens_per_second": result.prompt_tokens_per_second,
                       "decode_ms": result.decode_seconds * 1000,
                       "width_costs": {str(w): c for w, c in result.width_costs.items()},
                       "estimated_answer_s": result.answer_seconds(),
                       "estimated_answer_plain_s": result.answer_seconds(speculative=False)}
        print(f"{name:<22}{result.prompt_tokens_per_second:>13.0f}{result.decode_seconds * 1000:>11.1f}"
              + "".join(f"{result.width_costs[w]:>7.2f}" for w in widths) + f"{result.answer_seconds():>10.2f}")
    print(f"(w<N>: one verification pass of N positions, in one-token passes; answer s: estimated for "
          f"{PROMPT_TOKENS} prompt tokens and {ANSWER_TOKENS} new tokens, speculative)")
    args.width_costs = "measure"
    line = bench_generate(args, methods_wanted=["plain", HEADLINE])
    line["calibration"] = _rounded(table)
    line["skipped_engines"].update(skipped)
    print(json.dumps(line))
    return 0
