"""PNG plots of RAG runs with matplotlib's Agg backend (no display needed).

    >>> from eval.plots import plot_runs
    >>> plot_runs({"bm25": "runs/a", "dense": "runs/b"}, "plots/")      # doctest: +SKIP

:func:`plot_run` draws one run (``quality_vs_context.png``: per-question F1 against the prompt's tokens,
with means per token bin; ``latency_by_stage.png``: mean seconds per stage). :func:`plot_runs` draws
several runs side by side: one point per run for quality against context tokens, and stacked stage latency.
:func:`plot_front` draws the quality-latency front of ``specrag eval recipes``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from rag.lazy import require


def _pyplot() -> Any:
    matplotlib = require("matplotlib", "eval")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_run(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write the three plots of one run into ``out_dir`` (quality against context, latency by stage, where
    answers are lost); returns their paths."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = summary.get("dataset", {}).get("name", "run")
    written: list[Path] = []

    points = [(r["context_tokens"], r["f1"], r["contains"]) for r in records
              if r.get("context_tokens") is not None and r.get("f1") is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    if points:
        tokens, f1, contains = zip(*points)
        ax.scatter(tokens, f1, s=12, alpha=0.5, label="F1 per question")
        bins = _bins(tokens, 6)
        centres, f1_means, contains_means = [], [], []
        for lo, hi in bins:
            inside = [i for i, t in enumerate(tokens) if lo <= t <= hi]
            if inside:
                centres.append(sum(tokens[i] for i in inside) / len(inside))
                f1_means.append(sum(f1[i] for i in inside) / len(inside))
                contains_means.append(sum(contains[i] for i in inside) / len(inside))
        ax.plot(centres, f1_means, "o-", color="C1", label="mean F1 per bin")
        ax.plot(centres, contains_means, "s--", color="C2", label="mean containment per bin")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no generated answers", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("context (prompt) tokens")
    ax.set_ylabel("answer quality")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"{name}: quality against context tokens")
    written.append(_save(fig, out_dir / "quality_vs_context.png", plt))

    stages = summary.get("stages", {})
    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(stages)
    seconds = [stages[n]["seconds"] or 0.0 for n in names]
    ax.bar(names, seconds, color=[f"C{i}" for i in range(len(names))])
    for i, value in enumerate(seconds):
        ax.text(i, value, f"{value:.3g}", ha="center", va="bottom", fontsize=8)
    positive = [v for v in seconds if v > 0]
    if positive and max(positive) / min(positive) > 100:
        ax.set_yscale("log")  # retrieval takes milliseconds, generation seconds: both stay readable
    ax.set_ylabel("mean seconds per question")
    ax.set_title(f"{name}: latency by stage")
    written.append(_save(fig, out_dir / "latency_by_stage.png", plt))

    lost = summary.get("lost", {})
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = list(lost)
    shares = [100 * lost[k] for k in labels]
    colours = ["C2" if k in ("in the answer", "in the context") else "C3" for k in labels]
    ax.barh(labels[::-1], shares[::-1], color=colours[::-1])
    for i, value in enumerate(shares[::-1]):
        ax.text(value, i, f" {value:.1f}%", va="center", fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of questions")
    ax.set_title(f"{name}: where answers are lost")
    fig.tight_layout()
    written.append(_save(fig, out_dir / "where_answers_are_lost.png", plt))
    return written


def plot_runs(runs: Mapping[str, str | Path], out_dir: str | Path) -> list[Path]:
    """Compare run directories (label -> directory): quality against context tokens, latency by stage."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = {label: json.loads((Path(d) / "summary.json").read_text()) for label, d in runs.items()}

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, s) in enumerate(summaries.items()):
        m = s["metrics"]
        x = m.get("context_tokens") or 0.0
        for metric, marker in (("f1", "o"), ("contains", "s")):
            if m.get(metric) is not None:
                ax.scatter([x], [m[metric]], marker=marker, color=f"C{i}", label=f"{label} {metric}")
    ax.set_xlabel("mean context (prompt) tokens")
    ax.set_ylabel("answer quality")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("quality against context tokens")
    written = [_save(fig, out_dir / "compare_quality_vs_context.png", plt)]

    fig, ax = plt.subplots(figsize=(6, 4))
    stage_names = list(dict.fromkeys(n for s in summaries.values() for n in s["stages"]))
    labels = list(summaries)
    bottoms = [0.0] * len(labels)
    for j, stage in enumerate(stage_names):
        values = [(summaries[l]["stages"].get(stage, {}).get("seconds") or 0.0) for l in labels]
        ax.bar(labels, values, bottom=bottoms, label=stage, color=f"C{j}")
        bottoms = [b + v for b, v in zip(bottoms, values)]
    ax.set_ylabel("mean seconds per question")
    ax.legend(fontsize=8)
    ax.set_title("latency by stage")
    written.append(_save(fig, out_dir / "compare_latency_by_stage.png", plt))
    return written


def plot_front(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """F1 against seconds per answer, one labelled point per pipeline, the Pareto front joined by a line
    (rows as :func:`eval.recipes.front_rows` returns them)."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    points = [r for r in rows if r.get("f1") is not None and r.get("seconds") is not None]
    for i, row in enumerate(points):
        ax.scatter([row["seconds"]], [row["f1"]], color=f"C{i}", marker="o" if row["on_front"] else "x", zorder=3)
        ax.annotate(row["pipeline"], (row["seconds"], row["f1"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = sorted((r["seconds"], r["f1"]) for r in points if r["on_front"])
    if front:
        ax.plot([s for s, _ in front], [f for _, f in front], color="gray", linestyle="--", label="Pareto front", zorder=2)
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("mean seconds per answer")
    ax.set_ylabel("token F1")
    ax.set_xlim(left=0)
    ax.set_title(title or "quality against latency", fontsize=9)
    return _save(fig, path, plt)


def _bins(values: Sequence[float], n: int) -> list[tuple[float, float]]:
    lo, hi = min(values), max(values)
    if hi == lo:
        return [(lo, hi)]
    step = (hi - lo) / n
    return [(lo + i * step, lo + (i + 1) * step) for i in range(n)]


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
