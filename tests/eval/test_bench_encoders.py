"""``python -m eval.bench_encoders`` end to end on a slice of SciFact (plumbing, not speed)."""

import json

from eval.bench_encoders import main


def test_bench_encoders_reports_both_dtypes_and_ends_with_one_json_line(scifact_dir, capsys):
    assert main(["--data", str(scifact_dir), "--limit", "40", "--block", "16", "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["results"]) == {"float32", "bfloat16"} and result["documents"] == 40
    for row in result["results"].values():
        assert row["docs_per_second"] > 0 and 0 <= row["ndcg@10"] <= 1
    assert result["cosine_min"] > 0.99
