"""Compare two RAG runs question by question: ``specrag eval compare RUN_A RUN_B``.

For every per-question metric both runs recorded (EM, F1, containment, citation precision: all, written by
the model and completed by the generator, and the share of answers completed; recall after
each stage, ``recall_all`` (every relevant document) after each stage, both also for ``shown``, the last stage
before the generator, so that pipelines ending in different stages compare on what the model saw; context
tokens, seconds per stage and in total) the delta ``B - A`` of the means over the
questions both runs answered, a paired bootstrap confidence interval (questions resampled with
replacement, the same resample for both runs) and a two-sided p-value for "no difference" (the bootstrap
distribution of the delta shifted to mean zero; the share of it at least as far from zero as the observed
delta). Seeded, so the same runs give the same numbers.

    >>> from eval.compare import compare_runs
    >>> rows = compare_runs("runs/a", "runs/b")                      # doctest: +SKIP
    >>> rows["f1"]["delta"], rows["f1"]["ci"], rows["f1"]["p"]       # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from rag.cli import exit_codes
from rag.errors import InputError

QUALITY = ("em", "f1", "contains", "citation_precision")
# Citation precision split by who wrote the citation (see eval.rag_eval.citation_split), and whether the
# generator had to complete it (0/1 per question: its mean is the share of answers completed).
CITATIONS = ("citation_precision_model", "citation_precision_completed", "citation_completed")
COST = ("context_tokens", "answer_tokens")


def per_question_values(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of one record that can be compared across runs (``None`` values left out)."""
    from eval.rag_eval import citation_split

    values: dict[str, float] = {}
    merged = {**record, **citation_split(record)}  # old records split from their trace too
    for key in QUALITY + CITATIONS + COST:
        if merged.get(key) is not None:
            values[key] = float(merged[key])
    for key in ("recall", "recall_all"):
        by_stage = record.get(key) or {}
        for stage, recall in by_stage.items():
            values[f"{key}.{stage}"] = float(recall)
        if by_stage and merged.get("f1") is not None:
            # What the generator was shown: the last stage before it (compress, filter, loop, ...). Pipelines
            # whose last stages differ (a compressor against an iterative loop) compare on this one key.
            values[f"{key}.shown"] = float(list(by_stage.values())[-1])
    seconds: dict[str, float] = {}
    for s in record.get("stages", []):
        seconds[s["stage"]] = seconds.get(s["stage"], 0.0) + float(s["seconds"])
    for stage, value in seconds.items():
        values[f"seconds.{stage}"] = value
    if seconds:
        values["seconds.total"] = sum(seconds.values())
    return values


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, seed: int = 0,
                     confidence: float = 0.95) -> dict[str, float]:
    """Mean of ``b - a``, its bootstrap confidence interval and a two-sided p-value (paired by position)."""
    import numpy as np

    if len(a) != len(b):
        raise InputError(f"paired bootstrap: {len(a)} values against {len(b)}; pairs need equal lengths")
    if not len(a):
        raise InputError("paired bootstrap: no pairs to compare")
    diffs = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    observed = float(diffs.mean())
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(diffs), size=(resamples, len(diffs)))
    means = diffs[samples].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    centred = means - observed  # the bootstrap distribution under "no difference"
    # An exact tie everywhere (every diff zero) is no evidence of a difference: p = 1.
    p = float(np.mean(np.abs(centred) >= abs(observed) - 1e-12)) if observed != 0 else 1.0
    return {"delta": observed, "ci_low": float(low), "ci_high": float(high), "p": p, "n": len(diffs)}


def load_records(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Question id -> record of a run directory written by ``specrag eval rag``."""
    from eval.rag_eval import RECORDS, read_records

    path = Path(run_dir) / RECORDS
    if not path.is_file():
        raise InputError(f"{path}: missing; RUN must be a run directory written by `specrag eval rag`")
    return {r["id"]: r for r in read_records(path)}


def compare_runs(run_a: str | Path, run_b: str | Path, *, resamples: int = 10_000, seed: int = 0,
                 confidence: float = 0.95) -> dict[str, dict[str, float]]:
    """Per metric: mean in A, mean in B, delta, CI and p-value over the questions both runs answered."""
    a, b = load_records(run_a), load_records(run_b)
    shared = [qid for qid in a if qid in b]
    if not shared:
        raise InputError(f"{run_a} and {run_b} share no question ids; compare runs on the same data set")
    values_a = {qid: per_question_values(a[qid]) for qid in shared}
    values_b = {qid: per_question_values(b[qid]) for qid in shared}
    metrics = list(dict.fromkeys(k for qid in shared for k in values_a[qid] if k in values_b[qid]))
    rows: dict[str, dict[str, float]] = {}
    for metric in metrics:
        pairs = [(values_a[q][metric], values_b[q][metric]) for q in shared
                 if metric in values_a[q] and metric in values_b[q]]
        xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
        row = paired_bootstrap(xs, ys, resamples=resamples, seed=seed, confidence=confidence)
        rows[metric] = {"a": sum(xs) / len(xs), "b": sum(ys) / len(ys), **row}
    return rows


def format_comparison(rows: Mapping[str, Mapping[str, float]], name_a: str, name_b: str,
                      confidence: float = 0.95) -> str:
    level = f"{confidence:.0%} CI"
    lines = [f"A = {name_a}", f"B = {name_b}",
             f"{'metric':<28} {'n':>5} {'A':>9} {'B':>9} {'B - A':>9} {level:>21} {'p':>7}"]
    for metric, r in rows.items():
        mark = " *" if r["p"] < 1 - confidence else ""
        lines.append(
            f"{metric:<28} {r['n']:>5} {r['a']:>9.4f} {r['b']:>9.4f} {r['delta']:>+9.4f} "
            f"[{r['ci_low']:>+8.4f}, {r['ci_high']:>+8.4f}] {r['p']:>7.4f}{mark}"
        )
    lines.append(f"(paired bootstrap over questions; * p < {1 - confidence:.2f})")
    return "\n".join(lines)


def add_compare_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "compare",
        help="compare two `eval rag` runs: per-metric deltas with paired bootstrap CIs and p-values",
        description="Compare two run directories of `specrag eval rag` on the questions both answered.\n"
        "The comparison is printed as a table, then as one JSON line (the last line of stdout).",
        epilog="example:\n  specrag eval compare runs/squad-bm25 runs/squad-dense",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_a", metavar="RUN_A", type=Path)
    parser.add_argument("run_b", metavar="RUN_B", type=Path)
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--confidence", type=float, default=0.95, help="confidence level (default 0.95)")
    parser.set_defaults(func=compare_command)
    return parser


@exit_codes
def compare_command(args: argparse.Namespace) -> int:
    rows = compare_runs(args.run_a, args.run_b, resamples=args.resamples, seed=args.seed,
                        confidence=args.confidence)
    print(format_comparison(rows, str(args.run_a), str(args.run_b), args.confidence))
    print(json.dumps(rows), flush=True)
    return 0
