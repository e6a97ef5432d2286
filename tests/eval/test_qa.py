"""QA loading and the SQuAD answer metrics."""

from __future__ import annotations

import json

import pytest

from eval.qa import contains_answer, exact_match, load_qa, normalize_answer, token_f1
from rag.errors import InputError


def test_normalisation_follows_squad():
    assert normalize_answer("The Eiffel  Tower.") == "eiffel tower"
    assert normalize_answer("A cat, an owl") == "cat owl"


def _official_normalize(s: str) -> str:
    """SQuAD v1.1's evaluate-v1.1.py normalize_answer, written out as the script defines it (the oracle)."""
    import re
    import string

    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _official_f1(prediction: str, truth: str) -> float:
    from collections import Counter

    predicted, gold = _official_normalize(prediction).split(), _official_normalize(truth).split()
    same = sum((Counter(predicted) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(gold)
    return 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize("prediction, truth", [
    ("The Denver Broncos", "Denver Broncos"), ("Denver Broncos.", "the denver broncos"),
    ("Santa Clara, California", "Levi's Stadium in the San Francisco Bay Area at Santa Clara, California"),
    ("an apple a day", "apple day"), ("theater", "the ater"), ("“Quoted” — dash", "quoted dash"),
    ("1,000", "1000"), ("  spaced\tout\n", "spaced out"), ("The", "a"), ("", "x"),
])
def test_metrics_match_the_official_squad_script(prediction, truth):
    assert normalize_answer(prediction) == _official_normalize(prediction)
    assert exact_match(prediction, [truth]) == float(_official_normalize(prediction) == _official_normalize(truth))
    assert token_f1(prediction, [truth]) == pytest.approx(_official_f1(prediction, truth))


def test_exact_match_and_f1():
    assert exact_match("the Denver Broncos", ["Denver Broncos", "Broncos"]) == 1.0
    assert exact_match("Denver", ["Denver Broncos"]) == 0.0
    assert token_f1("Denver", ["Denver Broncos"]) == pytest.approx(2 / 3)
    assert token_f1("Denver Broncos won", ["Broncos", "Denver Broncos"]) == pytest.approx(0.8)
    assert token_f1("", ["x"]) == 0.0
    assert token_f1("the", ["a"]) == 0.0  # both normalise to nothing: no common token, 0 as in evaluate-v1.1.py


def test_contains_answer_matches_whole_words():
    assert contains_answer("It was won by the Denver Broncos in 2016.", ["denver broncos"])
    assert not contains_answer("Denverite Broncosaurus", ["Denver Broncos"])


def test_load_squad_sample(data_dir):
    data = load_qa(data_dir / "squad-v1.1-dev", limit=30)
    assert len(data.questions) == 30 and len(data.corpus) > 1000
    ids = {d.id for d in data.corpus}
    assert all(q.answers and q.relevant and q.relevant <= ids for q in data.questions)
    card = data.card()
    assert card["questions"] == 30 and card["licence"].startswith("CC BY-SA")


def test_skip_leaves_out_the_reported_range(data_dir):
    first = load_qa(data_dir / "squad-v1.1-dev", limit=30)
    later = load_qa(data_dir / "squad-v1.1-dev", limit=10, skip=25)
    assert [q.id for q in later.questions[:5]] == [q.id for q in first.questions[25:]]
    assert not {q.id for q in later.questions[5:]} & {q.id for q in first.questions}
    with pytest.raises(InputError, match="skip"):
        load_qa(data_dir / "squad-v1.1-dev", skip=-1)


def test_bad_answers_name_file_and_line(tmp_path):
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "p1", "text": "x"}) + "\n")
    (tmp_path / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": "x?", "answers": ["x"]}) + "\n"
        + json.dumps({"_id": "q2", "text": "y?", "answers": "y"}) + "\n"
    )
    with pytest.raises(InputError, match=r"queries.jsonl, line 2 \(question q2\)"):
        load_qa(tmp_path)
    with pytest.raises(InputError, match="missing"):
        load_qa(tmp_path / "nowhere")
