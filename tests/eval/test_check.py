"""`specrag eval check`: the pinned numbers re-run (the quick ones, as CI does) and a drifted pin fails."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eval.check import PINS_DIR, check_pins, format_result, load_pins
from rag.cli import main
from rag.errors import InputError
from tests.indexes.test_hybrid import PINS_OF_THE_BUILD


def test_every_pin_file_loads_and_names_its_source() -> None:
    runs = load_pins(PINS_DIR)
    assert any(r.quick for r in runs) and any(not r.quick for r in runs)
    sources = [p.source for r in runs for p in r.pins]
    assert all(s == "ours" or s.startswith(("ours", "published:")) for s in sources)
    published = {(r.config["index"], p.value) for r in runs for p in r.pins if p.source.startswith("published")}
    assert {("bm25", 0.679), ("bm25s", 0.679), ("bm25-multifield", 0.665)} <= published


def test_quick_check_passes(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What CI runs: every quick pin re-measured within its tolerance."""
    code = main(["eval", "check", "--quick", "--data-root", str(data_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.startswith(("OK", "FAIL"))]
    assert lines and all(line.startswith("OK") for line in lines)
    assert any("published: pyserini" in line for line in lines)


@pytest.mark.slow
def test_the_other_retrieval_pins_that_are_not_quick_pass(data_dir: Path) -> None:
    """The slow tier's share of `specrag eval check`: every retrieval pin that is not quick, but for those
    the slow hybrid test re-measures from its own SciFact build (tests/indexes/test_hybrid.py)."""
    runs = [r for r in load_pins(PINS_DIR) if r.kind == "retrieval" and not r.quick and r.name not in PINS_OF_THE_BUILD]
    assert runs
    results = check_pins(runs, data_root=data_dir, report=lambda _: None)
    assert results and all(r.ok for r in results), "\n".join(format_result(r) for r in results)


def _pins(tmp_path: Path, value: float, tolerance: float) -> Path:
    pins = tmp_path / "pins"
    pins.mkdir(parents=True)
    run = {
        "name": "scifact-bm25s-20", "kind": "retrieval", "dataset": "scifact", "config": {"index": "bm25s"},
        "limit": 20, "quick": True,
        "pins": [{"metric": "ndcg@10", "value": value, "tolerance": tolerance, "source": "ours"}],
    }
    (pins / "drift.yaml").write_text(yaml.safe_dump({"runs": [run]}))
    return pins


def test_a_drifted_pin_fails_with_its_difference(data_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from eval.retrieval import run_retrieval

    measured = run_retrieval(data_dir / "scifact", "bm25s", limit=20)["ndcg@10"]
    ok = check_pins(load_pins(_pins(tmp_path / "ok", measured, 1e-6)), data_root=data_dir, report=lambda _: None)
    assert [r.ok for r in ok] == [True]

    perturbed = _pins(tmp_path / "bad", round(measured + 0.02, 4), 0.005)  # drift beyond the tolerance
    code = main(["eval", "check", "--quick", "--pins", str(perturbed), "--data-root", str(data_dir)])
    out = capsys.readouterr().out
    assert code == 1
    line = next(line for line in out.splitlines() if line.startswith("FAIL"))
    assert "scifact-bm25s-20" in line and "ndcg@10" in line and "(diff -0.02" in line


def test_a_missing_data_set_is_a_failure_not_a_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pins = _pins(tmp_path, 0.5, 0.01)
    assert main(["eval", "check", "--pins", str(pins), "--data-root", str(tmp_path / "nowhere")]) == 1
    assert "not found" in capsys.readouterr().out


def test_malformed_pins_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("runs:\n  - name: x\n    kind: retrieval\n")
    with pytest.raises(InputError, match=r"bad\.yaml, run 1 \(x\): missing"):
        load_pins(tmp_path)
