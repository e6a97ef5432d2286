"""Retrieval metrics through ``ir_measures`` (trec_eval's definitions), as a flat dict.

    >>> from eval.metrics import evaluate_run
    >>> evaluate_run({"q1": {"d1": 2.0, "d2": 1.0}}, {"q1": {"d2": 1}})["mrr@10"]
    0.5
"""

from __future__ import annotations

from typing import Iterable, Mapping

from rag.lazy import require
from rag.types import Hit

Run = dict[str, dict[str, float]]
Qrels = Mapping[str, Mapping[str, int]]
PRIMARY = "ndcg@10"


def _measures() -> dict[str, object]:
    ir_measures = require("ir_measures", "eval", "ir-measures")
    return {"ndcg@10": ir_measures.nDCG @ 10, "recall@100": ir_measures.R @ 100, "mrr@10": ir_measures.RR @ 10}


def evaluate_run(run: Mapping[str, Mapping[str, float]], qrels: Qrels) -> dict[str, float]:
    """``{"ndcg@10", "recall@100", "mrr@10"}`` averaged over every query in ``qrels``.

    A query in ``qrels`` that the run has no results for scores 0 (it is not dropped, which would
    inflate the mean); run entries for queries without judgements are ignored.
    """
    ir_measures = require("ir_measures", "eval", "ir-measures")
    if not qrels:
        raise ValueError("evaluate_run: qrels are empty; there is nothing to score against")
    measures = _measures()
    by_measure = {str(m): name for name, m in measures.items()}
    qrels_plain = {qid: {doc: int(grade) for doc, grade in docs.items()} for qid, docs in qrels.items()}
    run_plain = {qid: {doc: float(s) for doc, s in run[qid].items()} for qid in qrels if run.get(qid)}
    totals = dict.fromkeys(measures, 0.0)
    if run_plain:
        for metric in ir_measures.iter_calc(list(measures.values()), qrels_plain, run_plain):
            if metric.query_id in qrels_plain:
                totals[by_measure[str(metric.measure)]] += metric.value
    return {name: total / len(qrels_plain) for name, total in totals.items()}


def hits_to_run(query_ids: Iterable[str], hits: Iterable[list[Hit]]) -> Run:
    """A run (query id -> {document id: score}) from per-query hits; a document scores its best chunk."""
    run: Run = {}
    for qid, query_hits in zip(query_ids, hits, strict=True):
        docs: dict[str, float] = {}
        for hit in query_hits:
            doc_id = hit.chunk.doc_id
            if doc_id not in docs or hit.score > docs[doc_id]:
                docs[doc_id] = float(hit.score)
        run[qid] = docs
    return run
