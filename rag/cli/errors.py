"""How the command line turns failures into exit codes and one-line messages: the one place it handles errors.

0: done; 2: a usage error or a failure the user can fix (one ``specrag: error:`` line on stderr); 1: a bug
in specrag (traceback printed); 130: interrupted. ``--debug`` lets every exception through instead.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback
from typing import Callable

from rag.errors import SpecragError

# Failures a user causes and can fix: our own errors on bad input, a path that is missing, unreadable or of
# the wrong kind (OSError), and a value a dependency refuses (ValueError, which includes UnicodeDecodeError,
# json's and pydantic's errors). Each is one line on stderr and exit code 2, like an argparse usage error.
USER_ERRORS = (SpecragError, OSError, ValueError)


def run_command(
    command: Callable[[argparse.Namespace], int], args: argparse.Namespace, debug: bool | None = None
) -> int:
    """``command(args)``'s exit code, with every error turned into the exit codes this module documents.

    The one place the command line handles errors. ``debug=None`` reads ``args.debug`` (absent: off).
    """
    if debug is None:
        debug = bool(getattr(args, "debug", False))
    try:
        return int(command(args))
    except KeyboardInterrupt:
        if debug:
            raise
        print("specrag: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"specrag: error: {error_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        # Anything else (TypeError, AttributeError, KeyError, RuntimeError, ...) is a bug in specrag or in a
        # dependency, not something the user's input can fix: keep the traceback, which a bug report needs,
        # rather than a one-liner that would make them rerun (maybe an hour-long eval) with --debug.
        if debug:
            raise
        traceback.print_exc()
        print(f"specrag: internal error ({type(exc).__name__}); this is a bug: please report it with the "
              "traceback above", file=sys.stderr)
        return 1


def exit_codes(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Decorate a command function so that calling it directly (``args.func(args)``, as scripts, tests and
    ``python -m eval.chunking`` do) gives :func:`main`'s exit codes and error lines too, through
    :func:`run_command`; under :func:`main` an error is handled once, by the innermost call."""

    @functools.wraps(command)
    def wrapped(args: argparse.Namespace) -> int:
        return run_command(command, args)

    return wrapped


def error_line(exc: BaseException) -> str:
    """``exc`` as one line that names what is wrong: ``path: strerror`` for a file error, else its message."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{_path_text(exc.filename)}: {exc.strerror}"
        if exc.filename2 is not None:
            text += f" (and {_path_text(exc.filename2)})"
    else:
        text = str(exc).strip() or type(exc).__name__
        if not isinstance(exc, SpecragError):  # a dependency's message: say whose kind of error it is
            text = f"{type(exc).__name__}: {text}"
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _path_text(name: object) -> str:
    return os.fsdecode(name) if isinstance(name, bytes) else str(name)
