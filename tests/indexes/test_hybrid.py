"""HybridIndex over real members (bm25s, Lucene BM25, MiniLM dense): fusion maths, updates, persistence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from indexes.hybrid import HybridIndex
from rag.errors import FormatVersionError, InputError
from rag.registry import build
from rag.types import Chunk, Hit
from tests.indexes.corpus import DOCS, QUERIES, ROOT, make_chunks, ranked
from tests.same_ranking import assert_same_ranking


@pytest.fixture()
def hybrid() -> HybridIndex:
    idx = HybridIndex(["bm25s", "dense"])
    idx.add(make_chunks(list(DOCS)))
    return idx


def expected_fusion(index: HybridIndex, query: str, k: int) -> list[tuple[str, float]]:
    """RRF / min-max fusion recomputed from each member's own results."""
    weights = index.weights or [1.0 if index.method == "rrf" else 1.0 / len(index.indexes)] * len(index.indexes)
    fused: dict[str, float] = {}
    for weight, member in zip(weights, index.indexes):
        hits = member.search([query], max(index.depth, k))[0]
        scores = [h.score for h in hits]
        for rank, hit in enumerate(hits, start=1):
            if index.method == "rrf":
                value = 1.0 / (index.rrf_k + rank)
            else:
                value = (hit.score - min(scores)) / (max(scores) - min(scores)) if max(scores) > min(scores) else 1.0
            fused[hit.chunk.id] = fused.get(hit.chunk.id, 0.0) + weight * value
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]


@pytest.mark.parametrize(
    ("method", "weights", "depth"), [("rrf", None, 100), ("rrf", [2.0, 1.0], 3), ("weighted", None, 100), ("weighted", [0.3, 0.7], 4)]
)
def test_fusion_matches_the_formula_over_member_results(
    hybrid: HybridIndex, method: str, weights: list[float] | None, depth: int
) -> None:
    index = HybridIndex([hybrid.indexes[0], hybrid.indexes[1]], method=method, weights=weights, depth=depth, name="fused")
    results = index.search(QUERIES, k=5)
    # Dense scores of a query searched alone and in a batch differ in the last float32 bits.
    assert_same_ranking(results, [expected_fusion(index, query, 5) for query in QUERIES], rel=0.0, abs=1e-6)
    assert all(type(h) is Hit and h.source == "fused" for hits in results for h in hits)
    assert [hits[0].chunk.doc_id for hits in results[:3]] == ["clots", "paris", "ocean"]


def test_default_members_are_bm25_and_dense_and_the_config_round_trips() -> None:
    default = build("index", "hybrid")
    assert [m["type"] for m in default.members] == ["bm25", "dense"]
    assert default.method == "rrf" and default.rrf_k == 60
    config = HybridIndex(["bm25-multifield", {"type": "bm25s", "params": {"k1": 1.2}}], method="weighted",
                         weights=[0.6, 0.4], depth=50).to_config()
    assert config["type"] == "hybrid" and config["params"]["members"][0]["params"]["fields"] == "multifield"
    rebuilt = build("index", json.loads(json.dumps(config)))
    assert rebuilt.to_config() == config and rebuilt.indexes[1].k1 == 1.2
    for bad, message in [
        ({"members": []}, "at least one member"),
        ({"method": "sum"}, "method must be one of rrf, weighted"),
        ({"weights": [1.0]}, "weights must be 2 non-negative numbers"),
        ({"depth": 0}, "depth >= 1"),
        ({"members": ["nope"]}, "unknown index 'nope'"),
    ]:
        with pytest.raises(Exception, match=message):
            HybridIndex(**{"members": ["bm25s", "bm25"], **bad})


def test_add_and_delete_reach_every_member(hybrid: HybridIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(hybrid) == len(DOCS) and all(len(m) == len(DOCS) for m in hybrid.indexes)
    with pytest.raises(InputError, match=r"'paris#0' is already in the index"):
        hybrid.add(make_chunks(["paris"]))
    assert hybrid.delete(["clots#0", "nope"]) == 1 and "clots#0" not in hybrid
    assert all("clots#0" not in m for m in hybrid.indexes)
    assert all(h.chunk.id != "clots#0" for hits in hybrid.search(QUERIES + ["fibrin"], k=100) for h in hits)

    # A member that fails on add: the members already updated are rolled back.
    def broken(chunks: list[Chunk]) -> None:
        raise RuntimeError("member died")

    monkeypatch.setattr(hybrid.indexes[1], "add", broken)
    with pytest.raises(RuntimeError, match="member died"):
        hybrid.add(make_chunks(["clots"]))
    monkeypatch.undo()
    assert all("clots#0" not in m for m in hybrid.indexes) and len(hybrid) == len(DOCS) - 1
    hybrid.add(make_chunks(["clots"]))
    assert hybrid.search(["fibrin clot"], k=1)[0][0].chunk.id == "clots#0"
    assert HybridIndex(["bm25s"]).search(["x"], k=3) == [[]]


# The child encodes queries with the parent's thread counts: the same code path, so the same floats.
SEARCH_IN_CHILD = """
import json, sys
import faiss, torch
torch.set_num_threads(int(sys.argv[3]))
faiss.omp_set_num_threads(int(sys.argv[4]))
from indexes.hybrid import HybridIndex
index = HybridIndex.open(sys.argv[1])
print(json.dumps([[(h.chunk.id, h.score) for h in hits] for hits in index.search(json.loads(sys.argv[2]), k=4)]))
"""


def test_save_load_in_a_fresh_process_and_clear_failures(hybrid: HybridIndex, tmp_path: Path) -> None:
    hybrid.delete(["violin#0"])
    hybrid.save(tmp_path / "ix")
    assert sorted(p.name for p in (tmp_path / "ix").iterdir()) == ["manifest.json", "member-0", "member-1"]
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert manifest["kind"] == "hybrid" and set(manifest["files"]) == {"member-0/manifest.json", "member-1/manifest.json"}
    expected = [[list(pair) for pair in hits] for hits in ranked(hybrid.search(QUERIES, k=4))]

    import faiss
    import torch

    threads = [str(torch.get_num_threads()), str(faiss.omp_get_max_threads())]
    child = subprocess.run([sys.executable, "-c", SEARCH_IN_CHILD, str(tmp_path / "ix"), json.dumps(QUERIES), *threads],
                           cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert child.returncode == 0, child.stderr[-2000:]
    assert json.loads(child.stdout.strip().splitlines()[-1]) == expected

    loaded = HybridIndex(["bm25s", "dense"])
    loaded.load(tmp_path / "ix")
    assert ranked(loaded.search(QUERIES, k=4)) == ranked(hybrid.search(QUERIES, k=4))

    with pytest.raises(InputError, match=r"saved with members \['bm25s', 'dense'\].*HybridIndex\.open"):
        HybridIndex(["bm25s"]).load(tmp_path / "ix")
    manifest["format_version"] = 9
    (tmp_path / "ix" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatVersionError, match="version 9.*version 1"):
        HybridIndex.open(tmp_path / "ix")


# The pins that one SciFact build of the default hybrid re-measures (its members are the standalone indexes).
PINS_OF_THE_BUILD = {"scifact-bm25-flat": "bm25", "scifact-dense": "dense", "scifact-hybrid": "hybrid"}


@pytest.mark.slow
def test_scifact_hybrid_beats_both_of_its_inputs_and_reproduces_the_pins(scifact_dir: Path) -> None:
    """The README's claim that hybrid beats both of its inputs, and the pins of eval/expected for hybrid,
    full dense and Lucene BM25, from one build: what ``specrag eval check`` measures for those runs (one
    chunk per document, k=100, the test split), without indexing SciFact three times. Dense indexing takes
    one to two minutes on an idle 2-core CPU (far more under load)."""
    from eval.beir import load_beir
    from eval.check import PinResult, format_result, load_pins
    from eval.metrics import evaluate_run, hits_to_run

    data = load_beir(scifact_dir)
    query_ids = list(data.queries)
    queries = [data.queries[q] for q in query_ids]
    hybrid = HybridIndex()
    hybrid.add(build("chunker", "document").chunk_many(data.corpus))

    def metrics(index: object) -> dict[str, float]:
        return evaluate_run(hits_to_run(query_ids, index.search(queries, 100)), data.qrels)  # type: ignore[attr-defined]

    bm25, dense = (metrics(member) for member in hybrid.indexes)
    rrf = metrics(hybrid)
    weighted = metrics(HybridIndex(hybrid.indexes, method="weighted"))
    inputs = max(bm25["ndcg@10"], dense["ndcg@10"])
    assert rrf["ndcg@10"] > inputs and weighted["ndcg@10"] > inputs, (bm25, dense, rrf, weighted)

    measured = {"scifact-bm25-flat": bm25, "scifact-dense": dense, "scifact-hybrid": rrf}
    runs = {run.name: run for run in load_pins() if run.name in PINS_OF_THE_BUILD}
    assert set(runs) == set(PINS_OF_THE_BUILD)
    results = []
    for name, run in runs.items():
        # The pin must describe this measurement: the same index, data, split, depth and queries.
        assert (run.kind, run.dataset, run.split, run.limit) == ("retrieval", "scifact", "test", None), run
        assert run.config.get("index") == PINS_OF_THE_BUILD[name] and run.config.get("k", 100) == 100, run
        results += [PinResult(run=name, pin=pin, measured=measured[name][pin.metric]) for pin in run.pins]
    assert all(r.ok for r in results), "\n".join(format_result(r) for r in results)
