"""Chunking evaluation: articles rebuilt from QA paragraphs, gold spans in article coordinates, recall@k
of answer-holding chunks with the real dense index, and the command's last JSON line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from eval.chunking import (
    Question,
    add_chunking_parser,
    contains_answer,
    format_table,
    load_qa_articles,
    run_chunking,
)
from rag.errors import InputError
from rag.types import Chunk

pytestmark = pytest.mark.filterwarnings("ignore")

P1 = "Paris is the capital of France. It lies on the Seine."
P2 = "The Eiffel Tower was finished in 1889. Gustave Eiffel's company built it."
P3 = "Tokyo is the capital of Japan. Its metropolitan area is the most populous in the world."


def write_qa(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "qrels").mkdir()
    corpus = [
        {"_id": "0-0", "title": "Paris", "text": P1},
        {"_id": "1-0", "title": "Tokyo", "text": P3},
        {"_id": "0-1", "title": "Paris", "text": P2},
    ]
    queries = [
        {"_id": "q1", "text": "When was the Eiffel Tower finished?", "answers": ["1889", "in 1889"],
         "answer_starts": [P2.find("1889"), P2.find("in 1889")]},
        {"_id": "q2", "text": "What river runs through Paris?", "answers": ["Seine", "the Seine"]},  # no offsets
        {"_id": "q3", "text": "What is the capital of Japan?", "answers": ["Tokyo"], "answer_starts": [0]},
        {"_id": "q4", "text": "Who painted the Mona Lisa?", "answers": ["Leonardo"]},  # not in the corpus
    ]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    qrels = ["q1\t0-1\t1", "q2\t0-0\t1", "q3\t1-0\t1", "q4\t0-0\t1"]
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(line + "\n" for line in qrels))
    return root


@pytest.fixture()
def qa(tmp_path: Path) -> Path:
    return write_qa(tmp_path / "tiny-qa")


def test_articles_are_rebuilt_and_answer_spans_mapped(qa: Path):
    data = load_qa_articles(qa)
    assert [(d.id, d.title) for d in data.documents] == [("article-0", "Paris"), ("article-1", "Tokyo")]
    paris = data.documents[0]
    assert paris.text == f"{P1}\n\n{P2}"
    by_id = {q.id: q for q in data.questions}
    assert set(by_id) == {"q1", "q2", "q3"} and data.skipped == 1
    for question in data.questions:
        doc = {d.id: d for d in data.documents}[question.spans[0][0]]
        assert {doc.text[a:b] for _, a, b in question.spans} <= set(question.answers)
    offset = len(P1) + 2  # P2 follows P1 and a blank line
    start = offset + P2.find("in 1889")
    assert by_id["q1"].spans == (("article-0", start, start + 7), ("article-0", start + 3, start + 7))
    # no offsets: every occurrence of an answer string in the gold paragraph
    seine = P1.find("Seine")
    assert by_id["q2"].spans == (("article-0", seine - 4, seine + 5), ("article-0", seine, seine + 5))


def test_limit_takes_questions_per_article_and_keeps_only_their_articles(qa: Path):
    data = load_qa_articles(qa, limit=1, per_article=1)
    assert [q.id for q in data.questions] == ["q1"] and [d.id for d in data.documents] == ["article-0"]
    data = load_qa_articles(qa, limit=3, per_article=1)
    assert [q.id for q in data.questions] == ["q1", "q3"]
    assert [d.id for d in data.documents] == ["article-0", "article-1"]


def test_contains_answer_needs_the_whole_span():
    question = Question(id="q", text="?", answers=("1889",), spans=(("d", 10, 14),))
    assert contains_answer(Chunk("c", "d", "x" * 10, 5, 15), question)
    assert not contains_answer(Chunk("c", "d", "x" * 8, 5, 13), question)
    assert not contains_answer(Chunk("c", "e", "x" * 10, 5, 15), question)


def test_missing_files_and_unknown_chunkers_are_clear(qa: Path, tmp_path: Path):
    with pytest.raises(InputError, match="corpus.jsonl: missing"):
        load_qa_articles(tmp_path / "nowhere")
    with pytest.raises(InputError, match="unknown chunkers"):
        run_chunking(qa, ["fixed", "bogus"])


def test_run_and_command_end_with_one_json_line(qa: Path, capsys: pytest.CaptureFixture[str]):
    result = run_chunking(qa, ["fixed", "sentence"], k=2, params={"fixed": {"max_tokens": 8}})
    assert set(result["chunkers"]) == {"fixed", "sentence"}
    fixed = result["chunkers"]["fixed"]
    assert fixed["params"]["max_tokens"] == 8 and fixed["mean_tokens"] <= 8
    assert 0 <= fixed["recall@2"] <= 1 and fixed["chars_per_s"] > 0 and fixed["tokens_read@2"] <= 16
    assert result["chunkers"]["sentence"]["recall@2"] == 1.0  # every sentence chunk is whole; 5 chunks in all
    assert "| sentence |" in format_table(result)

    parser = argparse.ArgumentParser()
    add_chunking_parser(parser.add_subparsers())
    args = parser.parse_args(["chunking", "--data", str(qa), "--chunkers", "fixed,recursive", "--k", "1"])
    assert args.func(args) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["dataset"] == "tiny-qa" and set(last["chunkers"]) == {"fixed", "recursive"}
    assert set(last["chunkers"]["fixed"]) >= {"recall@1", "mean_tokens", "chars_per_s"}


def test_squad_article_subset(data_dir: Path):
    result = run_chunking(data_dir / "squad-v1.1-dev", ["fixed", "recursive"], limit=20, per_article=20, k=5)
    assert result["documents"] == 1 and result["questions"] == 20  # the Super Bowl 50 article
    for metrics in result["chunkers"].values():
        assert metrics["recall@5"] >= 0.5
        assert metrics["mean_tokens"] <= 128
