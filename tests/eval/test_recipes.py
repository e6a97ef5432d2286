"""The quality-latency front: the Pareto rule, the table, and `eval recipes` end to end on a tiny QA set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.recipes import FRONT_JSON, FRONT_PLOT, FRONT_TABLE, pareto_front, resolve_entries, run_recipes
from rag.errors import InputError
from tests.eval.test_rag_eval import _config, make_tiny_lm, make_tiny_qa, SQUAD


def test_a_point_is_on_the_front_unless_another_is_as_good_and_as_fast_and_better_in_one() -> None:
    points = {"fast": (0.40, 1.0), "slow-better": (0.50, 3.0), "dominated": (0.39, 1.5),
              "tie-slower": (0.40, 1.2), "best": (0.55, 2.0), "equal": (0.55, 2.0)}
    assert pareto_front(points) == {"fast", "best", "equal"}


def test_entries_are_recipe_names_or_config_files(tmp_path: Path) -> None:
    resolved = resolve_entries(["fast", str(tmp_path / "mine.yaml")])
    assert list(resolved) == ["fast", "mine"] and resolved["fast"].name == "fast.yaml"
    with pytest.raises(InputError, match="no recipe named 'quick'"):
        resolve_entries(["quick"])
    with pytest.raises(InputError, match="named twice"):
        resolve_entries(["fast", "fast"])


@pytest.fixture(scope="module")
def tiny(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("front")
    return make_tiny_qa(data_dir / SQUAD, root / "tiny-squad"), make_tiny_lm(root / "tiny-lm")


def test_eval_recipes_runs_each_pipeline_and_draws_the_front(tiny: tuple[Path, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from rag.cli import main

    qa, lm = tiny
    config = _config(lm)
    wider = {**config, "filters": [{"type": "top-k", "params": {"k": 4}}]}
    for name, data in (("narrow", config), ("wide", wider)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    out = tmp_path / "front"
    assert main(["--threads", "1", "eval", "recipes", "--data", str(qa), "--limit", "3", "--out", str(out),
                 "--recipes", f"{tmp_path / 'narrow.json'},{tmp_path / 'wide.json'}"]) == 0
    table = capsys.readouterr().out
    assert "| `narrow` |" in table and "| `wide` |" in table
    assert (out / FRONT_PLOT).stat().st_size > 1000 and (out / FRONT_TABLE).read_text().strip() == table.strip()
    front = json.loads((out / FRONT_JSON).read_text())
    assert front["answer_style"] == "short" and [r["pipeline"] for r in front["rows"]] == ["narrow", "wide"]
    for row in front["rows"]:
        assert row["questions"] == 3 and row["f1"] is not None and row["seconds"] > 0
        assert row["recall.rerank"] is None and row["recall.filter"] is not None
        assert (out / row["pipeline"] / "records.jsonl").is_file()
    assert any(row["on_front"] for row in front["rows"])
    # Each pipeline's run directory is an ordinary `eval rag` run: the same command resumes, asking nothing.
    again = run_recipes(qa, {"narrow": tmp_path / "narrow.json"}, out, limit=3, progress=False)
    assert again["rows"][0]["f1"] == front["rows"][0]["f1"]
