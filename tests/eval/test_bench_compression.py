"""The compression speed benchmark runs end to end on a short context with real models."""

from __future__ import annotations

from eval.bench_compression import DEFAULT_DATA, build_hits, main


def test_build_hits_stops_once_the_token_count_is_reached():
    from compressors.base import DEFAULT_TOKENIZER, TokenCounter

    hits = build_hits(DEFAULT_DATA, 300)
    counts = TokenCounter(DEFAULT_TOKENIZER).count([h.chunk.text for h in hits])
    assert sum(counts) >= 300 > sum(counts[:-1])


def test_bench_prints_a_row_per_compressor_and_the_fp32_floor(capsys):
    assert main(["--tokens", "120", "--threads", "1", "--compressors", "surprisal,extractive"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| surprisal |") or line.startswith("| extractive |")]
    assert len(rows) == 2 and "| 1.00 |" in rows[0]
    assert "products of fp32 surprisal alone take about" in out
