"""The knowledge-conflict check: entity kinds, substitution in gold passages, judging, the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.conflict import (
    Conflict, answer_kind, build_conflicts, judge, parse_condition, read_records, run_condition, summarise,
)
from rag.errors import InputError

PASSAGES = [
    ("a-0", "Rivers", "The Rhine flows 1,230 kilometres. Its course was mapped in 1815 by Anna Weber, who lived "
                      "in Basel."),
    ("a-1", "Rivers", "The Danube team Blue Sharks won the race in 1920."),
    ("b-0", "Cities", "Warsaw was rebuilt after 1945 by Jan Kowalski. The city's team is Red Lions."),
    ("b-1", "Cities", "The palace was finished on March 3, 1790, in Krakow."),
]
QUESTIONS = [
    ("q1", "How long is the Rhine?", ["1,230"], "a-0"),
    ("q2", "In what year was its course mapped?", ["1815"], "a-0"),
    ("q3", "Who mapped the course of the Rhine?", ["Anna Weber", "Anna Weber"], "a-0"),
    ("q4", "Which team won the race?", ["Blue Sharks", "the Blue Sharks"], "a-1"),
    ("q5", "Who rebuilt Warsaw?", ["Jan Kowalski"], "b-0"),
    ("q6", "Which team is the city's?", ["Red Lions"], "b-0"),
    ("q7", "After which year was Warsaw rebuilt?", ["1945"], "b-0"),
    ("q8", "Why was it rebuilt?", ["because of the war"], "b-0"),  # a phrase: no kind
    ("q9", "Where was the palace?", ["Krakow", "in Krakow"], "b-1"),
]


def make_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    with (root / "corpus.jsonl").open("w") as handle:
        for pid, title, text in PASSAGES:
            handle.write(json.dumps({"_id": pid, "title": title, "text": text}) + "\n")
    with (root / "queries.jsonl").open("w") as handle:
        for qid, text, answers, _ in QUESTIONS:
            handle.write(json.dumps({"_id": qid, "text": text, "answers": answers}) + "\n")
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{qid}\t{pid}\t1\n" for qid, _, _, pid in QUESTIONS)
    )
    return root


@pytest.mark.parametrize(("question", "answer", "kind"), [
    ("In what year did it end?", "1945", "year"),
    ("When was it signed?", "March 3, 1790", "date"),
    ("How many members?", "1,230", "number"),
    ("Who wrote it?", "Ada Lovelace", "person"),
    ("Who funded it?", "Bank of England", None),  # a name with "of" is an organisation, not a person
    ("Where was it held?", "San Jose", "place"),
    ("Which NFL team won?", "Denver Broncos", "name:team"),
    ("In what city, north of here, is it?", "Chester", "name:city"),
    ("What is the AFC?", "American Football Conference", None),
    ("Why did it fail?", "lack of money", None),
])
def test_answer_kinds(question: str, answer: str, kind: str | None) -> None:
    assert answer_kind(question, answer) == kind


def test_conflicts_swap_an_answer_for_one_of_its_kind_from_another_article(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "qa")
    conflicts = build_conflicts(folder)
    by_id = {c.question_id: c for c in conflicts}
    assert "q8" not in by_id  # no kind
    assert "q1" not in by_id  # the only other number is in no other article
    titles = {pid: title for pid, title, _ in PASSAGES}
    answers_by_title: dict[str, set[str]] = {}
    for qid, _, answers, pid in QUESTIONS:
        answers_by_title.setdefault(titles[pid], set()).update(answers)
    for conflict in conflicts:
        assert conflict.kind == answer_kind(conflict.question, conflict.original)
        assert conflict.substitute not in answers_by_title[conflict.title]
        assert conflict.original not in conflict.conflicting_passage
        assert conflict.substitute in conflict.conflicting_passage
        assert conflict.conflicting_passage == conflict.passage.replace(conflict.original, conflict.substitute)
    assert by_id["q2"].substitute == "1945" and by_id["q7"].substitute == "1815"
    assert by_id["q4"].original == "Blue Sharks" and by_id["q4"].substitute == "Red Lions"
    assert by_id["q6"].substitute == "Blue Sharks"
    assert by_id["q3"].substitute == "Jan Kowalski" and by_id["q5"].substitute == "Anna Weber"
    assert build_conflicts(folder) == conflicts  # seeded: the same folder gives the same conflicts
    assert [c.question_id for c in build_conflicts(folder, limit=3)] == ["q2", "q3"]


def test_answers_are_judged_against_the_substitute_first() -> None:
    conflict = Conflict("q", "Who?", "person", "Anna Weber", ("Anna Weber",), "Jan Kowalski", "p", "t", "", "")
    assert judge("Jan Kowalski.", conflict) == "passage"
    assert judge("It was Anna Weber", conflict) == "memory"
    assert judge("Anna Weber or Jan Kowalski", conflict) == "passage"
    assert judge("I do not know", conflict) == "other"


def test_conditions_are_checked() -> None:
    assert parse_condition("closed-book") == ("closed-book", 0.0)
    assert parse_condition("substituted@0.5") == ("substituted", 0.5)
    for wrong in ("original@1", "substituted@x", "substituted@-1", "swapped"):
        with pytest.raises(InputError, match="condition"):
            parse_condition(wrong)


def test_every_condition_runs_on_a_real_engine_and_is_summarised(tmp_path: Path) -> None:
    from tests.eval.test_rag_eval import make_tiny_lm

    model = make_tiny_lm(tmp_path / "lm")
    conflicts = build_conflicts(make_folder(tmp_path / "qa"))
    out = tmp_path / "run"
    out.mkdir()
    params = {"model": str(model), "engine": "transformers:float32", "max_new_tokens": 4}
    for condition in ("closed-book", "original", "substituted", "substituted@1"):
        records = run_condition(conflicts, condition, params, out=out / f"{condition}.jsonl")
        assert [r["question_id"] for r in records] == [c.question_id for c in conflicts]
        assert all(r["judged"] in ("passage", "memory", "other") and r["condition"] == condition for r in records)
    summary = summarise(read_records(out))
    assert set(summary) == {"closed-book", "original", "substituted", "substituted@1"}
    for row in summary.values():
        assert row["questions"] == len(conflicts)
        assert row["passage"] + row["memory"] + row["other"] == pytest.approx(1.0, abs=0.002)


def test_the_command_runs_known_only_conditions_where_the_model_knows_the_answer(tmp_path: Path, capsys) -> None:
    from rag.cli import main
    from tests.eval.test_rag_eval import make_tiny_lm

    model = make_tiny_lm(tmp_path / "lm")
    folder = make_folder(tmp_path / "qa")
    out = tmp_path / "run"
    sets = ["--set", f"generator.model={model}", "--set", "generator.engine=transformers:float32",
            "--set", "generator.max_new_tokens=4"]
    code = main(["--threads", "1", "eval", "conflict", "--data", str(folder), "--out", str(out), "--known-only",
                 "--conditions", "closed-book", "substituted", *sets])
    assert code == 0
    closed = [json.loads(line) for line in (out / "closed-book.jsonl").read_text().splitlines()]
    known = {r["question_id"] for r in closed if r["judged"] == "memory"}
    answered = out / "substituted.jsonl"
    assert {json.loads(line)["question_id"] for line in answered.read_text().splitlines()} == known if known else (
        not answered.exists())
    assert len((out / "conflicts.jsonl").read_text().splitlines()) == len(closed) == len(build_conflicts(folder))
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["summary"]["closed-book"]["questions"] == (len(known) if known else len(closed))
    code = main(["eval", "conflict", "--data", str(folder), "--out", str(out), "--known-only",
                 "--conditions", "substituted", "closed-book"])
    assert code == 2 and "closed-book as the first condition" in capsys.readouterr().err
    # runs over disjoint question ranges are summarised together
    second = tmp_path / "second"
    assert main(["--threads", "1", "eval", "conflict", "--data", str(folder), "--out", str(second), "--skip", "4",
                 "--conditions", "closed-book", *sets]) == 0
    capsys.readouterr()
    assert main(["eval", "conflict", "--summarise", str(out), str(second)]) == 0
    together = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    later = len([c for c in build_conflicts(folder) if c.question_id not in {"q1", "q2", "q3", "q4"}])
    assert together["summary"]["closed-book"]["questions"] == (len(known) if known else len(closed) + later)
    assert main(["eval", "conflict", "--out", str(out)]) == 2
