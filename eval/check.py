"""Expected numbers as data: ``specrag eval check [--quick] [--pins DIR]`` re-runs every pin and compares.

Pins live in ``eval/expected/*.yaml``. A file holds ``runs``; a run names what to re-run and the numbers
it must give::

    runs:
      - name: scifact-bm25-flat
        kind: retrieval            # retrieval (eval.retrieval.run_retrieval) or rag (eval.rag_eval.run_rag_eval)
        dataset: scifact           # a folder under the data root (../shared/data, or SPECRAG_DATA, or --data-root)
        split: test
        config: {index: bm25}      # retrieval: {index, k}; rag: {pipeline: <pipeline config> or null}
        limit: null                # the first N queries (retrieval: plus 25 distractor documents per query)
        quick: true                # part of `--quick` (a few minutes on a 2-core CPU, run in CI)
        pins:
          - {metric: ndcg@10, value: 0.679, tolerance: 0.001, source: "published: pyserini 2CR BEIR flat"}

Each pin prints ``OK`` or ``FAIL`` with the measured value and the difference; any FAIL (or a run that
fails) makes the exit status non-zero. ``source`` says where the value comes from: ``ours`` (measured with
this code, the command in README.md) or ``published: ...`` (a peer's reference we reproduce).

    >>> from eval.check import load_pins, check_pins
    >>> results = check_pins(load_pins("eval/expected"), quick=True)   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from rag.errors import InputError, SpecragError

# The yaml files ship as package data (pyproject.toml), so this holds in an installed wheel as in a checkout.
PINS_DIR = Path(__file__).resolve().parent / "expected"
KINDS = ("retrieval", "rag")


@dataclass(frozen=True)
class Pin:
    metric: str
    value: float
    tolerance: float
    source: str


@dataclass(frozen=True)
class PinnedRun:
    """One evaluation to re-run and the numbers it must reproduce."""

    name: str
    kind: str
    dataset: str
    config: dict[str, Any]
    pins: tuple[Pin, ...]
    split: str = "test"
    limit: int | None = None
    quick: bool = False
    file: str = ""


@dataclass
class PinResult:
    run: str
    pin: Pin
    measured: float | None
    error: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.measured is not None and abs(self.measured - self.pin.value) <= self.pin.tolerance + 1e-12


def load_pins(directory: str | Path = PINS_DIR) -> list[PinnedRun]:
    """Every run of every ``*.yaml`` in ``directory``; errors name the file and the run at fault."""
    import yaml

    directory = Path(directory)
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise InputError(f"{directory}: no *.yaml pin files")
    runs: list[PinnedRun] = []
    for path in files:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: malformed YAML ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
            raise InputError(f"{path}: expected a mapping with a 'runs' list")
        for number, run in enumerate(data["runs"], start=1):
            where = f"{path}, run {number} ({run.get('name', '?') if isinstance(run, dict) else '?'})"
            if not isinstance(run, dict):
                raise InputError(f"{where}: expected a mapping")
            missing = [k for k in ("name", "kind", "dataset", "config", "pins") if k not in run]
            if missing:
                raise InputError(f"{where}: missing {missing}")
            if run["kind"] not in KINDS:
                raise InputError(f"{where}: kind {run['kind']!r}; expected one of {', '.join(KINDS)}")
            pins = []
            for pin in run["pins"]:
                try:
                    pins.append(Pin(metric=str(pin["metric"]), value=float(pin["value"]),
                                    tolerance=float(pin["tolerance"]), source=str(pin["source"])))
                except (KeyError, TypeError, ValueError) as exc:
                    raise InputError(f"{where}: a pin needs metric, value, tolerance and source ({exc!r})") from None
            runs.append(PinnedRun(
                name=str(run["name"]), kind=run["kind"], dataset=str(run["dataset"]), config=dict(run["config"] or {}),
                pins=tuple(pins), split=str(run.get("split", "test")), limit=run.get("limit"),
                quick=bool(run.get("quick", False)), file=path.name,
            ))
    return runs


def default_data_root() -> Path:
    if "SPECRAG_DATA" in os.environ:
        return Path(os.environ["SPECRAG_DATA"])
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def measure(run: PinnedRun, data_root: Path) -> dict[str, Any]:
    """Re-run one pinned evaluation; a flat dict of its metrics."""
    data = data_root / run.dataset
    if not data.is_dir():
        raise InputError(f"{data}: data set {run.dataset!r} of run {run.name} not found (set --data-root)")
    if run.kind == "retrieval":
        from eval.retrieval import run_retrieval

        return run_retrieval(data, run.config["index"], split=run.split, limit=run.limit, k=run.config.get("k", 100))
    from eval.rag_eval import run_rag_eval

    with tempfile.TemporaryDirectory(prefix="specrag-check-") as tmp:
        summary = run_rag_eval(data, run.config.get("pipeline"), Path(tmp) / "run", limit=run.limit,
                               split=run.split, progress=False, plots=False)
    return {**summary["metrics"], **summary["timing"]}


def check_pins(runs: list[PinnedRun], *, quick: bool = False, data_root: Path | None = None,
               report: Callable[[str], None] = print) -> list[PinResult]:
    """Re-run ``runs`` (only the quick ones when ``quick``) and report each pin as it is checked."""
    data_root = data_root or default_data_root()
    results: list[PinResult] = []
    for run in runs:
        if quick and not run.quick:
            continue
        started = time.perf_counter()
        try:
            measured = measure(run, data_root)
            error = ""
        except SpecragError as exc:
            measured, error = {}, str(exc)
        seconds = time.perf_counter() - started
        for pin in run.pins:
            value = measured.get(pin.metric)
            result = PinResult(run=run.name, pin=pin, measured=float(value) if value is not None else None,
                               error=error or ("" if value is not None else f"metric {pin.metric!r} not in the result"),
                               seconds=seconds)
            results.append(result)
            report(format_result(result))
    return results


def format_result(r: PinResult) -> str:
    head = f"{'OK  ' if r.ok else 'FAIL'} {r.run:<28} {r.pin.metric:<22}"
    if r.measured is None:
        return f"{head} expected {r.pin.value:.4f}: {r.error}  [{r.pin.source}]"
    return (f"{head} {r.measured:.4f} expected {r.pin.value:.4f} ± {r.pin.tolerance:g} "
            f"(diff {r.measured - r.pin.value:+.4f})  [{r.pin.source}]  {r.seconds:.0f} s")


def add_check_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "check",
        help="re-run the pinned expected numbers (eval/expected/*.yaml) and print OK / FAIL per pin",
        description="Re-run every pinned evaluation and compare with the pins; exits 1 on any FAIL.",
        epilog="example:\n  specrag eval check --quick",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="only the runs marked quick (a few minutes on a CPU)")
    parser.add_argument("--pins", type=Path, default=PINS_DIR, metavar="DIR", help=f"pin files (default {PINS_DIR})")
    parser.add_argument("--data-root", type=Path, metavar="DIR", help="where the data set folders are (default ../shared/data)")
    parser.add_argument("--only", metavar="NAME", action="append", help="check only the run(s) with this name")
    parser.set_defaults(func=check_command)
    return parser


def check_command(args: argparse.Namespace) -> int:
    try:
        runs = load_pins(args.pins)
    except SpecragError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.only:
        runs = [r for r in runs if r.name in set(args.only)]
        if not runs:
            print(f"error: no pinned run named {args.only}", file=sys.stderr)
            return 2
    started = time.perf_counter()
    results = check_pins(runs, quick=args.quick, data_root=args.data_root)
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} OK, {len(failed)} FAIL ({time.perf_counter() - started:.0f} s)")
    print(json.dumps({"ok": len(results) - len(failed), "fail": len(failed),
                      "failed": [f"{r.run}:{r.pin.metric}" for r in failed]}), flush=True)
    return 1 if failed else 0
