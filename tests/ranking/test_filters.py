"""Filters: top-k, threshold, score-drop, MMR, reorder and the calibrated relevance filter (fit, save, load,
refusal of another retriever's hits), plus the bad inputs every filter shares."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rag.errors import FormatVersionError, InputError
from rag.registry import build, known
from rag.types import Chunk, Hit
from ranking.calibrated import (
    FORMAT_VERSION,
    CalibratedFilter,
    best_threshold,
    fit_calibration,
    kept_metrics,
    save_calibration,
    score_features,
)
from ranking.filters import MMRFilter, ReorderFilter, ScoreDropFilter, ThresholdFilter, TopKFilter


def hit(n: int, score: float, source: str = "bm25", text: str | None = None) -> Hit:
    body = text if text is not None else f"text {n}"
    return Hit(chunk=Chunk(id=f"c{n}", doc_id=f"d{n}", text=body, start=0, end=len(body)), score=score, source=source)


def ids(hits: list[Hit]) -> list[str]:
    return [h.chunk.id for h in hits]


def test_every_filter_name_is_registered_and_top_k_keeps_working() -> None:
    assert {"topk", "top-k", "threshold", "score-drop", "calibrated", "mmr", "reorder"} <= set(known("filter"))
    assert isinstance(build("filter", "topk"), TopKFilter) and isinstance(build("filter", "top-k"), TopKFilter)
    assert build("filter", {"type": "topk", "params": {"k": 2}}).k == 2


def test_top_k_and_threshold_sort_best_first_with_stable_ties() -> None:
    hits = [hit(1, 0.2), hit(2, 0.9), hit(3, 0.5), hit(4, 0.9), hit(5, 0.5)]
    assert ids(TopKFilter(k=3).filter("q", hits)) == ["c2", "c4", "c3"]
    assert ids(TopKFilter(k=10, min_score=0.5).filter("q", hits)) == ["c2", "c4", "c3", "c5"]
    assert ids(ThresholdFilter(min_score=0.5).filter("q", hits)) == ["c2", "c4", "c3", "c5"]
    assert ThresholdFilter(min_score=5).filter("q", hits) == []


def test_score_drop_cuts_where_the_score_falls_faster_than_the_ratio() -> None:
    hits = [hit(1, 10.0), hit(2, 9.0), hit(3, 8.5), hit(4, 4.0), hit(5, 3.9)]
    assert ids(ScoreDropFilter(max_drop=0.3).filter("q", hits)) == ["c1", "c2", "c3"]  # 4.0 < 0.7 * 8.5
    assert ids(ScoreDropFilter(max_drop=0.6).filter("q", hits)) == ids(hits)
    assert ids(ScoreDropFilter(max_drop=0.3, max_keep=2).filter("q", hits)) == ["c1", "c2"]
    steep = [hit(1, 10.0), hit(2, 1.0), hit(3, 0.9)]
    assert ids(ScoreDropFilter(max_drop=0.3).filter("q", steep)) == ["c1"]
    assert ids(ScoreDropFilter(max_drop=0.3, min_keep=2).filter("q", steep)) == ["c1", "c2"]
    logits = [hit(1, 2.0), hit(2, 1.5), hit(3, -3.0), hit(4, -3.5)]  # LLM logits: any sign
    assert ids(ScoreDropFilter(max_drop=0.5, relative_to="range").filter("q", logits)) == ["c1", "c2"]
    with pytest.raises(InputError, match=r"query 'q': chunk 'c3' has score -3.0 <= 0; .*relative_to='range'"):
        ScoreDropFilter(relative_to="previous").filter("q", logits)
    equal = [hit(1, 1.0), hit(2, 1.0)]
    assert ids(ScoreDropFilter(relative_to="range").filter("q", equal)) == ["c1", "c2"]


def test_reorder_puts_the_strongest_at_both_ends() -> None:
    hits = [hit(n, float(10 - n)) for n in range(1, 7)]  # c1 best ... c6 worst
    assert ids(ReorderFilter().filter("q", list(reversed(hits)))) == ["c1", "c3", "c5", "c6", "c4", "c2"]
    assert ReorderFilter().filter("q", []) == []


class StubEncoder:
    """Fixed unit vectors per text, standing in for MiniLM."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        rows = np.array([self.vectors[t] for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_mmr_prefers_diverse_hits_and_drops_near_duplicates() -> None:
    mmr = MMRFilter(k=3, lambda_mult=0.5, duplicate_threshold=0.95)
    mmr._encoder = StubEncoder({"a": [1, 0, 0], "a again": [1, 0.01, 0], "a-ish": [1, 0.6, 0], "b": [0, 1, 0],
                                "c": [0, 0, 1]})
    hits = [hit(1, 1.0, text="a"), hit(2, 0.99, text="a again"), hit(3, 0.98, text="a-ish"), hit(4, 0.6, text="b"),
            hit(5, 0.1, text="c")]
    kept = mmr.filter("q", hits)
    assert ids(kept) == ["c1", "c4", "c3"]  # "b" jumps the near-copies; the duplicate never comes back
    assert [h.score for h in kept] == [1.0, 0.6, 0.98]
    mmr.k = 5
    assert ids(mmr.filter("q", hits)) == ["c1", "c4", "c3", "c5"]  # c2 (cosine 0.99995 to c1) is dropped
    only_copies = [hit(1, 1.0, text="a"), hit(2, 0.9, text="a again")]
    assert ids(mmr.filter("q", only_copies)) == ["c1"]
    assert mmr.filter("q", []) == []


def test_mmr_with_minilm_removes_an_exact_duplicate() -> None:
    texts = ["Aspirin thins the blood.", "Aspirin thins the blood.", "The Eiffel tower is in Paris."]
    hits = [hit(i, 1.0 - i / 10, text=t) for i, t in enumerate(texts)]
    assert ids(MMRFilter(k=3).filter("what does aspirin do?", hits)) == ["c0", "c2"]


@pytest.mark.parametrize("make", [lambda: TopKFilter(k=2), lambda: ThresholdFilter(0.0), lambda: ScoreDropFilter(),
                                  lambda: ReorderFilter(), lambda: MMRFilter()])
def test_bad_scores_are_errors_naming_query_and_chunk_and_empty_lists_pass(make) -> None:  # type: ignore[no-untyped-def]
    f = make()
    assert f.filter("q", []) == []
    for bad in (math.nan, math.inf):
        with pytest.raises(InputError, match=r"query 'why\?': hit 1 \(chunk 'c2'\) has score"):
            f.filter("why?", [hit(1, 1.0), hit(2, bad)])


# -- calibrated relevance filter -----------------------------------------------------------------------


def synthetic(n_queries: int, seed: int, depth: int = 20) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Retrieval lists whose raw scores live on a per-query scale (like BM25's): relevant hits stand out
    from their own query's list, not on an absolute scale."""
    rng = np.random.default_rng(seed)
    scores, labels, n_rel = [], [], []
    for _ in range(n_queries):
        scale, offset = rng.uniform(0.5, 5), rng.uniform(0, 30)
        base = rng.normal(0, 1, depth)
        rel = np.zeros(depth)
        k = rng.integers(0, 3)
        rel[:k] = 1
        raw = offset + scale * (base + 4 * rel)
        order = np.argsort(-raw, kind="stable")
        scores.append(raw[order])
        labels.append(rel[order])
        n_rel.append(int(k))
    return scores, labels, n_rel


def evaluate(keep_lists: list[list[bool]], labels: list[np.ndarray], n_rel: list[int]) -> float:
    kept = [[str(i) for i, k in enumerate(keep) if k] for keep in keep_lists]
    relevant = [{str(i) for i in np.flatnonzero(y)} | {f"missing{j}" for j in range(n - int(y.sum()))}
                for y, n in zip(labels, n_rel)]
    return kept_metrics(kept, relevant)["kept_f1"]


def test_kept_metrics_and_best_threshold() -> None:
    metrics = kept_metrics([["a", "b"], [], ["x"]], [{"a"}, {"c"}, set()])
    assert metrics == pytest.approx({"kept_precision": (0.5 + 0 + 0) / 3, "kept_recall": (1 + 0 + 1) / 3,
                                     "kept_f1": (2 / 3) / 3, "kept_mean": 1.0})
    threshold, f1 = best_threshold([np.array([3.0, 2.0, 1.0]), np.array([5.0, 0.5])],
                                   [np.array([1, 0, 0]), np.array([1, 0])], [1, 1])
    assert threshold == 3.0 and f1 == 1.0


def test_calibrated_filter_beats_the_best_raw_threshold_on_held_out_queries(tmp_path: Path) -> None:
    train, test = synthetic(400, seed=1), synthetic(300, seed=2)
    params = fit_calibration(*train, retriever={"type": "bm25", "params": {"k1": 0.9}}, source="bm25", depth=20)
    assert params["version"] == FORMAT_VERSION and params["train"]["kept_f1"] > params["train"]["raw_kept_f1"]
    path = save_calibration(params, tmp_path / "filter.json")
    assert json.loads(path.read_text())["features"] == params["features"]
    assert score_features([3.0, 1.0]).shape == (2, len(params["features"]))

    f = build("filter", {"type": "calibrated", "params": {"path": str(path)}})
    assert isinstance(f, CalibratedFilter) and f.to_config() == {"type": "calibrated",
                                                                 "params": {"path": str(path), "threshold": None}}
    calibrated, raw = [], []
    for q, (s, y, n) in enumerate(zip(*test)):
        hits = [hit(i, float(v)) for i, v in enumerate(s)]
        kept = {h.chunk.id for h in f.filter(f"q{q}", hits[::-1])}  # order of arrival does not matter
        calibrated.append([f"c{i}" in kept for i in range(len(s))])
        raw.append([v >= params["train"]["raw_threshold"] for v in s])
    assert evaluate(calibrated, test[1], test[2]) > evaluate(raw, test[1], test[2]) + 0.1


def test_calibrated_filter_refuses_other_retrievers_and_other_versions(tmp_path: Path) -> None:
    params = fit_calibration(*synthetic(50, seed=3), retriever={"type": "bm25", "params": {"k1": 0.9, "threads": 1}},
                             source="bm25", depth=20)
    path = save_calibration(params, tmp_path / "f.json")
    f = CalibratedFilter(str(path))
    assert f.filter("q", []) == []
    with pytest.raises(InputError, match=r"fitted for retriever 'bm25' .* hits from 'dense' \(chunk 'c0'\)"):
        f.filter("q", [hit(0, 0.7, source="dense")])
    f.check_retriever({"type": "bm25", "params": {"k1": 0.9, "threads": 4}})  # threads do not change scores
    with pytest.raises(InputError, match=r'fitted for retriever \{"type": "bm25".*applied to retriever \{"type": "dense"'):
        f.check_retriever({"type": "dense", "params": {"model": "minilm"}})
    with pytest.raises(InputError, match="has score nan"):
        f.filter("q", [hit(0, math.nan)])
    old = dict(params, version=0)
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(FormatVersionError, match="format version 0"):
        CalibratedFilter(str(tmp_path / "old.json")).filter("q", [hit(0, 1.0)])
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(InputError, match="not a calibrated-filter file"):
        CalibratedFilter(str(tmp_path / "junk.json")).filter("q", [hit(0, 1.0)])
    with pytest.raises(InputError, match="no such calibrated-filter file"):
        CalibratedFilter(str(tmp_path / "none.json")).filter("q", [hit(0, 1.0)])
    with pytest.raises(InputError, match="give path=FILE"):
        CalibratedFilter()


def test_fit_refuses_unsorted_or_unlabelled_data() -> None:
    with pytest.raises(InputError, match="not sorted best first"):
        fit_calibration([[1.0, 2.0]], [[True, False]], [1], retriever={"type": "x"}, source="x")
    with pytest.raises(InputError, match="all relevant or all not"):
        fit_calibration([[2.0, 1.0]], [[False, False]], [0], retriever={"type": "x"}, source="x")
