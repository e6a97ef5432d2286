"""Where the command line finds its commands: ``"module:function"`` paths, imported when the parser is built.

Each function takes an ``argparse`` subparsers object and adds one command (with its own subcommands if
it has any). Listing paths rather than importing keeps ``rag.cli`` free of heavy imports and lets each
package own its commands (the ``eval`` commands live with the evaluation code they run, ``bench`` with the
benchmarks): add a line here to add a command.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

# Top-level ``specrag`` commands (besides demo / index / ask: rag.cli.pipeline).
COMMANDS: list[str] = [
    "rag.cli.eval:add_eval_parser",
    "rag.cli.models:add_models_parser",
    "bench.generate:add_bench_parser",
    "eval.fit_filter:add_fit_filter_parser",
    "eval.data_info:add_data_parser",
]

# Subcommands of ``specrag eval``.
EVAL_COMMANDS: list[str] = [
    "eval.retrieval:add_retrieval_parser",
    "eval.chunking:add_chunking_parser",
    "eval.compression:add_compression_parser",
    "eval.rag_eval:add_rag_parser",
    "eval.rag_eval:add_merge_parser",
    "eval.recipes:add_recipes_parser",
    "eval.compare:add_compare_parser",
    "eval.conflict:add_conflict_parser",
    "eval.check:add_check_parser",
]


def resolve(path: str) -> Callable[..., Any]:
    """The function a ``"module:function"`` path names."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def add_all(subparsers: Any, paths: list[str]) -> None:
    """Call every adder in ``paths`` on ``subparsers``, in order."""
    for path in paths:
        resolve(path)(subparsers)
