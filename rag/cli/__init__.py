"""The ``specrag`` command line. ``specrag --help`` lists the commands; each has its own ``--help``.

| module | holds |
|---|---|
| :mod:`rag.cli.main` | :func:`main`, the top-level parser, ``--threads`` and ``--debug`` |
| :mod:`rag.cli.errors` | exit codes and one-line error messages (:func:`run_command`, :func:`exit_codes`) |
| :mod:`rag.cli.args` | argument types and ``--set ROLE.KEY=VALUE`` parsing, shared by the commands |
| :mod:`rag.cli.commands` | where each command is found (``"module:function"`` paths, imported when the parser is built) |
| :mod:`rag.cli.pipeline` | ``demo``, ``index``, ``ask`` |
| :mod:`rag.cli.models` | ``models list``, ``models fetch`` |
| :mod:`rag.cli.eval` | the ``eval`` group; its commands live with the evaluation code they run (``eval/``), the ``bench`` commands with the benchmarks (``bench/``) |

A package adds a command by writing an ``add_*_parser(subparsers)`` function and listing its path in
:mod:`rag.cli.commands`; the core never imports ``eval`` or ``bench`` at module level.
"""

from rag.cli.errors import error_line, exit_codes, run_command
from rag.cli.main import main

__all__ = ["error_line", "exit_codes", "main", "run_command"]
