"""`specrag eval compare`: paired bootstrap deltas on constructed runs with a known difference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eval.compare import compare_runs, paired_bootstrap
from eval.rag_eval import RECORDS
from rag.errors import InputError


def _write_run(directory: Path, f1: list[float], em: list[float], seconds: list[float]) -> Path:
    directory.mkdir(parents=True)
    with (directory / RECORDS).open("w") as handle:
        for i, (f, e, s) in enumerate(zip(f1, em, seconds)):
            handle.write(json.dumps({
                "id": f"q{i}", "em": e, "f1": f, "contains": e, "citation_precision": None if i % 5 == 0 else 1.0,
                "recall": {"retrieve": 1.0, "filter": float(i % 2)}, "context_tokens": 400, "answer_tokens": 10,
                "stages": [{"stage": "retrieve", "seconds": 0.01}, {"stage": "generate", "seconds": s}],
            }) + "\n")
    return directory


@pytest.fixture()
def runs(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    n = 200
    f1 = rng.uniform(0.2, 0.8, n)
    em = (rng.uniform(size=n) < 0.4).astype(float)
    seconds = rng.uniform(1.0, 2.0, n)
    noise = rng.normal(0.0, 0.05, n)
    noise -= noise.mean()  # the true mean difference is exactly 0.1
    a = _write_run(tmp_path / "a", list(f1), list(em), list(seconds))
    # B: F1 better by 0.1 on average (with per-question noise), EM identical, generation 10% slower.
    b = _write_run(tmp_path / "b", list(f1 + 0.1 + noise), list(em), list(seconds * 1.1))
    return a, b


def test_a_known_improvement_is_found_and_no_change_is_not(runs: tuple[Path, Path]) -> None:
    rows = compare_runs(*runs)
    f1 = rows["f1"]
    assert f1["n"] == 200
    assert f1["delta"] == pytest.approx(0.1)
    assert 0.09 < f1["ci_low"] < 0.1 < f1["ci_high"] < 0.11  # the CI covers the true delta and excludes zero
    assert f1["p"] < 0.001
    assert rows["em"]["delta"] == 0 and rows["em"]["p"] == 1.0
    assert rows["recall.filter"]["delta"] == 0
    assert rows["citation_precision"]["n"] == 160  # questions without citations are not paired
    assert rows["seconds.generate"]["delta"] > 0 and rows["seconds.generate"]["p"] < 0.001
    assert compare_runs(*runs) == rows  # seeded


def test_citations_are_compared_by_who_wrote_them(tmp_path: Path) -> None:
    def run(directory: Path, completed: list[bool]) -> Path:
        directory.mkdir()
        with (directory / RECORDS).open("w") as handle:
            for i, flag in enumerate(completed):
                handle.write(json.dumps({
                    "id": f"q{i}", "em": 0.0, "f1": 0.5, "contains": 1.0, "citations": ["c#0"],
                    "citation_precision": 0.0 if flag else 1.0, "recall": {},
                    "stages": [{"stage": "generate", "seconds": 1.0, "extra": {"citation_completed": flag}}],
                }) + "\n")
        return directory

    # A: the model cites every answer itself. B: the generator completes the citation of half of them.
    rows = compare_runs(run(tmp_path / "a", [False] * 20), run(tmp_path / "b", [i % 2 == 0 for i in range(20)]))
    assert rows["citation_completed"]["a"] == 0.0 and rows["citation_completed"]["b"] == 0.5
    assert rows["citation_precision_model"]["n"] == 10 and rows["citation_precision_model"]["delta"] == 0
    assert "citation_precision_completed" not in rows  # A completed none: nothing to pair


def test_what_the_model_was_shown_compares_across_pipelines_ending_in_different_stages(tmp_path: Path) -> None:
    def run(directory: Path, last_stage: str, shown: list[float], both_shown: list[float | None]) -> Path:
        directory.mkdir()
        with (directory / RECORDS).open("w") as handle:
            for i, (one, both) in enumerate(zip(shown, both_shown)):
                handle.write(json.dumps({
                    "id": f"q{i}", "em": 0.0, "f1": 0.5, "contains": 0.0,
                    "recall": {"retrieve": 1.0, last_stage: one},
                    "recall_all": {} if both is None else {"retrieve": 1.0, last_stage: both},
                    "stages": [{"stage": "generate", "seconds": 1.0}],
                }) + "\n")
        return directory

    # A compresses (shown for 2 of 8), B loops (shown for 6 of 8); both gold documents: 4 questions have qrels.
    a = run(tmp_path / "a", "compress", [1, 1, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, None, None, None, None])
    b = run(tmp_path / "b", "loop", [1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, None, None, None, None])
    rows = compare_runs(a, b)
    assert (rows["recall.shown"]["a"], rows["recall.shown"]["b"], rows["recall.shown"]["n"]) == (0.25, 0.75, 8)
    assert rows["recall_all.shown"]["n"] == 4 and rows["recall_all.shown"]["delta"] == pytest.approx(0.5)
    assert rows["recall_all.retrieve"]["delta"] == 0
    assert "recall.compress" not in rows and "recall.loop" not in rows  # each is in one run only


def test_a_noisy_difference_is_not_significant() -> None:
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 1, 30)
    b = a + rng.normal(0, 0.3, 30)
    result = paired_bootstrap(list(a), list(b))
    assert result["ci_low"] < 0 < result["ci_high"]
    assert result["p"] > 0.05
    # Close to a t-test on the paired differences for a sample this size.
    stats = pytest.importorskip("scipy.stats")

    assert result["p"] == pytest.approx(stats.ttest_rel(b, a).pvalue, abs=0.06)


def test_compare_cli_prints_a_table_then_json(runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from rag.cli import main

    assert main(["eval", "compare", str(runs[0]), str(runs[1]), "--resamples", "2000"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["f1"]["delta"] == pytest.approx(0.1, abs=0.01)
    assert any(line.startswith("f1") and line.rstrip().endswith("*") for line in lines)


def test_runs_without_shared_questions_or_records_are_errors(runs: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="records.jsonl"):
        compare_runs(runs[0], tmp_path / "nowhere")
    other = _write_run(tmp_path / "other", [0.5], [1.0], [1.0])
    (other / RECORDS).write_text(json.dumps({"id": "zzz", "f1": 1.0}) + "\n")
    with pytest.raises(InputError, match="share no question"):
        compare_runs(runs[0], other)
