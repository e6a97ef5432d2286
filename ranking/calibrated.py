"""Calibrated relevance filtering: map each query's raw retrieval scores to a probability of relevance, then
keep the hits above one global threshold.

Raw scores are not comparable across queries (a BM25 score of 20 is strong for a short query and weak for a
long one; a cosine of 0.5 means different things for different queries), so one threshold on raw scores
keeps too much for some queries and nothing for others. Following "Relevance Filtering for
Embedding-based Retrieval" (Rossi et al., CIKM 2024), the mapping depends on the query: each hit is
described by its score *and by the query's score distribution* (top score, gaps to the top and to the
neighbours, z-score and min-max position within the list, rank), and a logistic regression on those
features, fitted on labelled data, gives its calibrated relevance. One threshold, chosen on the training
queries to maximise the mean kept-set F1, then applies to every query.

Fit with ``specrag fit-filter --data DIR --split train --index NAME --out PATH``; the result is a plain
JSON file (format version 1, no pickle) that records the retriever's config, and the filter refuses hits
from any other retriever:

    >>> from ranking.filters import ThresholdFilter
    >>> from rag.registry import build
    >>> f = build("filter", {"type": "calibrated", "params": {"path": "bm25-scifact.json"}})  # doctest: +SKIP
    >>> f.filter("what thins blood?", hits)                                                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from dataclasses import field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from rag.errors import FormatVersionError, InputError
from rag.lazy import require
from rag.protocols import BaseFilter, check_hits
from rag.registry import declared_params
from rag.types import Hit

FORMAT = "specrag-calibrated-filter"
FORMAT_VERSION = 1
FEATURES = ("score", "gap_to_top", "zscore", "log_rank", "gap_to_next", "gap_to_previous", "top_gap", "minmax",
            "top_score")
# Index parameters that change speed, not scores: a filter fitted with one value accepts another.
IGNORED_PARAMS = frozenset({"batch_size", "threads", "show_progress"})


def score_features(scores: Sequence[float]) -> np.ndarray:
    """One row of :data:`FEATURES` per score; ``scores`` must be sorted best first."""
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    if n == 0:
        return np.zeros((0, len(FEATURES)))
    top, second, low = s[0], (s[1] if n > 1 else s[0]), s[-1]
    std = s.std()
    z = (s - s.mean()) / std if std > 0 else np.zeros(n)
    minmax = (s - low) / (top - low) if top > low else np.ones(n)
    to_next = np.append(s[:-1] - s[1:], 0.0)
    to_previous = np.insert(s[:-1] - s[1:], 0, 0.0)
    return np.column_stack([s, s - top, z, np.log1p(np.arange(n)), to_next, to_previous, np.full(n, top - second),
                            minmax, np.full(n, top)])


def kept_metrics(kept: Sequence[Sequence[str]], relevant: Sequence[set[str]]) -> dict[str, float]:
    """Mean per-query precision, recall and F1 of kept document ids against the relevant ones, and the mean
    number kept. A query that keeps nothing has precision 0; its recall is 0 unless nothing is relevant."""
    if len(kept) != len(relevant):
        raise InputError(f"kept_metrics: {len(kept)} kept lists for {len(relevant)} queries")
    if not kept:
        raise InputError("kept_metrics: no queries")
    p_sum = r_sum = f_sum = n_sum = 0.0
    for docs, rel in zip(kept, relevant):
        docs = list(dict.fromkeys(docs))
        hits = sum(1 for d in docs if d in rel)
        p = hits / len(docs) if docs else 0.0
        r = hits / len(rel) if rel else 1.0
        p_sum, r_sum, n_sum = p_sum + p, r_sum + r, n_sum + len(docs)
        f_sum += 2 * p * r / (p + r) if p + r > 0 else 0.0
    n = len(kept)
    return {"kept_precision": p_sum / n, "kept_recall": r_sum / n, "kept_f1": f_sum / n, "kept_mean": n_sum / n}


def best_threshold(values: Sequence[np.ndarray], labels: Sequence[np.ndarray], n_relevant: Sequence[int]
                   ) -> tuple[float, float]:
    """The threshold on ``values`` (one array per query) that maximises mean kept-set F1, and that F1.

    ``labels`` mark the relevant entries; ``n_relevant`` counts each query's relevant documents (also the
    ones not retrieved, which no threshold can keep). Every distinct value is tried, in one pass over the
    values sorted high to low; ties between thresholds go to the highest.
    """
    flat = np.concatenate([np.asarray(v, dtype=np.float64) for v in values]) if len(values) else np.zeros(0)
    if flat.size == 0:
        raise InputError("best_threshold: no scored hits to choose a threshold from")
    query = np.concatenate([np.full(len(v), i) for i, v in enumerate(values)])
    label = np.concatenate([np.asarray(x, dtype=np.float64) for x in labels])
    n_rel = [float(n) for n in n_relevant]
    kept = [0.0] * len(values)
    tp = [0.0] * len(values)
    f1 = [0.0] * len(values)  # a query keeping nothing scores 0 (see kept_metrics)
    total = 0.0
    order = np.argsort(-flat, kind="stable")
    best, best_f1 = float(flat[order[0]]), -1.0
    for position, i in enumerate(order):
        q = int(query[i])
        kept[q] += 1
        tp[q] += label[i]
        p = tp[q] / kept[q]
        r = tp[q] / n_rel[q] if n_rel[q] > 0 else 1.0
        new = 2 * p * r / (p + r) if p + r > 0 else 0.0
        total += new - f1[q]
        f1[q] = new
        last_of_value = position + 1 == len(order) or flat[order[position + 1]] < flat[i]
        if last_of_value and total / len(values) > best_f1 + 1e-12:
            best, best_f1 = float(flat[i]), total / len(values)
    return best, best_f1


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression (scipy's L-BFGS): weights and intercept."""
    minimize = require("scipy.optimize", "eval", "scipy").minimize  # fitting is part of evaluation

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = params[:-1], params[-1]
        z = x @ w + b
        # log(1 + e^z) - y z, written stably
        value = np.mean(np.logaddexp(0.0, z) - y * z) + l2 * w @ w
        grad_z = (1.0 / (1.0 + np.exp(-z)) - y) / len(y)
        return value, np.append(x.T @ grad_z + 2 * l2 * w, grad_z.sum())

    result = minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B")
    return result.x[:-1], float(result.x[-1])


def fit_calibration(
    score_lists: Sequence[Sequence[float]],
    label_lists: Sequence[Sequence[bool]],
    n_relevant: Sequence[int],
    retriever: Mapping[str, Any],
    source: str,
    depth: int = 20,
    l2: float = 1e-3,
) -> dict[str, Any]:
    """The calibrated filter's parameters (a JSON-ready dict) from labelled retrieval results.

    ``score_lists[i]`` are query i's retrieval scores, best first, and ``label_lists[i]`` whether each hit is
    relevant; only the first ``depth`` hits of a list are used. ``retriever`` (the index config) and
    ``source`` (the ``source`` of its hits) are recorded so the filter refuses other retrievers. Also
    records, for comparison, the best single raw-score threshold on the same data.
    """
    if not score_lists or len(score_lists) != len(label_lists) or len(score_lists) != len(n_relevant):
        raise InputError(f"fit_calibration: need as many label lists and relevant counts as score lists "
                         f"({len(score_lists)}, {len(label_lists)}, {len(n_relevant)}), and at least one")
    if depth < 2:
        raise InputError(f"fit_calibration: depth must be at least 2, got {depth}")
    scores = [np.asarray(s, dtype=np.float64)[:depth] for s in score_lists]
    labels = [np.asarray(y, dtype=np.float64)[:depth] for y in label_lists]
    for i, s in enumerate(scores):
        if not np.all(np.isfinite(s)):
            raise InputError(f"fit_calibration: query {i} has a NaN or infinite score")
        if np.any(np.diff(s) > 0):
            raise InputError(f"fit_calibration: query {i}'s scores are not sorted best first")
    x = np.concatenate([score_features(s) for s in scores])
    y = np.concatenate(labels)
    if y.min() == y.max():
        raise InputError("fit_calibration: the training hits are all relevant or all not; nothing to learn")
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    weights, intercept = fit_logistic((x - mean) / scale, y, l2)
    params = {"mean": mean.tolist(), "scale": scale.tolist(), "weights": weights.tolist(), "intercept": intercept}
    probabilities = [_predict(params, s) for s in scores]
    threshold, train_f1 = best_threshold(probabilities, labels, n_relevant)
    raw_threshold, raw_f1 = best_threshold(scores, labels, n_relevant)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "retriever": dict(retriever),
        "source": source,
        "depth": depth,
        "features": list(FEATURES),
        **params,
        "threshold": threshold,
        "train": {"queries": len(scores), "hits": int(len(y)), "relevant_hits": int(y.sum()), "kept_f1": train_f1,
                  "raw_threshold": raw_threshold, "raw_kept_f1": raw_f1, "l2": l2},
    }


def _predict(params: Mapping[str, Any], scores: np.ndarray) -> np.ndarray:
    x = (score_features(scores) - np.asarray(params["mean"])) / np.asarray(params["scale"])
    return 1.0 / (1.0 + np.exp(-(x @ np.asarray(params["weights"]) + params["intercept"])))


def save_calibration(params: Mapping[str, Any], path: str | Path) -> Path:
    """Write the parameters as JSON, atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    staging.replace(path)
    return path


def load_calibration(path: str | Path) -> dict[str, Any]:
    """Read and check a file written by :func:`save_calibration`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such calibrated-filter file; fit one with `specrag fit-filter`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{path}: not a calibrated-filter file (format {FORMAT!r} expected)")
    if data.get("version") != FORMAT_VERSION:
        raise FormatVersionError(f"{path}: calibrated-filter format version {data.get('version')!r}; "
                                 f"this specrag reads version {FORMAT_VERSION}; refit with `specrag fit-filter`")
    missing = [k for k in ("retriever", "source", "depth", "features", "mean", "scale", "weights", "intercept",
                           "threshold") if k not in data]
    if missing:
        raise InputError(f"{path}: calibrated-filter file lacks {missing}")
    if list(data["features"]) != list(FEATURES):
        raise InputError(f"{path}: features {data['features']} differ from this version's {list(FEATURES)}")
    return data


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    params = {k: v for k, v in dict(config.get("params") or {}).items() if k not in IGNORED_PARAMS}
    return {"type": config.get("type"), "params": params}


@declared_params
class CalibratedFilter(BaseFilter):
    """Keep hits whose calibrated relevance reaches the fitted threshold (or ``threshold`` if given).

    ``path`` is a file written by ``specrag fit-filter``; it is read on first use. Hits must come from
    the retriever it was fitted for (their ``source`` is checked; :meth:`check_retriever` compares a
    full index config). Only the first ``depth`` hits (as fitted) can be kept.
    """

    path: str = ""
    threshold: float | None = None
    _params: "dict[str, Any] | None" = field(default=None, init=False)  # the fitted file, read on first use

    def __post_init__(self) -> None:
        if not self.path:
            raise InputError("calibrated filter: give path=FILE, a file written by `specrag fit-filter`")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise InputError(f"calibrated filter: threshold is a probability in [0, 1], got {self.threshold}")
        self.path = str(self.path)

    @property
    def fitted(self) -> dict[str, Any]:
        if self._params is None:
            self._params = load_calibration(self.path)
        return self._params

    def check_retriever(self, config: Mapping[str, Any]) -> None:
        """Refuse an index config other than the one this filter was fitted for, naming both."""
        fitted = self.fitted["retriever"]
        if _comparable(config) != _comparable(fitted):
            raise InputError(f"calibrated filter {self.path}: fitted for retriever {json.dumps(fitted)}, "
                             f"but applied to retriever {json.dumps(dict(config))}; fit one for it with "
                             "`specrag fit-filter`")

    def relevance(self, query: str, hits: list[Hit]) -> list[float]:
        """Calibrated relevance of each of the first ``depth`` hits (best first by raw score)."""
        hits = sorted(check_hits("calibrated filter", query, hits), key=lambda h: -h.score)[: self.fitted["depth"]]
        source = self.fitted["source"]
        for hit in hits:
            if hit.source != source:
                raise InputError(
                    f"calibrated filter {self.path}: fitted for retriever {source!r} "
                    f"({self.fitted['retriever'].get('type')}), but query {query!r} has hits from {hit.source!r} "
                    f"(chunk {hit.chunk.id!r}); fit one for {hit.source!r} with `specrag fit-filter`"
                )
        return [float(p) for p in _predict(self.fitted, np.array([h.score for h in hits]))] if hits else []

    def filter(self, query: str, hits: list[Hit]) -> list[Hit]:
        ordered = sorted(check_hits("calibrated filter", query, hits), key=lambda h: -h.score)
        probabilities = self.relevance(query, ordered)
        cut = self.threshold if self.threshold is not None else self.fitted["threshold"]
        return [h for h, p in zip(ordered, probabilities) if p >= cut and math.isfinite(p)]
