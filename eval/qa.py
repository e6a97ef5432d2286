"""QA data sets with answers (the BEIR layout plus ``answers``) and the standard answer metrics.

    >>> from eval.qa import exact_match, token_f1, normalize_answer
    >>> normalize_answer("The  Eiffel Tower!")
    'eiffel tower'
    >>> exact_match("the Eiffel tower", ["Eiffel Tower"]), round(token_f1("Eiffel", ["Eiffel Tower"]), 3)
    (1.0, 0.667)

A QA folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``,
``answers``: a list of strings) and, optionally, ``qrels/SPLIT.tsv`` naming the passages that hold each
answer. :func:`load_qa` reads one; the metrics follow the official SQuAD v1.1 evaluation script
(lower case, no punctuation, no articles ``a``/``an``/``the``, white space collapsed).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from rag.errors import InputError
from rag.io import read_documents, read_jsonl
from rag.types import Document

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


@dataclass(frozen=True)
class QAQuestion:
    """A question, its accepted answers and the ids of the passages judged relevant (from the qrels)."""

    id: str
    text: str
    answers: tuple[str, ...]
    relevant: frozenset[str] = frozenset()


@dataclass
class QADataset:
    """A QA data set: passages to retrieve from and questions with answers."""

    name: str
    split: str
    corpus: list[Document]
    questions: list[QAQuestion]
    licence: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def card(self) -> dict[str, object]:
        """Name, split and counts, for printing and for run directories."""
        return {
            "name": self.name,
            "split": self.split,
            "passages": len(self.corpus),
            "questions": len(self.questions),
            "answers_per_question": round(sum(len(q.answers) for q in self.questions) / max(1, len(self.questions)), 2),
            "questions_with_qrels": sum(1 for q in self.questions if q.relevant),
            **({"licence": self.licence} if self.licence else {}),
        }


def load_qa(data_dir: str | Path, split: str = "test", limit: int | None = None, skip: int = 0) -> QADataset:
    """Read a QA folder. ``limit`` keeps the first ``limit`` questions (in file order) after the first ``skip``
    (settings are chosen on questions outside the reported range: ``skip=300`` beside a ``limit=300`` report),
    and the whole corpus.

    Errors name the file and line: a question without ``_id``/``text``, ``answers`` that are not a
    non-empty list of strings.
    """
    root = Path(data_dir)
    corpus_path, queries_path = root / "corpus.jsonl", root / "queries.jsonl"
    for path in (corpus_path, queries_path):
        if not path.is_file():
            raise InputError(f"{path}: missing; a QA folder holds corpus.jsonl, queries.jsonl (with answers) and qrels/")
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}")
    if skip < 0:
        raise InputError(f"skip must be at least 0, got {skip}")
    relevant: dict[str, set[str]] = {}
    qrels_path = root / "qrels" / f"{split}.tsv"
    if qrels_path.is_file():
        from eval.beir import read_qrels

        for qid, judged in read_qrels(qrels_path).items():
            relevant[qid] = {doc for doc, grade in judged.items() if grade > 0}
    questions: list[QAQuestion] = []
    for number, record in read_jsonl(queries_path):
        qid, text, answers = record.get("_id", record.get("id")), record.get("text"), record.get("answers")
        if qid is None or not isinstance(text, str) or not text.strip():
            raise InputError(f"{queries_path}, line {number}: a question needs an '_id' and a non-empty 'text'")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise InputError(
                f"{queries_path}, line {number} (question {qid}): 'answers' must be a non-empty list of strings"
            )
        if skip:
            skip -= 1
            continue
        questions.append(QAQuestion(str(qid), text, tuple(answers), frozenset(relevant.get(str(qid), ()))))
        if limit is not None and len(questions) >= limit:
            break
    if not questions:
        raise InputError(f"{queries_path}: no questions")
    return QADataset(
        name=root.name, split=split, corpus=read_documents(corpus_path), questions=questions,
        licence=_licence(root),
    )


def _licence(root: Path) -> str:
    """The licence named for this folder in the data README's table, when there is one."""
    readme = root.parent / "README.md"
    if not readme.is_file():
        return ""
    for line in readme.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].strip("`").rstrip("/") == root.name:
            return cells[3]
    return ""


# -- metrics (SQuAD v1.1 definitions) ----------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse white space (SQuAD's normalisation)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised answer, else 0.0."""
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(a) for a in answers))


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """The best token-overlap F1 between the prediction and any answer (normalised bags of words)."""
    return max((_f1(normalize_answer(prediction).split(), normalize_answer(a).split()) for a in answers), default=0.0)


def _f1(predicted: list[str], gold: list[str]) -> float:
    # As SQuAD v1.1's and HotpotQA's official scripts: no common token (an empty side included) scores 0.
    # (SQuAD v2.0 scores two empty answers 1 for its unanswerable questions; these sets have none.)
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def contains_answer(text: str, answers: Iterable[str]) -> bool:
    """Whether any normalised answer occurs in the normalised ``text`` ("accuracy" in FlashRAG's sense)."""
    haystack = f" {normalize_answer(text)} "
    return any(f" {normalize_answer(a)} " in haystack for a in answers if normalize_answer(a))
