"""Compression evaluation on extractive QA: what survives each compressor, and what it does to answers.

    specrag eval compression --data ../shared/data/squad-v1.1-dev --limit 300 --no-generate
    specrag eval compression --data ../shared/data/squad-v1.1-dev --limit 40 --rates 3

Every corpus record is one chunk, indexed with the dense index (``minilm``); each question retrieves its
top ``k`` (5) hits, and each compressor compresses them at each requested rate. Rates are compression
factors here: ``3`` means keep a third of the tokens (the compressor's ``rate`` parameter is kept/original,
so ``rate=1/3``). Tokens are those of the generator's tokenizer (``qwen2.5-0.5b``).

Reported per compressor and rate:

- ``span_retention``: among questions whose retrieved passages contain a gold answer string (SQuAD
  normalisation, :func:`eval.qa.contains_answer`), the share whose compressed context still does;
- ``rate_achieved``: total original tokens / total kept tokens over the questions (requested: the rate);
- ``compress_seconds_uncached``: seconds of one whole ``compress`` call per question at this rate, by a
  compressor built for that call, so no scores are reused from another rate (models are loaded before
  timing and stay loaded). Compressors cache a question's scores across budgets; timing the later rates
  on that cache would report only the selection (milliseconds), and pruners skip the model at rate 1, so
  reusing the first rate's time reported about zero. Each rate therefore pays its own scoring: a run
  with several rates costs about one scoring pass per rate;
- unless ``--no-generate``: ``em``/``f1`` of the Qwen2.5-0.5B grounded generator's answers (citation
  markers removed) and ``answer_seconds``, the mean total latency of compression plus generation.

``none`` is the uncompressed context (rate 1). ``--params '{"surprisal": {"quantize": "int8"}}'`` passes
constructor parameters to a compressor (rows keep the registered name). The last stdout line is the result as JSON:
``{"dataset": ..., "results": [{"compressor", "rate_requested", "rate_achieved", "span_retention",
"compress_seconds_uncached", "em", "f1", "answer_seconds"}, ...]}`` (``em``, ``f1``, ``answer_seconds`` are
null without generation). The table before it shows these columns; each full row (token counts too) goes to
stderr as it is done.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from rag.cli.args import non_negative_int, positive_int
from rag.errors import InputError, SpecragError
from rag.types import Chunk, Context, Hit

COMPRESSORS = ("none", "extractive", "surprisal", "extractive+surprisal")
RATES = (1.0, 2.0, 3.0, 5.0)
# SQuAD answers are short spans: the generator's "short" style asks for the span, not a sentence, stops at
# the first line and cites nothing (24 new tokens at most, as in every table of eval/results/compression.md).
GENERATOR_PARAMS: dict[str, Any] = {"model": "qwen2.5-0.5b", "answer_style": "short", "max_new_tokens": 24}
JSON_KEYS = ("compressor", "rate_requested", "rate_achieved", "span_retention", "compress_seconds_uncached", "em", "f1",
             "answer_seconds")
CITATION_MARKS = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")


def clean_answer(text: str) -> str:
    """The answer without citation markers, first line only."""
    return CITATION_MARKS.sub("", text).strip().split("\n")[0].strip()


def retrieve(data_dir: str | Path, limit: int | None, k: int, index_dir: str | Path | None,
             skip: int = 0) -> tuple[Any, list[list[Hit]]]:
    """The QA set (``limit`` questions after the first ``skip``) and each question's top ``k`` dense hits (one
    chunk per record)."""
    from eval.qa import load_qa
    from indexes.dense import DenseIndex

    dataset = load_qa(data_dir, limit=limit, skip=skip)
    index = None
    if index_dir is not None and (Path(index_dir) / "manifest.json").is_file():
        index = DenseIndex.open(index_dir)
        if len(index) != len(dataset.corpus):
            index = None  # built from another corpus
    if index is None:
        index = DenseIndex("minilm")
        index.add([Chunk.whole(d) for d in dataset.corpus])
        if index_dir is not None:
            index.save(index_dir)
    return dataset, index.search([q.text for q in dataset.questions], k)


def build_generator(params: Mapping[str, Any] | None = None) -> Any:
    """The grounded generator with the QA prompt (parameters it does not take are left out)."""
    from rag.registry import build, resolve

    wanted = {**GENERATOR_PARAMS, **(params or {})}
    accepted = set(inspect.signature(resolve("generator", "grounded").__init__).parameters)
    return build("generator", {"type": "grounded", "params": {k: v for k, v in wanted.items() if k in accepted}})


def build_compressor(name: str, params: Mapping[str, Any] | None = None) -> Any:
    """The registered compressor ``name`` with constructor ``params`` (``None`` for ``"none"``)."""
    from rag.registry import build

    return None if name == "none" else build("compressor", {"type": name, "params": dict(params or {})})


def run_compression(
    data_dir: str | Path,
    compressors: Sequence[str] = COMPRESSORS,
    rates: Sequence[float] = RATES,
    limit: int | None = None,
    generate: bool = True,
    generate_rates: Sequence[float] | None = None,
    k: int = 5,
    index_dir: str | Path | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    skip: int = 0,
) -> dict[str, Any]:
    """Compress every question's hits with each compressor at each rate; see the module docstring.

    ``skip`` leaves out the first questions: settings are chosen on questions outside the reported range.

    ``params`` maps a compressor name to constructor parameters (e.g. ``{"surprisal": {"quantize": "int8"}}``).
    """
    from eval.qa import contains_answer, exact_match, token_f1

    for rate in rates:
        if rate < 1:
            raise InputError(f"rates are compression factors (3 keeps a third), each at least 1; got {rate}")
    params = dict(params or {})
    unused = sorted(name for name in params if name == "none" or name not in compressors)
    if unused:
        raise InputError(f"params given for {', '.join(unused)}, which is 'none' or not among the compressors "
                         f"evaluated ({', '.join(compressors)})")
    dataset, all_hits = retrieve(data_dir, limit, k, index_dir, skip)
    questions = dataset.questions
    before = [contains_answer("\n\n".join(h.chunk.text for h in hits), q.answers) for q, hits in zip(questions, all_hits)]
    generator = build_generator() if generate else None
    gen_rates = set(rates if generate_rates is None else generate_rates)
    if generator is not None:  # load the model before timing
        generator.generate(questions[0].text, Context.from_hits(all_hits[0][:1]))
    rows: dict[tuple[str, float], dict[str, Any]] = {}
    for name in compressors:
        warm = build_compressor(name, params.get(name))
        name_rates = [1.0] if name == "none" else list(rates)
        if warm is not None:  # warm up: models load outside the timing (they stay loaded, shared by every instance)
            warm.compress(questions[0].text + " (warm-up)", all_hits[0])
        stats = {rate: {"original": 0, "kept": 0, "retained": 0, "compress": [], "answer": [], "prompt": [],
                        "em": [], "f1": []} for rate in name_rates}
        for number, (question, hits) in enumerate(zip(questions, all_hits)):
            n_original = sum(_count([h.chunk.text for h in hits]))
            for rate in name_rates:
                s = stats[rate]
                # A compressor per call: one instance would score a question once and serve every later
                # rate from its cache, so those rates' seconds would be selection only (and, with rate 1
                # first, pruners never score at all). What is timed is what one query at one budget costs.
                compressor = None if warm is None else build_compressor(name, params.get(name))
                started = time.perf_counter()
                if compressor is None:
                    context, n_kept = Context.from_hits(hits), n_original
                else:
                    context = compressor.compress(question.text, hits, budget_tokens=math.floor(n_original / rate + 1e-9))
                    n_kept = context.kept_tokens
                seconds = time.perf_counter() - started
                s["compress"].append(seconds)
                s["original"] += n_original
                s["kept"] += n_kept
                if before[number] and contains_answer("\n\n".join(p.text for p in context.passages), question.answers):
                    s["retained"] += 1
                if generator is not None and (name == "none" or rate in gen_rates):
                    started = time.perf_counter()
                    answer = generator.generate(question.text, context)
                    s["answer"].append(seconds + time.perf_counter() - started)
                    s["prompt"].append(sum(r.tokens_in for r in answer.trace.stages if r.stage == "generate"))
                    text = clean_answer(answer.text)
                    s["em"].append(exact_match(text, question.answers))
                    s["f1"].append(token_f1(text, question.answers))
            if progress is not None and (number + 1) % 10 == 0:
                progress({"compressor": name, "done": number + 1, "of": len(questions)})
        n = len(questions)
        for rate in name_rates:
            s = stats[rate]
            generated = bool(s["answer"])
            row = {
                "compressor": name,
                "rate_requested": rate,
                "rate_achieved": round(s["original"] / s["kept"], 3) if s["kept"] else None,
                "span_retention": round(s["retained"] / max(sum(before), 1), 4),
                "em": round(100 * sum(s["em"]) / n, 2) if generated else None,
                "f1": round(100 * sum(s["f1"]) / n, 2) if generated else None,
                "answer_seconds": round(sum(s["answer"]) / n, 3) if generated else None,
                "compress_seconds_uncached": round(sum(s["compress"]) / n, 4),
                "original_tokens": round(s["original"] / n, 1),
                "kept_tokens": round(s["kept"] / n, 1),
                "prompt_tokens": round(sum(s["prompt"]) / n, 1) if generated else None,
                "questions": n,
                "answer_in_context": sum(before),
            }
            rows[(name, rate)] = row
            if progress is not None:
                progress(row)
    results = list(rows.values())
    return {"dataset": dataset.name, "questions": len(questions), "k": k, "results": results}


def _count(texts: list[str]) -> list[int]:
    from rag.compression import DEFAULT_TOKENIZER, TokenCounter

    return TokenCounter(DEFAULT_TOKENIZER).count(texts)


def format_table(result: Mapping[str, Any]) -> str:
    """A terminal table of the results."""
    head = (f"{'compressor':<22} {'rate':>4} {'achieved':>8} {'retention':>9} {'comp s uncached':>15} {'EM':>6} "
            f"{'F1':>6} {'answer s':>8}")
    lines = [f"{result['dataset']}: {result['questions']} questions, top {result['k']}", head]
    fmt = lambda v, spec: format("-", spec.split(".")[0]) if v is None else format(v, spec)  # noqa: E731
    for r in result["results"]:
        lines.append(
            f"{r['compressor']:<22} {r['rate_requested']:>4g} {fmt(r['rate_achieved'], '>8.2f')} "
            f"{100 * r['span_retention']:>8.1f}% {r['compress_seconds_uncached']:>15.3f} {fmt(r['em'], '>6.1f')} "
            f"{fmt(r['f1'], '>6.1f')} {fmt(r['answer_seconds'], '>8.2f')}"
        )
    lines.append("comp s uncached: one whole compress call per question and rate, no scores reused from another rate")
    return "\n".join(lines)


def add_compression_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Register ``compression`` on the ``specrag eval`` subparsers."""
    parser = commands.add_parser(
        "compression",
        help="compare context compressors on extractive QA: answer-span retention, rate, latency, EM/F1",
        description=(
            "Retrieve the top k passages of each question of a QA folder with the dense index, compress them "
            "with each compressor at each rate (a compression factor: 3 keeps a third of the tokens) and "
            "measure answer-span retention, the achieved rate, compressor time and (unless --no-generate) "
            "the Qwen2.5-0.5B generator's EM/F1 and total answer latency. Prints a table, then the result as "
            "one JSON line (the last line of stdout)."
        ),
        epilog="example: specrag eval compression --data ../shared/data/squad-v1.1-dev --limit 300 --no-generate",
    )
    parser.add_argument("--data", required=True, metavar="DIR", help="QA folder (corpus.jsonl, queries.jsonl with answers)")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="evaluate the first N questions")
    parser.add_argument("--skip", type=non_negative_int, default=0, metavar="N",
                        help="leave out the first N questions (choose settings beside a report on the first N)")
    parser.add_argument("--rates", default="1,2,3,5", metavar="R,R", help="compression factors (default 1,2,3,5)")
    parser.add_argument(
        "--compressors", default=",".join(COMPRESSORS), metavar="A,B",
        help=f"'none' and registered compressors (default: {','.join(COMPRESSORS)})",
    )
    parser.add_argument("--no-generate", dest="generate", action="store_false", help="skip answer generation")
    parser.add_argument("--generate-rates", metavar="R,R", help="generate only at these rates (default: all)")
    parser.add_argument(
        "--params", type=_params, default=None, metavar="JSON",
        help='constructor parameters per compressor, e.g. \'{"surprisal": {"quantize": "int8"}}\'',
    )
    parser.add_argument("--k", type=positive_int, default=5, help="passages retrieved per question (default 5)")
    parser.add_argument("--index-dir", metavar="DIR", help="reuse (or save) the dense index of the corpus here")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch threads (default 2)")
    parser.set_defaults(func=compression_command)
    return parser


def compression_command(args: argparse.Namespace) -> int:
    """``specrag eval compression``: the table, then the JSON result as the last stdout line."""
    import torch

    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        pass
    try:
        rates = _floats(args.rates, "--rates")
        generate_rates = _floats(args.generate_rates, "--generate-rates") if args.generate_rates else None
        names = [n.strip() for n in args.compressors.split(",") if n.strip()]
        result = run_compression(
            args.data, names, rates, limit=args.limit, generate=args.generate, generate_rates=generate_rates,
            k=args.k, index_dir=args.index_dir, params=args.params, skip=args.skip,
            progress=lambda row: print(json.dumps(row), file=sys.stderr, flush=True),
        )
    except SpecragError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    rows = [{key: row[key] for key in JSON_KEYS} for row in result["results"]]
    print(json.dumps({"dataset": result["dataset"], "results": rows}), flush=True)
    return 0


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{option}: expected comma-separated numbers, got {text!r}") from None


def _params(text: str) -> dict[str, dict[str, Any]]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc})") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise argparse.ArgumentTypeError('want an object of objects, e.g. {"surprisal": {"quantize": "int8"}}')
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eval.compression ...``: the same command without the ``specrag`` entry point."""
    parser = argparse.ArgumentParser(prog="python -m eval.compression")
    add_compression_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["compression", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
