"""The speculative-retrieval benchmark runs both loops on the same questions and reports identity and ratios."""

import json

from bench.iterative import main


def test_benchmark_compares_naive_and_speculative_loops_side_by_side(data_dir, tmp_path, capsys):
    out = tmp_path / "iterative.json"
    code = main(["--data", str(data_dir / "hotpotqa-dev-fullwiki-500"), "--limit", "2", "--indexes", "bm25s",
                 "--model", "smollm2-135m", "--engine", "transformers:float32", "--stride", "2", "--k", "2",
                 "--out", str(out)])
    printed = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(printed[-1])["results"]["bm25s"]
    assert code == 0 and summary["questions"] == 2 and summary["identical"] == 2
    assert summary["speedup"] > 0 and 0 <= summary["naive_search_share"] <= 1
    assert summary["naive_searches_per_answer"] >= 1
    rows = json.loads(out.read_text())["results"]["bm25s"]["rows"]
    assert [set(r) >= {"naive", "speculative", "identical"} for r in rows] == [True, True]
    assert "| bm25s | 2 | 2 |" in "\n".join(printed)
