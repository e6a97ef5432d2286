"""Knowledge conflicts: does the generator follow a passage that contradicts what the model memorised?

``specrag eval conflict`` builds the check of issue 26 from a QA set with gold passages (SQuAD): for each
question whose answer is a typed entity (a year, a number, a date, a person, a place or another proper name,
judged from the answer's shape and the question word), the answer is replaced everywhere in its gold
passage by an answer of the same kind from a question about another article (entity substitution, as in
Longpre et al., "Entity-Based Knowledge Conflicts in Question Answering"). The generator then answers from
that passage alone, and each answer is counted as following the passage (it contains the substitute), its
memory (it contains the original answer and not the substitute) or neither. The same questions are also
answered closed book (no passage: what the model knows) and from the unmodified passage, and the
substituted passages are answered with context-aware decoding at each ``a`` asked
(:mod:`rag.generation.contrast`), so that the effect of the contrast is measured on the same questions.

    >>> from eval.conflict import answer_kind
    >>> answer_kind("In what year did the war end?", "1945"), answer_kind("Who wrote it?", "Ada Lovelace")
    ('year', 'person')
    >>> answer_kind("Which NFL team won?", "Denver Broncos"), answer_kind("What is the AFC?", "A conference")
    ('name:team', None)

Each condition's answers go to ``OUT/CONDITION.jsonl`` (one record per question), so conditions can run in
separate processes into one folder; the summary covers the questions every condition file found there
answered. ``--known-only`` answers the other conditions only on the questions the model answers correctly
closed book: the real conflicts with its memory (few for a small model).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from eval.qa import contains_answer, load_qa, normalize_answer
from rag.cli import exit_codes
from rag.cli.args import non_negative_int
from rag.errors import InputError

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
_YEAR = re.compile(r"^(1[0-9]|20)\d\d$")
_NUMBER = re.compile(r"^\d[\d,]*(\.\d+)?$")
_DATE = re.compile(rf"^({'|'.join(MONTHS)})( \d{{1,2}})?(, \d{{4}})?$|^\d{{1,2}} ({'|'.join(MONTHS)})( \d{{4}})?$")
# A proper name: one to four capitalised words, "of"/"de"/"and"/"the" allowed inside.
_NAME = re.compile(r"^[A-Z][\w'.-]*( (of|de|and|the|[A-Z][\w'.-]*)){0,3}$")
_PLACE_WORDS = ("where", "what city", "which city", "what country", "which country", "what state", "which state",
                "what region", "which region")


@dataclass(frozen=True)
class Conflict:
    """One question whose gold passage now holds ``substitute`` wherever it held ``original``."""

    question_id: str
    question: str
    kind: str
    original: str
    answers: tuple[str, ...]
    substitute: str
    passage_id: str
    title: str
    passage: str
    conflicting_passage: str


def answer_kind(question: str, answer: str) -> str | None:
    """The kind of entity ``answer`` is, or ``None`` when it is not one that can be swapped for another of its
    kind (a phrase, a description).

    Without a named-entity tagger (none comes from PyPI with weights), the kind is read from the answer's
    shape and the question: ``year``, ``date`` and ``number`` by shape; a capitalised name is a ``person``
    for who-questions, a ``place`` for where-questions, and ``name:NOUN`` for "what/which NOUN"
    questions (``name:team``, ``name:city``), so that a team is swapped for a team and a venue for a venue.
    """
    answer = answer.strip()
    if _YEAR.match(answer):
        return "year"
    if _DATE.match(answer):
        return "date"
    if _NUMBER.match(answer):
        return "number"
    if not _NAME.match(answer) or answer.split()[0] in MONTHS:
        return None
    words = question.strip().rstrip("?").split()
    first = words[0].lower() if words else ""
    if first in ("who", "whom", "whose"):
        return "person" if not set(answer.split()) & {"of", "and", "the", "The", "de"} else None
    if first == "where":
        return "place"
    for position, word in enumerate(words[:3]):
        if word.lower() in ("what", "which"):
            # the noun the question asks for: the first lower-case word after what/which, past names and
            # acronyms ("Which NFL team" -> team); none when a verb follows ("What is ...").
            for noun in words[position + 1:position + 4]:
                if noun[:1].isupper():
                    continue
                noun = noun.lower().strip(",.;:'\"")
                return None if noun in _NOT_NOUNS or not noun else f"name:{noun}"
            return None
    return None


# Words after "what"/"which" that are not the noun asked for.
_NOT_NOUNS = frozenset("is was are were does did do has have had can could would will should may might of "
                       "in on at to for by from with about as a an the".split())


def _shortest_common(answers: Sequence[str]) -> str | None:
    """The shortest answer, when every other answer contains it (one entity, written more or less fully)."""
    shortest = min((a.strip() for a in answers), key=len)
    if not shortest or not all(normalize_answer(shortest) in normalize_answer(a) for a in answers):
        return None
    return shortest


def build_conflicts(data_dir: str | Path, limit: int | None = None, skip: int = 0, seed: int = 0) -> list[Conflict]:
    """Knowledge conflicts from the first ``limit`` questions after ``skip`` of a QA folder with gold passages.

    A question takes part when its answers name one entity of a kind :func:`answer_kind` knows, its gold
    passage (``qrels/test.tsv``) holds that answer verbatim, and another question of the folder, about a
    different article (title), has an answer of the same kind that the passage does not mention. The
    substitute is drawn from those with a random generator seeded by ``seed`` and the question id, so the
    same folder always gives the same conflicts.
    """
    import random

    every = load_qa(data_dir)  # the substitute pool: answers of every question in the folder
    chosen = load_qa(data_dir, limit=limit, skip=skip)
    passages = {doc.id: doc for doc in every.corpus}
    pool: dict[str, list[tuple[str, str]]] = {}  # kind -> (answer, title of its article), one per answer text
    seen: set[tuple[str, str]] = set()
    for question in every.questions:
        answer = _shortest_common(question.answers)
        kind = answer_kind(question.text, answer) if answer else None
        title = next((passages[p].title for p in sorted(question.relevant) if p in passages), "")
        if kind and title and (kind, normalize_answer(answer)) not in seen:
            seen.add((kind, normalize_answer(answer)))
            pool.setdefault(kind, []).append((answer, title))
    conflicts = []
    for question in chosen.questions:
        answer = _shortest_common(question.answers)
        kind = answer_kind(question.text, answer) if answer else None
        gold = [passages[p] for p in sorted(question.relevant) if p in passages]
        if kind is None or len(gold) != 1 or answer not in gold[0].text:
            continue
        passage = gold[0]
        text = f" {normalize_answer(passage.title + ' ' + passage.text)} "
        candidates = [a for a, title in pool[kind] if title != passage.title and f" {normalize_answer(a)} " not in text
                      and normalize_answer(a) != normalize_answer(answer)]
        if not candidates:
            continue
        digest = hashlib.sha256(f"{seed}:{question.id}".encode()).digest()
        substitute = random.Random(digest).choice(candidates)
        conflicting = passage.text.replace(answer, substitute)
        conflicts.append(Conflict(
            question_id=question.id, question=question.text, kind=kind, original=answer,
            answers=tuple(question.answers), substitute=substitute, passage_id=passage.id, title=passage.title,
            passage=passage.text, conflicting_passage=conflicting,
        ))
    return conflicts


def judge(answer: str, conflict: Conflict) -> str:
    """``"passage"`` when the answer holds the substitute, ``"memory"`` when it holds an original answer and
    not the substitute, ``"other"`` otherwise."""
    if contains_answer(answer, [conflict.substitute]):
        return "passage"
    if contains_answer(answer, conflict.answers):
        return "memory"
    return "other"


# Which paragraph the generator reads: none, the gold one, or the gold one with the answer swapped (which
# "substituted@A" reads with context-aware decoding at a = A).
BASE_CONDITIONS = ("closed-book", "original", "substituted")


def parse_condition(name: str) -> tuple[str, float]:
    """``"closed-book"``, ``"original"``, ``"substituted"`` or ``"substituted@A"`` (context-aware decoding
    with ``a = A``) -> (passage, a)."""
    passage, _, alpha = name.partition("@")
    if passage not in BASE_CONDITIONS or (alpha and passage != "substituted"):
        raise InputError(f"eval conflict: unknown condition {name!r}; use closed-book, original, substituted or "
                         "substituted@A (context-aware decoding with a = A)")
    try:
        value = float(alpha) if alpha else 0.0
    except ValueError:
        raise InputError(f"eval conflict: condition {name!r}: {alpha!r} is not a number") from None
    if value < 0:
        raise InputError(f"eval conflict: condition {name!r}: a must be at least 0")
    return passage, value


def run_condition(conflicts: Iterable[Conflict], condition: str, generator_params: dict[str, Any] | None = None,
                  out: Path | None = None) -> list[dict[str, Any]]:
    """Answer every conflict under ``condition`` with a short-answer grounded generator (``generator_params``
    override its defaults); one record per question, appended to ``out`` as it is answered when given."""
    from tqdm import tqdm

    from rag.generation.generator import GroundedGenerator
    from rag.types import Chunk, Context, Hit

    passage_kind, alpha = parse_condition(condition)
    params = {"answer_style": "short", **(generator_params or {}), "context_aware": alpha}
    generator = GroundedGenerator(**params)
    records = []
    handle = out.open("w", encoding="utf-8") if out is not None else None
    try:
        for conflict in tqdm(list(conflicts), desc=condition, unit="question"):
            if passage_kind == "closed-book":
                context = Context(passages=())
            else:
                text = conflict.passage if passage_kind == "original" else conflict.conflicting_passage
                chunk = Chunk(id=conflict.passage_id, doc_id=conflict.passage_id, text=text, start=0,
                              end=len(text), title=conflict.title)
                context = Context.from_hits([Hit(chunk=chunk, score=1.0, source="gold")])
            started = time.perf_counter()
            answer = generator.generate(conflict.question, context)
            record = {"question_id": conflict.question_id, "condition": condition, "answer": answer.text,
                      "judged": judge(answer.text, conflict), "seconds": time.perf_counter() - started,
                      "engine": answer.trace.stages[0].extra.get("engine")}
            records.append(record)
            if handle is not None:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
    finally:
        if handle is not None:
            handle.close()
    return records


def summarise(records_by_condition: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per condition: questions, the share judged passage / memory / other, and mean seconds; on the
    questions every condition answered. Where closed-book answers exist, the same shares again on the
    questions the model answers correctly closed book (where its memory is known to hold the original)."""
    common = set.intersection(*(set(r["question_id"] for r in rows) for rows in records_by_condition.values()))
    known = {r["question_id"] for r in records_by_condition.get("closed-book", []) if r["judged"] == "memory"}
    summary: dict[str, dict[str, Any]] = {}
    for condition, rows in records_by_condition.items():
        rows = [r for r in rows if r["question_id"] in common]
        entry: dict[str, Any] = {"questions": len(rows), **_shares(rows),
                                 "seconds": round(sum(r["seconds"] for r in rows) / max(1, len(rows)), 3)}
        if known:
            entry["known"] = {"questions": sum(r["question_id"] in known for r in rows),
                              **_shares([r for r in rows if r["question_id"] in known])}
        summary[condition] = entry
    return summary


def _shares(rows: list[dict[str, Any]]) -> dict[str, float]:
    n = max(1, len(rows))
    return {judged: round(sum(r["judged"] == judged for r in rows) / n, 3) for judged in ("passage", "memory", "other")}


def paired_difference(records_by_condition: dict[str, list[dict[str, Any]]], base: str, other: str,
                      judged: str = "passage") -> dict[str, float]:
    """The difference ``other - base`` in the share of answers judged ``judged``, with a paired bootstrap
    interval over the questions both answered (:func:`eval.compare.paired_bootstrap`)."""
    from eval.compare import paired_bootstrap

    a = {r["question_id"]: float(r["judged"] == judged) for r in records_by_condition[base]}
    b = {r["question_id"]: float(r["judged"] == judged) for r in records_by_condition[other]}
    ids = sorted(set(a) & set(b))
    return paired_bootstrap([a[i] for i in ids], [b[i] for i in ids])


def read_records(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Every condition's records in a conflict run folder."""
    records = {}
    for path in sorted(out.glob("*.jsonl")):
        if path.name == "conflicts.jsonl":
            continue
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if rows:
            records[rows[0]["condition"]] = rows
    return records


def format_summary(summary: dict[str, dict[str, Any]], differences: dict[str, dict[str, float]]) -> str:
    lines = [f"{'condition':<18} {'questions':>9} {'passage':>8} {'memory':>7} {'other':>6} {'s/answer':>9}"
             "   known closed book: n  passage  memory"]
    for condition, row in summary.items():
        known = row.get("known")
        tail = f"   {known['questions']:>20}  {known['passage']:>7.3f}  {known['memory']:>6.3f}" if known else ""
        lines.append(f"{condition:<18} {row['questions']:>9} {row['passage']:>8.3f} {row['memory']:>7.3f} "
                     f"{row['other']:>6.3f} {row['seconds']:>9.2f}{tail}")
    for name, diff in differences.items():
        lines.append(f"{name}: {diff['delta']:+.3f} [{diff['ci_low']:+.3f}, {diff['ci_high']:+.3f}]")
    return "\n".join(lines)


def add_conflict_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "conflict",
        help="knowledge conflicts: answers from gold passages whose answer entity was swapped (SQuAD)",
        description=(
            "Replace each typed answer entity in its gold passage with another entity of the same kind, answer\n"
            "from that passage, and count answers that follow the passage or the model's memory; with the\n"
            "closed-book and unmodified-passage answers beside them, and context-aware decoding at each a asked.\n"
            "Prints a table, then the summary as one JSON line (the last line of stdout)."
        ),
        epilog=(
            "example:\n  specrag --threads 1 eval conflict --data ../shared/data/squad-v1.1-dev --limit 1000 "
            "--out runs/conflict \\\n      --conditions closed-book original substituted substituted@0.5 substituted@1"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", metavar="DIR", help="QA folder with gold passages in qrels/test.tsv")
    parser.add_argument("--limit", type=int, metavar="N", help="take conflicts from the first N questions")
    parser.add_argument("--skip", type=non_negative_int, default=0, metavar="N", help="skip the first N questions")
    parser.add_argument("--seed", type=int, default=0, help="seed of the substitute draw (default 0)")
    parser.add_argument("--conditions", nargs="+", default=["closed-book", "original", "substituted",
                                                             "substituted@0.5", "substituted@1"],
                        help="closed-book, original, substituted, substituted@A (default: all, a = 0.5 and 1)")
    parser.add_argument("--known-only", action="store_true",
                        help="answer the other conditions only where the closed-book answer holds the original "
                             "(a real conflict with the model's memory); closed-book must be the first condition")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="generator.KEY=VALUE",
                        help="a generator parameter (for example generator.engine=transformers:float32)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="run folder (one file per condition)")
    parser.add_argument("--summarise", nargs="+", type=Path, metavar="RUN",
                        help="only print the summary of these run folders taken together (runs of disjoint "
                             "question ranges, e.g. --skip 0 --limit 500 and --skip 500 --limit 500)")
    parser.set_defaults(func=conflict_command)
    return parser


@exit_codes
def conflict_command(args: argparse.Namespace) -> int:
    from rag.cli.args import parse_settings

    if args.summarise:
        records: dict[str, list[dict[str, Any]]] = {}
        for run in args.summarise:
            if not run.is_dir():
                raise InputError(f"eval conflict --summarise: {run} is not a run folder")
            for condition, rows in read_records(run).items():
                records.setdefault(condition, []).extend(rows)
        if not records:
            raise InputError(f"eval conflict --summarise: no answers in {', '.join(map(str, args.summarise))}")
        _print_summary(records)
        return 0
    if args.data is None or args.out is None:
        raise InputError("eval conflict: --data and --out are needed (or --summarise RUN...)")
    settings = parse_settings(args.settings)
    unknown = set(settings) - {"generator"}
    if unknown:
        raise InputError(f"eval conflict: --set names {sorted(unknown)}; only generator.KEY=VALUE applies here")
    for condition in args.conditions:
        parse_condition(condition)
    if args.known_only and args.conditions[0] != "closed-book":
        raise InputError("eval conflict: --known-only needs closed-book as the first condition (it finds the "
                         "questions whose answer the model knows)")
    conflicts = build_conflicts(args.data, limit=args.limit, skip=args.skip, seed=args.seed)
    if not conflicts:
        raise InputError(f"eval conflict: no question of {args.data} has a swappable answer entity")
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "conflicts.jsonl").open("w", encoding="utf-8") as handle:
        for conflict in conflicts:
            handle.write(json.dumps(asdict(conflict)) + "\n")
    kinds: dict[str, int] = {}
    for conflict in conflicts:
        kinds[conflict.kind] = kinds.get(conflict.kind, 0) + 1
    print(f"{len(conflicts)} conflicts: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())), file=sys.stderr)
    for condition in args.conditions:
        records = run_condition(conflicts, condition, settings.get("generator"), out=args.out / f"{condition}.jsonl")
        if args.known_only and condition == "closed-book":
            known = {r["question_id"] for r in records if r["judged"] == "memory"}
            conflicts = [c for c in conflicts if c.question_id in known]
            print(f"the model answers {len(conflicts)} of {len(records)} questions closed book: the other "
                  "conditions run on those", file=sys.stderr)
            if not conflicts:
                break
    _print_summary(read_records(args.out))
    return 0


def _print_summary(records: dict[str, list[dict[str, Any]]]) -> None:
    summary = summarise(records)
    differences = {f"passage share, {name} - substituted": paired_difference(records, "substituted", name)
                   for name in records if name.startswith("substituted@") and "substituted" in records}
    print(format_summary(summary, differences))
    print(json.dumps({"summary": summary, "differences": differences}), flush=True)
