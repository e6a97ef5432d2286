"""The quality-latency front: several pipelines (the shipped recipes by default) on one QA set, side by side.

    specrag eval recipes --data ../shared/data/squad-v1.1-dev --limit 300 --out runs/front-squad

Each pipeline runs through :func:`eval.rag_eval.run_rag_eval` into its own run directory under ``--out``
(so an interrupted front resumes where it stopped, pipeline by pipeline), with ``short`` answers unless
told otherwise. Then ``front.md`` (a table: recall after each stage, EM, F1, containment, seconds per
answer, and whether the pipeline is on the Pareto front of F1 against seconds), ``front.json`` and
``quality_latency_front.png`` (F1 against seconds per answer, one point per pipeline, the front joined)
are written beside them.

    >>> from eval.recipes import run_recipes
    >>> front = run_recipes("../shared/data/squad-v1.1-dev", ["fast", "accurate"], "runs/front", limit=50)  # doctest: +SKIP
    >>> [(row["pipeline"], row["f1"], row["seconds"], row["on_front"]) for row in front["rows"]]          # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from rag.errors import InputError, SpecragError

FRONT_TABLE = "front.md"
FRONT_JSON = "front.json"
FRONT_PLOT = "quality_latency_front.png"
# The stages whose recall the table shows, in pipeline order; a pipeline without a stage shows "-" there.
RECALL_STAGES = ("retrieve", "rerank", "filter", "compress")


def resolve_entries(entries: "Sequence[str] | Mapping[str, Any]") -> dict[str, Any]:
    """Label -> pipeline config for :func:`eval.rag_eval.run_rag_eval`.

    A sequence names recipes (``"fast"``) or config files (a path ending in .yaml/.yml/.json, labelled by its
    file name without the suffix); a mapping gives labels and configs (paths or plain config data) directly.
    """
    from rag.pipeline import recipe_path

    if isinstance(entries, Mapping):
        resolved = dict(entries)
    else:
        resolved = {}
        for entry in entries:
            path = Path(entry)
            if path.suffix.lower() in {".yaml", ".yml", ".json"}:
                label, config = path.stem, path
            else:
                label, config = entry, recipe_path(entry)
            if label in resolved:
                raise InputError(f"eval recipes: {label!r} is named twice")
            resolved[label] = config
    if not resolved:
        raise InputError("eval recipes: no pipelines to run")
    return resolved


def pareto_front(points: Mapping[str, tuple[float, float]]) -> set[str]:
    """The labels whose (quality, seconds) no other point beats: none has quality >= and seconds <=, one strictly."""
    front = set()
    for label, (quality, seconds) in points.items():
        dominated = any(q >= quality and s <= seconds and (q > quality or s < seconds)
                        for other, (q, s) in points.items() if other != label)
        if not dominated:
            front.add(label)
    return front


def front_rows(summaries: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per pipeline (in the order given): recall per stage, EM, F1, containment, seconds, on_front."""
    rows = []
    for label, summary in summaries.items():
        metrics = summary["metrics"]
        row: dict[str, Any] = {"pipeline": label, "questions": metrics["questions"]}
        row.update({f"recall.{stage}": metrics.get(f"recall.{stage}") for stage in RECALL_STAGES})
        row.update(em=metrics.get("em"), f1=metrics.get("f1"), contains=metrics.get("contains"),
                   seconds=summary["timing"]["seconds.total"],
                   seconds_generate=summary["timing"].get("seconds.generate"))
        rows.append(row)
    front = pareto_front({r["pipeline"]: (r["f1"], r["seconds"]) for r in rows
                          if r["f1"] is not None and r["seconds"] is not None})
    for row in rows:
        row["on_front"] = row["pipeline"] in front
    return rows


def format_front(rows: Sequence[Mapping[str, Any]], title: str = "") -> str:
    """The rows as a Markdown table (recall and answer metrics in percent, seconds per answer)."""
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    head = ["pipeline", *[f"recall {s}" for s in RECALL_STAGES], "EM", "F1", "contains", "s/answer",
            "of it generate", "on the front"]
    lines = [f"**{title}**", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r['pipeline']}`", *[pct(r[f"recall.{s}"]) for s in RECALL_STAGES], pct(r["em"]),
                 pct(r["f1"]), pct(r["contains"]), f"{r['seconds']:.2f}",
                 "–" if r["seconds_generate"] is None else f"{r['seconds_generate']:.2f}",
                 "yes" if r["on_front"] else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_recipes(
    data_dir: str | Path,
    entries: "Sequence[str] | Mapping[str, Any]",
    out_dir: str | Path,
    *,
    limit: int | None = None,
    split: str = "test",
    answer_style: str | None = "short",
    progress: bool = True,
) -> dict[str, Any]:
    """Run every pipeline of ``entries`` on ``data_dir`` (resuming runs already under ``out_dir``), write the
    front's table, JSON and plot, and return ``{"rows", "table", "plot", "runs"}``."""
    from eval.plots import plot_front
    from eval.rag_eval import run_rag_eval
    from rag.io import atomic_write_bytes

    pipelines = resolve_entries(entries)
    out_dir = Path(out_dir)
    summaries, runs = {}, {}
    for number, (label, config) in enumerate(pipelines.items(), start=1):
        if progress:
            print(f"[{number}/{len(pipelines)}] {label}", file=sys.stderr, flush=True)
        runs[label] = str(out_dir / label)
        summaries[label] = run_rag_eval(data_dir, config, out_dir / label, limit=limit, split=split,
                                        progress=progress, answer_style=answer_style)
    rows = front_rows(summaries)
    name = next(iter(summaries.values()))["dataset"]["name"]
    title = f"{name}, {rows[0]['questions']} questions, {answer_style or 'each pipeline’s own'} answers"
    table = format_front(rows, title)
    atomic_write_bytes(out_dir / FRONT_TABLE, (table + "\n").encode("utf-8"))
    front = {"data": str(data_dir), "limit": limit, "answer_style": answer_style, "rows": rows, "runs": runs}
    atomic_write_bytes(out_dir / FRONT_JSON, (json.dumps(front, indent=2) + "\n").encode("utf-8"))
    plot = plot_front(rows, out_dir / FRONT_PLOT, title)
    return {"rows": rows, "table": table, "plot": str(plot), "runs": runs}


# -- command line ------------------------------------------------------------------------------------


def add_recipes_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    from rag.cli.args import positive_int

    parser = commands.add_parser(
        "recipes",
        help="run every recipe (or the pipelines named) on a QA set: the quality-latency front, a table and a plot",
        description=(
            "Run pipelines on one QA set with `eval rag` (one run directory each under --out, resumable) and\n"
            "write the quality-latency front: front.md (recall per stage, EM, F1, containment, seconds per\n"
            "answer, Pareto front), front.json and quality_latency_front.png."
        ),
        epilog="example:\n  specrag --threads 1 eval recipes --data ../shared/data/squad-v1.1-dev --limit 300 "
               "--out runs/front-squad",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, metavar="DIR", help="QA folder: corpus.jsonl, queries.jsonl with answers, qrels/")
    parser.add_argument("--recipes", metavar="LIST",
                        help="comma-separated recipe names or pipeline config files (default: every recipe)")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="the first N questions")
    parser.add_argument("--split", default="test", help="qrels split naming relevant passages (default: test)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="where the runs and the front go (default: .specrag/runs/recipes-<data>)")
    parser.add_argument("--answer-style", choices=["short", "cited"], default="short",
                        help="answer style for every pipeline (default: short, what QA benchmarks score)")
    parser.set_defaults(func=recipes_command)
    return parser


def recipes_command(args: argparse.Namespace) -> int:
    from eval.rag_eval import DEFAULT_RUNS
    from rag.pipeline import recipe_names

    started = time.perf_counter()
    entries = [e.strip() for e in args.recipes.split(",") if e.strip()] if args.recipes else recipe_names()
    out = args.out or DEFAULT_RUNS / f"recipes-{Path(args.data).name}"
    try:
        front = run_recipes(args.data, entries, out, limit=args.limit, split=args.split,
                            answer_style=args.answer_style)
    except KeyboardInterrupt:
        print("\ninterrupted: the finished questions are saved; run the same command again to resume",
              file=sys.stderr)
        return 130
    except SpecragError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(front["table"])
    print(f"plot: {front['plot']}  ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0
