"""``specrag eval compression`` on a tiny QA folder written under tmp_path (no generation)."""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import pytest

import eval.compression as compression
from eval.compression import clean_answer, compression_command, add_compression_parser
from rag.types import Chunk, Hit


def test_clean_answer_drops_citations_and_later_lines():
    assert clean_answer("Denver Broncos [1, 2].\nMore") == "Denver Broncos."
    assert clean_answer(" [3] ") == ""


def _tiny_qa(tmp_path):
    folder = tmp_path / "tiny-qa"
    folder.mkdir()
    corpus = [
        {"_id": "p1", "title": "Super Bowl", "text": "Super Bowl 50 was a game. The Denver Broncos won it 24-10. "
                                                      "It was played in Santa Clara."},
        {"_id": "p2", "title": "Cells", "text": "Mitochondria produce ATP. They are the powerhouse of the cell."},
    ]
    queries = [
        {"_id": "q1", "text": "Who won Super Bowl 50?", "answers": ["Denver Broncos"]},
        {"_id": "q2", "text": "What do mitochondria produce?", "answers": ["ATP"]},
    ]
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in corpus) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(r) for r in queries) + "\n")
    return folder


def _parse(*argv):
    parser = argparse.ArgumentParser()
    add_compression_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["compression", *argv])


def test_command_prints_the_json_line(tmp_path, capsys):
    folder = _tiny_qa(tmp_path)
    args = _parse("--data", str(folder), "--rates", "1,2", "--compressors", "none,extractive", "--no-generate",
                  "--k", "2", "--threads", "2")
    assert compression_command(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["dataset"] == "tiny-qa"
    rows = {(r["compressor"], r["rate_requested"]): r for r in result["results"]}
    assert set(rows) == {("none", 1.0), ("extractive", 1.0), ("extractive", 2.0)}
    assert set(rows["none", 1.0]) == {"compressor", "rate_requested", "rate_achieved", "span_retention",
                                      "compress_seconds_uncached", "em", "f1", "answer_seconds"}
    assert rows["none", 1.0]["span_retention"] == 1.0 and rows["extractive", 1.0]["rate_achieved"] == 1.0
    assert rows["extractive", 2.0]["rate_achieved"] >= 2.0 and rows["none", 1.0]["em"] is None


def test_params_reach_the_compressor(tmp_path, capsys):
    # min_score above any cosine: selective augmentation returns an empty context, so no span survives
    folder = _tiny_qa(tmp_path)
    args = _parse("--data", str(folder), "--rates", "2", "--compressors", "extractive", "--no-generate", "--k", "2",
                  "--threads", "2", "--params", '{"extractive": {"min_score": 5.0}}')
    assert compression_command(args) == 0
    (row,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]
    assert row["span_retention"] == 0.0


def test_params_for_a_compressor_not_evaluated_are_refused(tmp_path, capsys):
    folder = _tiny_qa(tmp_path)
    args = _parse("--data", str(folder), "--compressors", "extractive", "--no-generate", "--params",
                  '{"surprisal": {"quantize": "int8"}}')
    assert compression_command(args) == 2
    assert "params given for surprisal" in capsys.readouterr().err


def test_params_must_be_an_object_of_objects():
    with pytest.raises(SystemExit):
        _parse("--data", "x", "--params", '{"extractive": 3}')
    with pytest.raises(SystemExit):
        _parse("--data", "x", "--params", "{not json")


class _CachingPruner:
    """Test double for the timing harness: like the real pruners, it returns a context that already fits
    without scoring (instant at rate 1), and otherwise scores once per question (a real sleep) and keeps
    the scores in the instance for later budgets."""

    SCORING_SECONDS = 0.05

    def __init__(self):
        self.scored = {}

    def compress(self, query, hits, budget_tokens=None):
        words = [w for h in hits for w in h.chunk.text.split()]
        budget = len(words) if budget_tokens is None else budget_tokens
        if budget < len(words) and query not in self.scored:
            time.sleep(self.SCORING_SECONDS)
            self.scored[query] = True
        kept = words[:budget]
        return SimpleNamespace(kept_tokens=len(kept), passages=[SimpleNamespace(text=" ".join(kept))])


def test_each_rate_is_timed_on_its_own_call_without_scores_from_an_earlier_rate(monkeypatch):
    # The old harness timed the first rate only and reused that figure: with rate 1 first, a pruner never
    # scored there, so 2x and 3x reported about zero seconds although each needs a scoring pass.
    text = " ".join(f"w{i}" for i in range(60))
    hits = [Hit(Chunk("c1", "d1", text, 0, len(text)), 1.0, "test")]
    questions = [SimpleNamespace(text=f"question {i}?", answers=["w0"]) for i in range(3)]
    dataset = SimpleNamespace(name="stub", questions=questions)
    monkeypatch.setattr(compression, "retrieve", lambda *args: (dataset, [hits] * len(questions)))
    monkeypatch.setattr(compression, "_count", lambda texts: [len(t.split()) for t in texts])
    monkeypatch.setattr(compression, "build_compressor", lambda name, params=None: _CachingPruner())
    result = compression.run_compression("unused", ["stub"], [1.0, 2.0, 3.0], generate=False)
    seconds = {r["rate_requested"]: r["compress_seconds_uncached"] for r in result["results"]}
    assert seconds[1.0] < _CachingPruner.SCORING_SECONDS / 2
    assert seconds[2.0] >= 0.9 * _CachingPruner.SCORING_SECONDS
    assert seconds[3.0] >= 0.9 * _CachingPruner.SCORING_SECONDS
