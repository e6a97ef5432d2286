"""The memory benchmark runs end to end on a small document, each case in its own process."""

from __future__ import annotations

import json

from bench.memory import build_corpus, main


def test_the_corpus_is_one_document_of_the_asked_size(scifact_dir, tmp_path):
    size = build_corpus(scifact_dir, 0.3, tmp_path / "corpus.jsonl")
    lines = (tmp_path / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["_id"] == "big"
    assert 300_000 <= size < 300_000 + 5_000  # stops after the abstract that reaches the size


def test_the_bench_reports_peak_memory_per_case(scifact_dir, capsys):
    assert main(["--data", str(scifact_dir), "--mb", "0.2", "--cases", "fixed+bm25s"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (case,) = result["results"]
    assert case["case"] == "fixed+bm25s" and case["chunks"] > 100
    assert case["peak_mb"] >= case["chunking_peak_mb"] > 0 and case["times_document"] > 0
