"""Speculative retrieval (RaLMSpec) against naive iterative RaLM, side by side, per index kind.

    python -m bench.iterative --data ../shared/data/hotpotqa-dev-fullwiki-500 --limit 100 --indexes dense,late

For each index kind the QA corpus is chunked and indexed once; then every question is answered by the
naive loop (``ralm-naive``: one real search per step) and by the speculative one (``ralm``), alternating
which goes first, with the same generator (greedy, the engine named or measured fastest) and the same loop
settings. The headline, named before the run: end-to-end seconds of naive over speculative, per index kind.
Also reported: whether every answer is token-identical to the naive one (the first differing question and
position if not), speculation accuracy (guesses verified right / guesses checked, shadow guesses of real
steps included), mean speculation stride (guesses per verification, over the verifications), the real steps
the scheduler took instead of guessing, searches and search seconds, and the share of naive time searching
(which bounds what speculation can save: it removes waiting for the index, never decoding). Ends with one
JSON line.

A long run can be split across cores (one process per core, one thread each) and summarized together:

    python -m bench.iterative --data DATA --limit 50 --skip 0 --indexes dense --out a.json
    python -m bench.iterative --data DATA --limit 50 --skip 50 --indexes dense --out b.json
    python -m bench.iterative --merge a.json b.json

``--out`` is rewritten after every question, so a stopped run keeps what it measured.

``--search-latency SECONDS`` answers the what-if that the corpora here cannot: what speculation saves when
the index sits behind a network or searches a corpus far larger than any under ``../shared/data``. Every
call to the real index (a batch of queries is one call, as one request to a search service would be) first
waits that long; ranking guesses from the per-request cache stays local. The added wait is a simulation,
named as such in the settings and the table, never a measured index speed.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

from rag.cli.args import non_negative_float, non_negative_int, positive_int

INDEXES = {
    "dense": {"type": "dense", "params": {"model": "minilm"}},
    "late": {"type": "late", "params": {}},
    "bm25": {"type": "bm25", "params": {}},
    "bm25s": {"type": "bm25s", "params": {}},
}


# The settings a run records besides its question range (--limit, --skip); runs merge only if they share these.
SHARED_SETTINGS = ("data", "model", "engine", "answer_style", "stride", "k", "context", "threads", "search_latency",
                   "speculation_stride")

# The calls that reach the real index: a plain search, and the searches of queries encoded beforehand (dense,
# late interaction) that a verification batch uses.
SEARCH_CALLS = ("search", "search_vectors", "search_encoded")


class RemoteIndex:
    """An index whose every search call first waits ``latency`` seconds (a simulated round trip to a remote
    search service, or a far larger corpus); everything else, scoring cached chunks included, is the wrapped
    index's own. Wraps an index that is already built."""

    def __init__(self, index: Any, latency: float) -> None:
        self.index = index
        self.latency = latency

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.index, name)
        if name not in SEARCH_CALLS:
            return attribute

        @functools.wraps(attribute)  # keeps the signature, which the guess cache inspects
        def delayed(*args: Any, **kwargs: Any) -> Any:
            time.sleep(self.latency)
            return attribute(*args, **kwargs)

        return delayed

    def __len__(self) -> int:
        return len(self.index)


def loop_config(speculative: bool, stride: int, k: int, context: str,
                speculation_stride: int | None = None) -> dict[str, Any]:
    params = {"speculative": speculative, "stride": stride, "k": k, "context": context}
    if speculative and speculation_stride is not None:
        params["speculation_stride"] = speculation_stride
    return {"type": "ralm", "params": params}


def run(data: str, limit: int, skip: int, indexes: list[str], model: str, engine: str, answer_style: str,
        stride: int, k: int, context: str, log: Any = print, on_progress: Any = None,
        search_latency: float = 0.0, speculation_stride: int | None = None) -> dict[str, Any]:
    """Answer every question with both loops on each index kind; returns the per-kind results (and hands
    the results so far to ``on_progress`` after each question, so that a long run keeps what it measured).
    ``search_latency`` seconds are added to every call to the index (:class:`RemoteIndex`);
    ``speculation_stride`` pins the speculative loop's guesses per verification (None: its scheduler's choice)."""
    from eval.qa import load_qa
    from rag.pipeline import Pipeline

    dataset = load_qa(data, limit=limit, skip=skip)
    generator = {"type": "grounded", "params": {"model": model, "engine": engine, "answer_style": answer_style}}
    results: dict[str, Any] = {}
    for kind in indexes:
        naive = Pipeline(index=INDEXES[kind], compressor=None, generator=generator,
                         loop=loop_config(False, stride, k, context))
        speculative = Pipeline(index=INDEXES[kind], compressor=None, generator=generator,
                               loop=loop_config(True, stride, k, context, speculation_stride))
        started = time.perf_counter()
        naive.ingest(dataset.corpus)
        log(f"[{kind}] indexed {len(naive.index)} chunks in {time.perf_counter() - started:.0f} s")
        if search_latency:
            naive.index = RemoteIndex(naive.index, search_latency)
        speculative.index = naive.index  # one index, searched by both
        naive.ask(dataset.questions[0].text)  # load the models, measure the engine: not timed
        rows = []
        for number, question in enumerate(dataset.questions):
            order = [("naive", naive), ("speculative", speculative)]
            if number % 2:
                order.reverse()
            row: dict[str, Any] = {"id": question.id}
            for name, pipeline in order:
                started = time.perf_counter()
                answer = pipeline.ask(question.text)
                seconds = time.perf_counter() - started
                loop = next(r for r in answer.trace.stages if r.stage == "loop").extra
                generate = next(r for r in answer.trace.stages if r.stage == "generate")
                row[name] = {"seconds": seconds, "text": answer.text, "tokens": generate.tokens_out,
                             **{key: loop.get(key) for key in (
                                 "searches", "queries", "search_seconds", "cache_seconds", "guesses_checked",
                                 "guesses_right", "guesses_discarded", "rollbacks", "rolled_back_tokens",
                                 "prompt_reads", "prompt_read_tokens", "replayed_tokens", "decode_seconds",
                                 "strides", "real_steps")}}
            row["identical"] = row["naive"]["text"] == row["speculative"]["text"]
            rows.append(row)
            log(f"[{kind}] {number + 1}/{len(dataset.questions)} naive {row['naive']['seconds']:.2f} s, "
                f"speculative {row['speculative']['seconds']:.2f} s, identical {row['identical']}")
            results[kind] = {**summarize(rows), "rows": rows}
            if on_progress is not None:
                on_progress(results)
    return results


def merge(paths: list[Path]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The results of several runs of this benchmark (e.g. question ranges split across cores with
    ``--skip``/``--limit``), summarized together per index kind; returns the merged results and the runs'
    settings. Every question keeps its own side-by-side timing, so the sums stay like with like."""
    rows: dict[str, list[dict[str, Any]]] = {}
    settings = []
    for path in paths:
        run_file = json.loads(Path(path).read_text())
        settings.append(run_file["settings"])
        for kind, result in run_file["results"].items():
            seen = {r["id"] for r in rows.get(kind, [])}
            repeated = [r["id"] for r in result["rows"] if r["id"] in seen]
            if repeated:
                raise ValueError(f"{path}: questions {repeated[:5]} of index kind {kind!r} are already in an "
                                 f"earlier file; merge runs over disjoint question ranges")
            rows.setdefault(kind, []).extend(result["rows"])
    differing = [key for key in SHARED_SETTINGS if len({json.dumps(s.get(key)) for s in settings}) > 1]
    if differing:
        raise ValueError(f"the runs differ in {differing}; merge only runs with the same settings")
    return {kind: {**summarize(kind_rows), "rows": kind_rows} for kind, kind_rows in rows.items()}, settings


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals and ratios over the questions of one index kind."""
    def total(method: str, key: str) -> float:
        return sum(r[method].get(key) or 0 for r in rows)

    naive_seconds, spec_seconds = total("naive", "seconds"), total("speculative", "seconds")
    checked, right = total("speculative", "guesses_checked"), total("speculative", "guesses_right")
    strides = [s for r in rows for s in (r["speculative"].get("strides") or [])]
    differing = [r["id"] for r in rows if not r["identical"]]
    return {
        "questions": len(rows),
        "identical": len(rows) - len(differing),
        "differing": differing,
        "naive_seconds_per_answer": naive_seconds / len(rows),
        "speculative_seconds_per_answer": spec_seconds / len(rows),
        "speedup": naive_seconds / spec_seconds if spec_seconds else None,
        "naive_search_share": total("naive", "search_seconds") / naive_seconds if naive_seconds else None,
        "naive_searches_per_answer": total("naive", "searches") / len(rows),
        "speculative_searches_per_answer": total("speculative", "searches") / len(rows),
        "naive_search_seconds_per_answer": total("naive", "search_seconds") / len(rows),
        "speculative_search_seconds_per_answer": (total("speculative", "search_seconds")
                                                  + total("speculative", "cache_seconds")) / len(rows),
        "speculation_accuracy": right / checked if checked else None,
        "mean_speculation_stride": sum(strides) / len(strides) if strides else None,
        "rollbacks_per_answer": total("speculative", "rollbacks") / len(rows),
        "real_steps_per_answer": total("speculative", "real_steps") / len(rows),
        "answer_tokens_per_answer": total("naive", "tokens") / len(rows),
    }


def format_table(results: dict[str, Any], search_latency: float = 0.0) -> str:
    """The summary as a Markdown table; a simulated search latency is named in the index column."""
    added = f" (+{search_latency:g} s simulated per search call)" if search_latency else ""
    lines = ["| index | questions | identical | naive s/answer | speculative s/answer | **speedup** | naive search "
             "share | searches naive / spec | speculation accuracy | mean stride |", "|---|" + "---:|" * 9]
    for kind, r in results.items():
        lines.append(
            f"| {kind}{added} | {r['questions']} | {r['identical']} | {r['naive_seconds_per_answer']:.2f} | "
            f"{r['speculative_seconds_per_answer']:.2f} | **{r['speedup']:.2f}x** | {r['naive_search_share']:.1%} | "
            f"{r['naive_searches_per_answer']:.1f} / {r['speculative_searches_per_answer']:.1f} | "
            f"{_fraction(r['speculation_accuracy'])} | {_number(r['mean_speculation_stride'])} |")
    return "\n".join(lines)


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--data", help="QA folder (corpus.jsonl, queries.jsonl with answers)")
    parser.add_argument("--limit", type=int, default=100, help="questions (default 100)")
    parser.add_argument("--skip", type=non_negative_int, default=0, help="questions to skip first (dev ranges)")
    parser.add_argument("--indexes", default="dense,late", help=f"comma-separated, of {', '.join(INDEXES)}")
    parser.add_argument("--model", default="qwen2.5-0.5b")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--answer-style", default="short", choices=["short", "cited"])
    parser.add_argument("--stride", type=int, default=4, help="answer tokens between retrievals (default 4)")
    parser.add_argument("--k", type=int, default=5, help="passages in the prompt (default 5)")
    parser.add_argument("--context", default="replace", choices=["replace", "extend"])
    parser.add_argument("--speculation-stride", type=positive_int, metavar="N",
                        help="guesses per verification, pinned (default: chosen by the loop's scheduler, which "
                             "may search for real)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--search-latency", type=non_negative_float, default=0.0, metavar="SECONDS",
                        help="simulated seconds added to every call to the index (a remote or far larger index; "
                             "default 0: the real index alone)")
    parser.add_argument("--out", type=Path, help="write the results (JSON, rows included) here, after every "
                                                     "question")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="instead of running: summarize together the --out files of runs over disjoint "
                             "question ranges (e.g. one per core)")
    args = parser.parse_args(argv)
    if args.merge:
        try:
            results, merged_settings = merge(args.merge)
        except (OSError, ValueError, KeyError) as error:
            parser.error(f"cannot merge: {error}")
        return report(results, {**merged_settings[0], "merged": [str(p) for p in args.merge],
                                "skip": [s["skip"] for s in merged_settings],
                                "limit": [s["limit"] for s in merged_settings]}, args.out)
    if not args.data:
        parser.error("--data is required (or --merge)")
    import torch

    torch.set_num_threads(args.threads)
    kinds = [k.strip() for k in args.indexes.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in INDEXES]
    if unknown:
        parser.error(f"unknown index kinds {unknown}; choose from {', '.join(INDEXES)}")
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    settings = {key: getattr(args, key) for key in ("limit", "skip", *SHARED_SETTINGS)}

    results = run(args.data, args.limit, args.skip, kinds, args.model, args.engine, args.answer_style, args.stride,
                  args.k, args.context, log, on_progress=lambda so_far: write(so_far, settings, args.out),
                  search_latency=args.search_latency, speculation_stride=args.speculation_stride)
    return report(results, settings, args.out)


def write(results: dict[str, Any], settings: dict[str, Any], out: Path | None) -> None:
    """The results so far, rows included, to ``out`` (replaced whole, so a stopped run leaves a valid file)."""
    if out:
        from rag.io import atomic_write_json

        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, {"settings": settings, "results": results})


def report(results: dict[str, Any], settings: dict[str, Any], out: Path | None) -> int:
    """Print the table and the one-line JSON summary; exit status 1 if any answer differed."""
    write(results, settings, out)
    print(format_table(results, settings.get("search_latency") or 0.0))
    summary = {kind: {k: v for k, v in r.items() if k != "rows"} for kind, r in results.items()}
    print(json.dumps({"settings": settings, "results": summary}))
    return 0 if all(r["identical"] == r["questions"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
