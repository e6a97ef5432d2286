"""The compression speed benchmark runs end to end on a short context with real models."""

from __future__ import annotations

import time

from bench.compression import build_hits, main, time_compressors


def test_build_hits_stops_once_the_token_count_is_reached(data_dir):
    from rag.compression import DEFAULT_TOKENIZER, TokenCounter

    hits = build_hits(data_dir / "squad-v1.1-dev", 300)
    counts = TokenCounter(DEFAULT_TOKENIZER).count([h.chunk.text for h in hits])
    assert sum(counts) >= 300 > sum(counts[:-1])


def test_bench_prints_a_row_per_compressor_and_the_fp32_floor(data_dir, capsys):
    assert main(["--data", str(data_dir / "squad-v1.1-dev"), "--tokens", "120", "--threads", "1",
                 "--compressors", "surprisal,extractive"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| surprisal |") or line.startswith("| extractive |")]
    assert len(rows) == 2 and "| 1.00 |" in rows[0]
    assert "products of fp32 surprisal alone take about" in out


class _CachingCompressor:
    """Test double for the timing loop: the first call of an instance on a question scores (a real sleep),
    later calls reuse the instance's cached scores, as the real compressors do."""

    SCORING_SECONDS = 0.05

    def __init__(self):
        self.seen = set()

    def compress(self, query, hits):
        if query not in self.seen:
            time.sleep(self.SCORING_SECONDS)
            self.seen.add(query)
        return query


def test_every_timed_run_scores_again_on_a_compressor_of_its_own():
    # With one instance, the second of two repeats took milliseconds and halved the published mean.
    seconds, contexts = time_compressors({"stub": _CachingCompressor}, [None], repeats=3, question="q")
    assert seconds["stub"] >= 0.9 * _CachingCompressor.SCORING_SECONDS and contexts["stub"] == "q"
