"""``python -m bench.encoders`` end to end on a slice of SciFact (plumbing, not speed)."""

import json

import pytest

from bench.encoders import main


@pytest.mark.parametrize(("encoder", "splits"), [("dense", "test,train"), ("late", "test"), ("splade", "test")])
def test_bench_encoders_reports_both_dtypes_and_ends_with_one_json_line(scifact_dir, capsys, encoder, splits):
    args = ["--encoder", encoder, "--data", str(scifact_dir), "--limit", "40", "--block", "16", "--threads", "1",
            "--splits", splits]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["results"]) == {"float32", "bfloat16"} and result["documents"] == 40
    assert result["encoder"] == encoder and result["splits"] == splits.split(",")
    assert result["decided_on"] == ("train" if "train" in splits else "test")
    for row in result["results"].values():
        assert row["docs_per_second"] > 0
        assert all(0 <= row[split]["ndcg@10"] <= 1 for split in splits.split(","))
    assert result["cosine_min"] > 0.99
