"""The speculative-retrieval benchmark runs both loops on the same questions and reports identity and ratios;
runs over disjoint question ranges (one per core) merge into one summary."""

import json

import pytest

from bench.iterative import main


def test_benchmark_compares_naive_and_speculative_loops_side_by_side(data_dir, tmp_path, capsys):
    halves = [tmp_path / "first.json", tmp_path / "second.json"]
    for skip, out in enumerate(halves):
        code = main(["--data", str(data_dir / "hotpotqa-dev-fullwiki-500"), "--limit", "1", "--skip", str(skip),
                     "--indexes", "bm25s", "--model", "smollm2-135m", "--engine", "transformers:float32",
                     "--stride", "2", "--k", "2", "--out", str(out)])
        assert code == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]["bm25s"]
        assert summary["questions"] == 1 and summary["identical"] == 1
        assert summary["speedup"] > 0 and 0 <= summary["naive_search_share"] <= 1
        assert summary["naive_searches_per_answer"] >= 1
    rows = [json.loads(out.read_text())["results"]["bm25s"]["rows"][0] for out in halves]
    assert [set(r) >= {"naive", "speculative", "identical"} for r in rows] == [True, True]
    assert rows[0]["id"] != rows[1]["id"]

    merged = tmp_path / "merged.json"
    assert main(["--merge", *map(str, halves), "--out", str(merged)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(printed[-1])["results"]["bm25s"]
    assert summary["questions"] == 2 and summary["identical"] == 2
    naive = sum(r["naive"]["seconds"] for r in rows)
    speculative = sum(r["speculative"]["seconds"] for r in rows)
    assert summary["speedup"] == pytest.approx(naive / speculative)
    assert "| bm25s | 2 | 2 |" in "\n".join(printed)
    assert [r["id"] for r in json.loads(merged.read_text())["results"]["bm25s"]["rows"]] == [r["id"] for r in rows]

    with pytest.raises(SystemExit):  # the same range twice would count its questions twice
        main(["--merge", str(halves[0]), str(halves[0])])
    assert "already in an earlier file" in capsys.readouterr().err
