"""``specrag fit-filter``: fit the calibrated relevance filter (:mod:`ranking.calibrated`) for an index on a
data set's labelled queries and save it as a JSON file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping

from eval.beir import load_beir
from eval.retrieval import load_index_spec, retrieve_dataset, select_queries
from rag.cli.args import positive_int
from rag.cli.errors import exit_codes
from rag.errors import InputError
from rag.registry import Component


def fit_filter(data_dir: str | Path, index_spec: "str | Path | Mapping[str, Any] | Component", out: str | Path,
               split: str = "train", depth: int = 20, limit: int | None = None) -> dict[str, Any]:
    """Fit a calibrated relevance filter (:mod:`ranking.calibrated`) for an index on a split's qrels and save it.

    The whole corpus is indexed; ``limit`` keeps only the first ``limit`` training queries. Returns the
    saved parameters (their ``train`` entry holds the fit's kept-set F1 and the best raw-score threshold).
    """
    from ranking.calibrated import fit_calibration, save_calibration

    dataset = select_queries(load_beir(data_dir, split), limit, full_corpus=True)
    index = load_index_spec(index_spec)
    query_ids, hits, _ = retrieve_dataset(dataset, index, depth)
    scores, labels, n_relevant = [], [], []
    for qid, query_hits in zip(query_ids, hits):
        relevant = {d for d, grade in dataset.qrels[qid].items() if grade > 0}
        scores.append([h.score for h in query_hits])
        labels.append([h.chunk.doc_id in relevant for h in query_hits])
        n_relevant.append(len(relevant))
    sources = {h.source for query_hits in hits for h in query_hits}
    if len(sources) != 1:
        raise InputError(f"fit-filter: index {index.to_config()['type']!r} returned hits from sources {sorted(sources)}")
    params = fit_calibration(scores, labels, n_relevant, retriever=index.to_config(), source=sources.pop(),
                             depth=depth)
    params["train"].update({"dataset": dataset.name, "split": split})
    save_calibration(params, out)
    return params


def add_fit_filter_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Register ``specrag fit-filter``."""
    parser = subparsers.add_parser(
        "fit-filter",
        help="fit a calibrated relevance filter for an index on labelled data",
        description=(
            "Search a split's queries with an index over the whole corpus, fit the calibrated relevance\n"
            "filter on the qrels, and save it as a JSON file (use it with --filter calibrated\n"
            "--set calibrated.path=FILE, or {type: calibrated, params: {path: FILE}} in a pipeline)."
        ),
        epilog="example:\n  specrag fit-filter --data ../shared/data/scifact --split train --index bm25 --out bm25.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, metavar="DIR", help="data set folder in the BEIR layout")
    parser.add_argument("--split", default="train", help="qrels split to fit on (default: train)")
    parser.add_argument("--index", required=True, metavar="NAME_OR_CONFIG", help="a registered index or a config file")
    parser.add_argument("--out", required=True, metavar="PATH", help="where to write the filter (JSON)")
    parser.add_argument("--depth", type=positive_int, default=20, help="hits per query the filter sees (default: 20)")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="fit on the first N queries only")
    parser.set_defaults(func=fit_filter_command)
    return parser


@exit_codes
def fit_filter_command(args: argparse.Namespace) -> int:
    """``specrag fit-filter``; an error is one line and exit code 2, see :func:`rag.cli.run_command`."""
    params = fit_filter(args.data, args.index, args.out, split=args.split, depth=args.depth, limit=args.limit)
    train = params["train"]
    print(f"{args.out}: calibrated filter for {params['retriever']['type']} (source {params['source']!r}), "
          f"{train['queries']} {train['split']} queries, depth {params['depth']}")
    print(f"  train kept F1 {train['kept_f1']:.4f} at relevance >= {params['threshold']:.4f}; "
          f"best raw-score threshold {train['raw_threshold']:.4f} gives {train['raw_kept_f1']:.4f}")
    print(json.dumps({"out": str(args.out), "source": params["source"], "threshold": params["threshold"],
                      **train}), flush=True)
    return 0
