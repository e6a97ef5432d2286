"""Dataset cards for BEIR and QA folders: ``specrag data info DIR``.

    >>> from eval.data_info import dataset_card
    >>> dataset_card("../shared/data/scifact")["splits"]["test"]        # doctest: +SKIP
    {'queries': 300, 'judgements': 339}

A card names the folder, its kind (``qa`` when the queries carry ``answers``, else ``beir``), the number of
documents and queries, per qrels split the judged queries and judgements, and the licence given for the
folder in the data README's table (``../shared/data/README.md``) when there is one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rag.cli import exit_codes
from rag.errors import InputError
from rag.io import read_jsonl


def dataset_card(data_dir: str | Path) -> dict[str, Any]:
    """Name, kind, counts per split and licence of a BEIR-layout folder (QA folders included)."""
    from eval.beir import LAYOUT, read_qrels
    from eval.qa import _licence

    root = Path(data_dir)
    corpus_path, queries_path = root / "corpus.jsonl", root / "queries.jsonl"
    for path in (corpus_path, queries_path):
        if not path.is_file():
            raise InputError(f"{path}: missing; a data set folder holds {LAYOUT}")
    documents = sum(1 for _ in read_jsonl(corpus_path))
    queries = with_answers = answers = 0
    for _, record in read_jsonl(queries_path):
        queries += 1
        if isinstance(record.get("answers"), list) and record["answers"]:
            with_answers += 1
            answers += len(record["answers"])
    splits: dict[str, dict[str, int]] = {}
    for qrels_path in sorted((root / "qrels").glob("*.tsv")):
        qrels = read_qrels(qrels_path)
        splits[qrels_path.stem] = {"queries": len(qrels), "judgements": sum(len(j) for j in qrels.values())}
    card: dict[str, Any] = {
        "name": root.resolve().name,
        "kind": "qa" if with_answers else "beir",
        "path": str(root),
        "documents": documents,
        "queries": queries,
        "splits": splits,
        "licence": _licence(root.resolve()) or "unknown (not in the data README)",
    }
    if with_answers:
        card["queries_with_answers"] = with_answers
        card["answers_per_question"] = round(answers / with_answers, 2)
    return card


def format_card(card: dict[str, Any]) -> str:
    lines = [
        f"{card['name']} ({card['kind']})  {card['path']}",
        f"  documents   {card['documents']:,}",
        f"  queries     {card['queries']:,}"
        + (f"  ({card['queries_with_answers']:,} with answers, {card['answers_per_question']} each)"
           if card["kind"] == "qa" else ""),
    ]
    for split, counts in card["splits"].items():
        lines.append(f"  split {split:<24} {counts['queries']:,} judged queries, {counts['judgements']:,} judgements")
    lines.append(f"  licence     {card['licence']}")
    return "\n".join(lines)


def add_data_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    parser = subparsers.add_parser("data", help="describe evaluation data sets",
                                   description="Describe data set folders in the BEIR layout (QA sets included).")
    commands = parser.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    info = commands.add_parser(
        "info", help="print a data set's card: name, kind, counts per split, licence",
        description="Print a data set's card, then the card as one JSON line (the last line of stdout).",
        epilog="example:\n  specrag data info ../shared/data/squad-v1.1-dev",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.add_argument("dirs", nargs="+", metavar="DIR", help="data set folder(s)")
    info.set_defaults(func=info_command)
    return parser


@exit_codes
def info_command(args: argparse.Namespace) -> int:
    cards = [dataset_card(directory) for directory in args.dirs]
    print("\n\n".join(format_card(c) for c in cards))
    print(json.dumps(cards[0] if len(cards) == 1 else cards), flush=True)
    return 0
