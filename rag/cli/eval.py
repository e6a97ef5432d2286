"""``specrag eval``: the group that holds the evaluation commands listed in :data:`rag.cli.commands.EVAL_COMMANDS`."""

from __future__ import annotations

import argparse


def add_eval_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Register ``eval`` and its commands on the top-level ``specrag`` subparsers; returns the ``eval`` parser."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate retrieval on a data set",
        description="Evaluate specrag components on data sets in the BEIR layout.",
    )
    commands = parser.add_subparsers(dest="eval_command", metavar="COMMAND", required=True)
    from rag.cli.commands import EVAL_COMMANDS, add_all

    add_all(commands, EVAL_COMMANDS)
    return parser
