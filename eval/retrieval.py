"""Retrieval evaluation on a BEIR-layout data set, from Python or ``specrag eval retrieval``.

    >>> from eval.retrieval import run_retrieval
    >>> result = run_retrieval("../shared/data/scifact", "dense", limit=20)   # doctest: +SKIP
    >>> sorted(result)                                                         # doctest: +SKIP
    ['dataset', 'documents', 'index', 'index_seconds', 'k', 'load_seconds', 'mrr@10', 'ndcg@10', ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from eval.beir import load_beir
from eval.metrics import evaluate_run, hits_to_run
from rag.errors import InputError, SpecragError
from rag.registry import Component, build, known

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def load_index_spec(spec: "str | Path | Mapping[str, Any] | Component") -> Any:
    """An index built from a registered name, a ``{"type", "params"}`` mapping, or a YAML/JSON file of one."""
    if isinstance(spec, (Mapping, Component)):
        return build("index", spec)
    text = str(spec)
    if text in known("index"):
        return build("index", text)
    path = Path(text)
    if path.is_file():
        return build("index", _read_config(path))
    if path.suffix in CONFIG_SUFFIXES:
        raise InputError(f"{path}: no such index config file")
    raise InputError(
        f"index {text!r} is neither a registered index ({', '.join(known('index'))}) "
        f"nor a YAML/JSON config file holding {{type, params}}"
    )


def _read_config(path: Path) -> Any:
    import yaml

    content = path.read_text(encoding="utf-8")
    try:
        return json.loads(content) if path.suffix == ".json" else yaml.safe_load(content)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({exc})") from None


def run_retrieval(
    data_dir: str | Path,
    index_spec: "str | Path | Mapping[str, Any] | Component",
    split: str = "test",
    limit: int | None = None,
    k: int = 100,
) -> dict[str, Any]:
    """Index a data set's corpus (one chunk per document), search every query, and score the results.

    ``limit`` evaluates the first ``limit`` queries against their judged documents plus
    25 other documents per query (see :meth:`eval.beir.BeirDataset.subset`). Returns a flat dict:
    ``dataset``, ``split``, ``index`` (its config), ``ndcg@10``, ``recall@100``, ``mrr@10``, ``queries``,
    ``documents``, ``k``, ``load_seconds`` (model loading), ``index_seconds`` (chunking and indexing)
    and ``search_qps`` (all queries in one batch call).
    """
    dataset = load_beir(data_dir, split)
    if limit is not None:
        dataset = dataset.subset(limit)
    index = load_index_spec(index_spec)
    chunker = build("chunker", "document")

    started = time.perf_counter()
    warm_up = getattr(index, "warm_up", None)  # indexes with models load them here, not inside the timings
    if callable(warm_up):
        warm_up()
    load_seconds = time.perf_counter() - started

    started = time.perf_counter()
    index.add(chunker.chunk_many(dataset.corpus))
    index_seconds = time.perf_counter() - started

    query_ids = list(dataset.queries)
    started = time.perf_counter()
    hits = index.search([dataset.queries[q] for q in query_ids], k)
    search_seconds = time.perf_counter() - started

    metrics = evaluate_run(hits_to_run(query_ids, hits), dataset.qrels)
    return {
        "dataset": dataset.name,
        "split": split,
        "index": index.to_config(),
        **metrics,
        "queries": len(query_ids),
        "documents": len(dataset.corpus),
        "k": k,
        "load_seconds": round(load_seconds, 3),
        "index_seconds": round(index_seconds, 3),
        "search_qps": round(len(query_ids) / search_seconds, 1) if search_seconds > 0 else float("inf"),
    }


def format_result(result: Mapping[str, Any]) -> str:
    """A few aligned lines for a terminal."""
    docs_per_second = result["documents"] / result["index_seconds"] if result["index_seconds"] else float("inf")
    return "\n".join(
        [
            f"{result['dataset']} ({result['split']}): {result['queries']} queries, {result['documents']} documents, "
            f"index {result['index']['type']}",
            f"  ndcg@10     {result['ndcg@10']:.4f}",
            f"  recall@100  {result['recall@100']:.4f}",
            f"  mrr@10      {result['mrr@10']:.4f}",
            f"  indexing    {result['index_seconds']:.1f} s ({docs_per_second:.0f} documents/s), "
            f"model load {result['load_seconds']:.1f} s",
            f"  search      {result['search_qps']:.0f} queries/s",
        ]
    )


# -- command line ----------------------------------------------------------------------------------


def add_eval_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Register ``eval`` and its commands on the top-level ``specrag`` subparsers; returns the ``eval`` parser.

    Each ``eval`` command is one ``add_*_parser`` function listed in :data:`rag.commands.EVAL_COMMANDS`.
    """
    parser = subparsers.add_parser(
        "eval",
        help="evaluate retrieval on a data set",
        description="Evaluate specrag components on data sets in the BEIR layout.",
    )
    commands = parser.add_subparsers(dest="eval_command", metavar="COMMAND", required=True)
    from rag.commands import EVAL_COMMANDS, add_all

    add_all(commands, EVAL_COMMANDS)
    return parser


def add_retrieval_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "retrieval",
        help="index a corpus, search its queries, report nDCG@10, recall@100, MRR@10 and timings",
        description=(
            "Index a BEIR-layout corpus (one chunk per document), search every judged query of a split\n"
            "and score the results. Prints a summary, then the result as one JSON line (the last line\n"
            "of stdout)."
        ),
        epilog="example:\n  specrag eval retrieval --data ../shared/data/scifact --index dense --limit 50",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data", required=True, metavar="DIR", help="data set folder: corpus.jsonl, queries.jsonl, qrels/"
    )
    parser.add_argument(
        "--index", required=True, metavar="NAME_OR_CONFIG",
        help=f"a registered index ({', '.join(known('index'))}) or a YAML/JSON file with {{type, params}}",
    )
    parser.add_argument("--split", default="test", help="qrels split to evaluate (qrels/SPLIT.tsv; default: test)")
    parser.add_argument(
        "--limit", type=_positive_int, metavar="N",
        help="evaluate only the first N queries, against their judged documents plus 25 others per query",
    )
    parser.add_argument("--k", type=_positive_int, default=100, help="hits retrieved per query (default: 100)")
    parser.set_defaults(func=retrieval_command)
    return parser


def retrieval_command(args: argparse.Namespace) -> int:
    """``specrag eval retrieval``: print the summary, then the JSON result as the last stdout line."""
    try:
        result = run_retrieval(args.data, args.index, split=args.split, limit=args.limit, k=args.k)
    except SpecragError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_result(result))
    print(json.dumps(result), flush=True)
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value

