"""``specrag``: the top-level parser, ``--threads`` and ``--debug``, and :func:`main`."""

from __future__ import annotations

import argparse
import os
from typing import Sequence

from rag.cli.args import thread_count
from rag.cli.errors import run_command
from rag.cli.pipeline import add_pipeline_parsers
from rag.errors import InputError

THREADS_ENV = "SPECRAG_THREADS"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``specrag`` command line on ``argv``; returns the exit code.

    0: done; 2: a usage error or a failure the user can fix (printed as one ``specrag: error:`` line);
    1: a bug in specrag (traceback printed); 130: interrupted. ``--debug`` lets every exception through
    with its full traceback instead.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2

    def command(args: argparse.Namespace) -> int:
        _set_threads(args.threads)  # inside, so that a bad $SPECRAG_THREADS is one line too
        return int(args.func(args))

    return run_command(command, args, debug=args.debug)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specrag",
        description="Retrieval-augmented generation on a CPU: index documents, ask questions with cited "
        "answers, evaluate retrieval, manage the offline model packs.",
        epilog="Start with: specrag demo   (indexes the standard library's docstrings and answers a question)",
    )
    parser.add_argument("--threads", type=thread_count, default=None,
                        help=f"torch threads (default: ${THREADS_ENV} if set, else all cores)")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback instead of one line (give it before COMMAND)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    add_pipeline_parsers(sub)
    from rag.cli.commands import COMMANDS, add_all

    add_all(sub, COMMANDS)
    return parser


def threads_from_env() -> int | None:
    """``$SPECRAG_THREADS`` as a thread count; ``None`` when unset or empty. A bad value is an InputError."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return None
    try:
        return thread_count(raw)
    except argparse.ArgumentTypeError as exc:
        raise InputError(f"{THREADS_ENV}={os.environ[THREADS_ENV]!r}: {exc} (e.g. {THREADS_ENV}=4)") from None


def _set_threads(threads: int | None) -> None:
    if threads is None:
        threads = threads_from_env()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)

