"""Retrieval evaluation on a BEIR-layout data set, from Python or ``specrag eval retrieval``.

    >>> from eval.retrieval import run_retrieval
    >>> result = run_retrieval("../shared/data/scifact", "dense", limit=20)   # doctest: +SKIP
    >>> sorted(result)                                                         # doctest: +SKIP
    ['dataset', 'documents', 'index', 'index_seconds', 'k', 'load_seconds', 'mrr@10', 'ndcg@10', ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from eval.beir import BeirDataset, load_beir
from eval.metrics import evaluate_run, hits_to_run
from rag.cli.args import parse_settings, positive_int
from rag.cli.errors import exit_codes
from rag.errors import InputError
from rag.registry import Component, build, known
from rag.types import Hit

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def load_index_spec(spec: "str | Path | Mapping[str, Any] | Component") -> Any:
    """An index built from a registered name, a ``{"type", "params"}`` mapping, or a YAML/JSON file of one."""
    return load_spec("index", spec)


def load_spec(role: str, spec: "str | Path | Mapping[str, Any] | Component",
              params: Mapping[str, Any] | None = None) -> Any:
    """A ``role`` component from a registered name, a ``{"type", "params"}`` mapping, or a YAML/JSON file of
    one; ``params`` override the spec's parameters."""
    if isinstance(spec, Component):
        return spec
    if isinstance(spec, Mapping):
        data: Any = spec
    else:
        text = str(spec)
        path = Path(text)
        if text in known(role):
            data = {"type": text, "params": {}}
        elif path.is_file():
            data = _read_config(path)
        elif path.is_dir():
            raise InputError(f"{path}: is a directory, not a {role} config file (YAML/JSON) or a registered {role}")
        elif path.suffix in CONFIG_SUFFIXES:
            raise InputError(f"{path}: no such {role} config file")
        else:
            raise InputError(
                f"{role} {text!r} is neither a registered {role} ({', '.join(known(role))}) "
                f"nor a YAML/JSON config file holding {{type, params}}"
            )
    if params:
        if not isinstance(data, Mapping) or "type" not in data:
            raise InputError(f"a {role} spec must be a mapping with 'type' (and 'params'), got {data!r}")
        data = {"type": data["type"], "params": {**dict(data.get("params") or {}), **dict(params)}}
    return build(role, data)


def _read_config(path: Path) -> Any:
    import yaml

    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(content) if path.suffix == ".json" else yaml.safe_load(content)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({exc})") from None


def select_queries(dataset: BeirDataset, limit: int | None, full_corpus: bool = False) -> BeirDataset:
    """The first ``limit`` queries: with the subset corpus of :meth:`BeirDataset.subset`, or (``full_corpus``)
    against the whole corpus, as a reranking or filtering experiment on a query sample should be."""
    if limit is None:
        return dataset
    if not full_corpus:
        return dataset.subset(limit)
    if limit < 1:
        raise InputError(f"{dataset.name}: a query sample needs at least one query, got {limit}")
    queries = dict(list(dataset.queries.items())[:limit])
    return BeirDataset(name=dataset.name, corpus=dataset.corpus, queries=queries,
                       qrels={q: dataset.qrels[q] for q in queries}, split=dataset.split)


def retrieve_dataset(dataset: BeirDataset, index: Any, k: int) -> tuple[list[str], list[list[Hit]], dict[str, float]]:
    """Index the corpus (one chunk per document) and search every query: ids, hits and timings."""
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
    return query_ids, hits, {"load": load_seconds, "index": index_seconds, "search": search_seconds}


def ranked_run(query_ids: list[str], hits: list[list[Hit]]) -> dict[str, dict[str, float]]:
    """A run scored by list position (first = highest), so a reranked head and its untouched tail stay in
    order whatever their score scales; a document keeps its first (best) position."""
    run: dict[str, dict[str, float]] = {}
    for qid, query_hits in zip(query_ids, hits, strict=True):
        docs: dict[str, float] = {}
        for position, hit in enumerate(query_hits):
            docs.setdefault(hit.chunk.doc_id, float(len(query_hits) - position))
        run[qid] = docs
    return run


def run_retrieval(
    data_dir: str | Path,
    index_spec: "str | Path | Mapping[str, Any] | Component",
    split: str = "test",
    limit: int | None = None,
    k: int = 100,
    rerank: "str | Path | Mapping[str, Any] | Component | None" = None,
    rerank_depth: int = 50,
    filters: "Sequence[str | Path | Mapping[str, Any] | Component]" = (),
    full_corpus: bool = False,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Index a data set's corpus (one chunk per document), search every query, optionally rerank and filter,
    and score every stage.

    ``limit`` evaluates the first ``limit`` queries against their judged documents plus
    25 other documents per query (see :meth:`eval.beir.BeirDataset.subset`), or against the whole corpus
    with ``full_corpus``. Returns a flat dict:
    ``dataset``, ``split``, ``index`` (its config), ``ndcg@10``, ``recall@100``, ``mrr@10`` (of the index's
    hits), ``queries``, ``documents``, ``k``, ``load_seconds`` (model loading), ``index_seconds`` (chunking and
    indexing), ``search_qps`` (all queries in one batch call) and ``stages`` (one entry per stage with its
    ``ndcg@10``).

    With ``rerank`` (a reranker name, spec or config file), the top ``rerank_depth`` hits of each query are
    reranked (the rest keep their order below them for the stage's metrics): adds ``rerank`` (config),
    ``rerank_ndcg@10`` and ``rerank_ms_per_query`` (model loading excluded). ``filters`` then run in order
    on each query's list (after a reranker, on the reranked hits only, which share one score scale);
    each filter stage reports the kept-set precision, recall and F1 against the qrels (relevance > 0) and
    the mean number kept, and the last one's are added as ``kept_precision``, ``kept_recall``, ``kept_f1``
    and ``kept_mean`` (with ``filters``, the filter configs). ``params`` maps a reranker or filter name to
    parameters overriding its defaults (``{"calibrated": {"path": "bm25.json"}}``).
    """
    from ranking.calibrated import kept_metrics

    params = dict(params or {})
    index = load_index_spec(index_spec)  # components first: a mistyped name fails before a corpus is read
    reranker = load_spec("reranker", rerank, params.get(str(rerank))) if rerank is not None else None
    chain = [load_spec("filter", f, params.get(str(f))) for f in filters]
    if rerank_depth < 1:
        raise InputError(f"rerank_depth must be at least 1, got {rerank_depth}")
    unused = sorted(set(params) - {str(rerank)} - {str(f) for f in filters})
    if unused:
        raise InputError(f"parameters given for {unused}, which is neither the reranker nor a filter of this run")
    if reranker is None:  # a filter fitted for one retriever must not be applied to another's scores
        for f in chain:
            check = getattr(f, "check_retriever", None)
            if callable(check):
                check(index.to_config())

    dataset = select_queries(load_beir(data_dir, split), limit, full_corpus)
    query_ids, hits, seconds = retrieve_dataset(dataset, index, k)
    texts = [dataset.queries[q] for q in query_ids]
    metrics = evaluate_run(hits_to_run(query_ids, hits), dataset.qrels)
    result: dict[str, Any] = {
        "dataset": dataset.name,
        "split": split,
        "index": index.to_config(),
        **metrics,
        "queries": len(query_ids),
        "documents": len(dataset.corpus),
        "k": k,
        "load_seconds": round(seconds["load"], 3),
        "index_seconds": round(seconds["index"], 3),
        "search_qps": round(len(query_ids) / seconds["search"], 1) if seconds["search"] > 0 else float("inf"),
    }
    stages: list[dict[str, Any]] = [{"stage": "retrieve", "name": result["index"]["type"], **metrics}]

    if reranker is not None:
        warm_up = getattr(reranker, "warm_up", None)
        if callable(warm_up):
            warm_up()
        started = time.perf_counter()
        heads = [reranker.rerank(q, h[:rerank_depth], rerank_depth) for q, h in zip(texts, hits)]
        rerank_seconds = time.perf_counter() - started
        full = [head + h[rerank_depth:] for head, h in zip(heads, hits)]
        rerank_metrics = evaluate_run(ranked_run(query_ids, full), dataset.qrels)
        hits = heads  # filters see the reranked hits only: one score scale
        ms = 1000 * rerank_seconds / max(len(query_ids), 1)
        result.update({"rerank": reranker.to_config(), "rerank_depth": rerank_depth,
                       "rerank_ndcg@10": rerank_metrics["ndcg@10"], "rerank_ms_per_query": round(ms, 1)})
        stages.append({"stage": "rerank", "name": result["rerank"]["type"], "ndcg@10": rerank_metrics["ndcg@10"],
                       "mrr@10": rerank_metrics["mrr@10"], "ms_per_query": round(ms, 1)})

    relevant = [{d for d, grade in dataset.qrels[q].items() if grade > 0} for q in query_ids]
    for f in chain:
        started = time.perf_counter()
        hits = [f.filter(q, h) for q, h in zip(texts, hits)]
        ms = 1000 * (time.perf_counter() - started) / max(len(query_ids), 1)
        kept = kept_metrics([[h.chunk.doc_id for h in query_hits] for query_hits in hits], relevant)
        ndcg = evaluate_run(ranked_run(query_ids, hits), dataset.qrels)["ndcg@10"]
        stages.append({"stage": "filter", "name": f.to_config()["type"], "ndcg@10": ndcg, **kept,
                       "ms_per_query": round(ms, 2)})
    if chain:
        result["filters"] = [f.to_config() for f in chain]
        result.update({key: stages[-1][key] for key in ("kept_precision", "kept_recall", "kept_f1", "kept_mean")})
    result["stages"] = stages
    return result


def format_result(result: Mapping[str, Any]) -> str:
    """A few aligned lines for a terminal."""
    docs_per_second = result["documents"] / result["index_seconds"] if result["index_seconds"] else float("inf")
    lines = [
        f"{result['dataset']} ({result['split']}): {result['queries']} queries, {result['documents']} documents, "
        f"index {result['index']['type']}",
        f"  ndcg@10     {result['ndcg@10']:.4f}",
        f"  recall@100  {result['recall@100']:.4f}",
        f"  mrr@10      {result['mrr@10']:.4f}",
        f"  indexing    {result['index_seconds']:.1f} s ({docs_per_second:.0f} documents/s), "
        f"model load {result['load_seconds']:.1f} s",
        f"  search      {result['search_qps']:.0f} queries/s",
    ]
    for stage in result.get("stages", [])[1:]:
        line = f"  {stage['stage']} {stage['name']:<14} ndcg@10 {stage['ndcg@10']:.4f}"
        if "kept_f1" in stage:
            line += (f"  kept P {stage['kept_precision']:.3f} R {stage['kept_recall']:.3f} "
                     f"F1 {stage['kept_f1']:.3f} mean {stage['kept_mean']:.2f}")
        line += f"  {stage['ms_per_query']} ms/query"
        lines.append(line)
    return "\n".join(lines)


# -- command line ----------------------------------------------------------------------------------


def add_retrieval_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "retrieval",
        help="index a corpus, search its queries, report nDCG@10, recall@100, MRR@10 and timings",
        description=(
            "Index a BEIR-layout corpus (one chunk per document), search every judged query of a split,\n"
            "optionally rerank and filter, and score every stage. Prints a summary, then the result as\n"
            "one JSON line (the last line of stdout)."
        ),
        epilog=(
            "examples:\n  specrag eval retrieval --data ../shared/data/scifact --index dense --limit 50\n"
            "  specrag eval retrieval --data ../shared/data/scifact --index bm25 --rerank first --rerank-depth 50 "
            "--limit 30 --full-corpus\n"
            "  specrag eval retrieval --data ../shared/data/scifact --index bm25 --filter calibrated "
            "--set calibrated.path=bm25-filter.json"
        ),
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
        "--limit", type=positive_int, metavar="N",
        help="evaluate only the first N queries, against their judged documents plus 25 others per query",
    )
    parser.add_argument("--full-corpus", action="store_true",
                        help="with --limit, search the whole corpus (only the queries are limited)")
    parser.add_argument("--k", type=positive_int, default=100, help="hits retrieved per query (default: 100)")
    parser.add_argument("--rerank", metavar="NAME_OR_CONFIG",
                        help=f"rerank with a registered reranker ({', '.join(known('reranker'))}) or a config file")
    parser.add_argument("--rerank-depth", type=positive_int, default=50, metavar="N",
                        help="hits per query handed to the reranker (default: 50)")
    parser.add_argument("--filter", metavar="NAME[,NAME...]",
                        help=f"filters to chain, in order ({', '.join(known('filter'))}) or config files")
    parser.add_argument("--set", action="append", default=[], metavar="NAME.KEY=VALUE", dest="settings",
                        help="a parameter of the reranker or a filter, e.g. calibrated.path=f.json or "
                             "first.model=qwen2.5-1.5b (VALUE read as YAML; repeatable)")
    parser.set_defaults(func=retrieval_command)
    return parser


@exit_codes
def retrieval_command(args: argparse.Namespace) -> int:
    """``specrag eval retrieval``: print the summary, then the JSON result as the last stdout line.

    An error is one line on stderr and exit code 2 (``--debug``: the traceback), see :func:`rag.cli.run_command`.
    """
    filters = [f.strip() for f in (args.filter or "").split(",") if f.strip()]
    result = run_retrieval(args.data, args.index, split=args.split, limit=args.limit, k=args.k,
                           rerank=args.rerank, rerank_depth=args.rerank_depth, filters=filters,
                           full_corpus=args.full_corpus, params=parse_settings(args.settings))
    print(format_result(result))
    print(json.dumps(result), flush=True)
    return 0
