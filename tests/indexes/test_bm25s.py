"""BM25sIndex: bm25s with a Lucene-like tokenizer, checked against real Lucene (tokens and scores)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indexes.bm25s_index import BM25sIndex, lucene_length
from rag.analysis import lucene_porter, tokenize
from rag.errors import FormatVersionError, InputError
from rag.manifest import ChecksumError
from rag.protocols import ScoresChunks
from rag.registry import build
from rag.types import Chunk, Hit
from tests.indexes.corpus import DOCS, QUERIES, ROOT, check_scores_chunks, make_chunks, ranked

TRICKY = [
    "The cells' biology of Alzheimer's disease, e.g. 1,000 vs. 2.5 mg/kg (p<0.05).",
    "PU.1 and NF-κB bind 3'UTR; IL-2's role in CD4+ T-cells — 25.9 ± 3.3 kg/m² and Ca²⁺ χ² H₂O₂.",
    "ACAM2000™ ©2016 AACR®: mouse↔rat chimeras, shrink\u00adage, zinc15.docking.org, don't won’t O'Brien's",
    "Technology, methodology, possibly, stably, irreversibly, visibly, assembly, biology, vs us es is a",
    "snake_case __init__ _ x_1 3.14.15 a.b.c U.S.A. 10:30 ratio:high ; ,",
]


@pytest.fixture(scope="module")
def lucene_analyzer():
    """Anserini's default English analyzer (what BM25Index indexes with), through pyserini."""
    from indexes.lucene import pyserini_module

    analysis = pyserini_module("analysis")
    return analysis.Analyzer(analysis.get_lucene_analyzer())


@pytest.fixture()
def index() -> BM25sIndex:
    idx = BM25sIndex()
    idx.add(make_chunks(list(DOCS)))
    return idx


def test_tokenizer_reproduces_lucenes_english_analyzer(lucene_analyzer, scifact_dir: Path) -> None:
    for text in TRICKY:
        assert tokenize(text) == list(lucene_analyzer.analyze(text)), text
    with (scifact_dir / "corpus.jsonl").open(encoding="utf-8") as handle:
        records = [json.loads(line) for _, line in zip(range(400), handle)]
    for record in records:
        text = f"{record['title']}\n{record['text']}"
        assert tokenize(text) == list(lucene_analyzer.analyze(text)), record["_id"]


def test_lucene_porter_keeps_the_reference_departures() -> None:
    assert [lucene_porter(w) for w in ["vs", "us", "technology", "biology", "possibly", "stably", "irreversibly"]] == [
        "vs", "us", "technolog", "biologi", "possibl", "stabli", "irrevers",
    ]
    assert tokenize("Technology", stemmer="english") == ["technolog"]
    assert tokenize("The technologies", stemmer="none", stopwords="none") == ["the", "technologies"]
    with pytest.raises(InputError, match="unknown stemmer 'klingon'"):
        tokenize("x", stemmer="klingon")


def long_chunks() -> list[Chunk]:
    """Chunks of 3 to 120 terms, so that Lucene's one-byte length norms round some lengths."""
    chunks = []
    for number, (key, (title, text)) in enumerate(DOCS.items()):
        body = " ".join([text] * (1 + 3 * number)) + f" extra{number}" * number
        chunks.append(Chunk(id=f"{key}#0", doc_id=key, text=body, start=0, end=len(body), title=title))
    chunks.append(Chunk(id="stop#0", doc_id="stop", text="the of and", start=0, end=10))  # no terms at all
    return chunks


def test_scores_and_ranking_agree_with_lucene_bm25() -> None:
    """With Lucene's length norms bm25s gives Lucene's scores (which Anserini rounds to four decimals)."""
    from indexes.bm25 import BM25Index

    chunks = long_chunks()
    lucene, ours, exact = BM25Index(), BM25sIndex(), BM25sIndex(lucene_lengths=False)
    for idx in (lucene, ours, exact):
        idx.add(chunks)
    queries = QUERIES + ["blood glucose sugar cells", "extra7 extra3 violin"]
    differences = []
    for mine, plain, theirs in zip(ours.search(queries, k=9), exact.search(queries, k=9), lucene.search(queries, k=9)):
        assert [h.chunk.id for h in mine] == [h.chunk.id for h in theirs]
        assert np.allclose([h.score for h in mine], [h.score for h in theirs], rtol=0, atol=6e-5)
        by_id = {h.chunk.id: h.score for h in theirs}
        differences += [abs(h.score - by_id[h.chunk.id]) for h in plain if h.chunk.id in by_id]
    assert max(differences) > 1e-3  # exact lengths are measurably not Lucene's


def test_lucene_length_norms() -> None:
    assert [lucene_length(n) for n in (0, 1, 23, 24, 31, 32, 40, 100, 200, 250, 1000)] == [
        0, 1, 23, 24, 31, 32, 40, 96, 200, 248, 984,
    ]
    assert all(lucene_length(n) <= n for n in range(5000))
    with pytest.raises(InputError, match="lucene_lengths=True .* needs method='lucene'"):
        BM25sIndex(method="atire")


def test_search_hits_and_edge_cases(index: BM25sIndex) -> None:
    results = index.search(QUERIES, k=3)
    assert [hits[0].chunk.doc_id for hits in results] == ["clots", "paris", "ocean", "glucose", "violin"]
    assert all(type(h) is Hit and type(h.score) is float and h.source == "bm25s" for hits in results for h in hits)
    assert index.search(["", "the of and", "zzzunknownzzz"], k=3) == [[], [], []]
    assert len(index.search(["blood"], k=100)[0]) == 3  # only chunks that contain a query term
    assert BM25sIndex().search(["x"], k=2) == [[]] and index.search([], k=2) == []
    with pytest.raises(InputError, match="k must be at least 1"):
        index.search(["blood"], k=0)


SCORED_QUERIES = [*QUERIES, "blood", "blood blood clots", "sugar glucose cells blood", "the largest"]


def test_score_chunks_gives_search_scores_for_the_ids_asked(index: BM25sIndex, tmp_path: Path) -> None:
    assert isinstance(index, ScoresChunks)
    check_scores_chunks(index, SCORED_QUERIES, k=len(DOCS))
    check_scores_chunks(index, SCORED_QUERIES, k=2)
    every = [c.id for c in make_chunks(list(DOCS))]
    for query in SCORED_QUERIES:  # every chunk, returned or not: bm25s's score, 0 without a query term
        vocab = index._model.vocab_dict
        full = index._model.get_scores_from_ids([vocab[t] for t in index.tokenize(query) if t in vocab])
        assert index.score_chunks(query, every) == pytest.approx(full.tolist(), rel=1e-6, abs=1e-7)
    assert index.score_chunks("capital of France", ["violin#0", "paris#0", "violin#0"])[::2] == [0.0, 0.0]
    assert index.score_chunks("the of and zzzunknownzzz", every) == [0.0] * len(every)
    assert index.score_chunks("blood", []) == [] and BM25sIndex().score_chunks("blood", []) == []
    assert index.score_chunks("fibrin", "clots#0") == index.score_chunks("fibrin", ["clots#0"])  # one str is one id
    with pytest.raises(InputError, match=r"bm25s index 'bm25s': chunk id 'nope' is not in the index"):
        index.score_chunks("blood", ["clots#0", "nope"])
    with pytest.raises(InputError, match="'nope' is not in the index"):
        BM25sIndex().score_chunks("blood", ["nope"])
    with pytest.raises(InputError, match="one query str"):
        index.score_chunks(["blood"], ["clots#0"])  # type: ignore[arg-type]
    index.delete(["clots#0"])  # rows move: the id -> row map follows
    check_scores_chunks(index, SCORED_QUERIES, k=4)
    with pytest.raises(InputError, match="'clots#0' is not in the index"):
        index.score_chunks("blood", ["clots#0"])
    index.add(make_chunks(["clots"]))
    check_scores_chunks(index, SCORED_QUERIES, k=4)
    index.save(tmp_path / "ix")
    check_scores_chunks(BM25sIndex.open(tmp_path / "ix"), SCORED_QUERIES, k=4)


@pytest.mark.parametrize(
    "settings", [{"lucene_lengths": False}, {"method": "robertson", "lucene_lengths": False},
                 {"method": "bm25+", "lucene_lengths": False}, {"stemmer": "none", "stopwords": "none"}],
)
def test_score_chunks_follows_every_scoring_setting(settings: dict) -> None:
    index = BM25sIndex(**settings)
    index.add(make_chunks(list(DOCS)))
    check_scores_chunks(index, SCORED_QUERIES, k=3)


def test_score_chunks_sorts_a_matrix_whose_columns_are_out_of_order(index: BM25sIndex) -> None:
    before = [index.score_chunks(q, [c.id for c in make_chunks(list(DOCS))]) for q in SCORED_QUERIES]
    fresh = BM25sIndex()
    fresh.add(make_chunks(list(DOCS)))
    scores = fresh._model.scores
    for start, end in zip(scores["indptr"][:-1], scores["indptr"][1:]):  # reverse the rows of every column
        scores["indices"][start:end] = scores["indices"][start:end][::-1].copy()
        scores["data"][start:end] = scores["data"][start:end][::-1].copy()
    after = [fresh.score_chunks(q, [c.id for c in make_chunks(list(DOCS))]) for q in SCORED_QUERIES]
    assert after == [pytest.approx(b, rel=1e-6, abs=1e-7) for b in before]


def test_ties_are_broken_by_chunk_id_even_at_the_cut() -> None:
    idx = BM25sIndex()
    same = "identical text about kittens"
    idx.add([Chunk(id=i, doc_id=i, text=same, start=0, end=len(same)) for i in ["c", "a", "d", "b"]])
    idx.add([Chunk(id="z", doc_id="z", text="kittens kittens", start=0, end=15)])
    assert [h.chunk.id for h in idx.search(["kittens"], k=3)[0]] == ["z", "a", "b"]


def test_add_and_delete_equal_a_fresh_build(index: BM25sIndex) -> None:
    keys = list(DOCS)
    stepwise = BM25sIndex()
    stepwise.add(make_chunks(keys[:4]))
    stepwise.add(make_chunks(keys[4:]))
    assert ranked(stepwise.search(QUERIES, k=5)) == ranked(index.search(QUERIES, k=5))
    with pytest.raises(InputError, match=r"'paris#0' is already in the index"):
        index.add(make_chunks(["paris"]))
    assert index.delete(["clots#0", "nope"]) == 1 and index.delete(["clots#0"]) == 0 and "clots#0" not in index
    assert all(h.chunk.id != "clots#0" for hits in index.search(QUERIES + ["fibrin clot"], k=100) for h in hits)
    fresh = BM25sIndex()
    fresh.add(make_chunks([k for k in keys if k != "clots"]))
    assert ranked(index.search(QUERIES, k=5)) == ranked(fresh.search(QUERIES, k=5))



def test_the_term_cache_is_compacted_after_deletes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deleted chunks' terms leave the cached vocabulary once most of it is unused; scores stay a fresh build's."""
    import indexes.bm25s_index as module

    monkeypatch.setattr(module, "_VOCAB_SLACK", 0)
    keys = list(DOCS)
    index = BM25sIndex()
    index.add(make_chunks(keys))
    before = len(index._vocab)
    index.delete([f"{key}#0" for key in keys[1:]])
    assert len(index._vocab) < before and set(index._vocab) == set(index.tokenize(index.text_of(make_chunks(keys[:1])[0])))
    index.add(make_chunks(keys[1:]))
    fresh = BM25sIndex()
    fresh.add(make_chunks(keys))
    assert ranked(index.search(QUERIES, k=5)) == ranked(fresh.search(QUERIES, k=5))
    assert set(index._model.vocab_dict) == set(fresh._model.vocab_dict)

SEARCH_IN_CHILD = """
import json, sys
from indexes.bm25s_index import BM25sIndex
index = BM25sIndex.open(sys.argv[1])
print(json.dumps([[(h.chunk.id, h.score) for h in hits] for hits in index.search(json.loads(sys.argv[2]), k=4)]))
"""


def test_save_load_round_trip_in_a_fresh_process(index: BM25sIndex, tmp_path: Path) -> None:
    index.delete(["violin#0"])
    index.save(tmp_path / "ix")
    assert sorted(p.name for p in (tmp_path / "ix").iterdir()) == ["bm25s", "chunks.jsonl", "manifest.json"]
    assert not list((tmp_path / "ix" / "bm25s").glob("*.pkl"))
    expected = [[list(pair) for pair in hits] for hits in ranked(index.search(QUERIES, k=4))]
    child = subprocess.run([sys.executable, "-c", SEARCH_IN_CHILD, str(tmp_path / "ix"), json.dumps(QUERIES)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert child.returncode == 0, child.stderr[-2000:]
    assert json.loads(child.stdout.strip().splitlines()[-1]) == expected

    loaded = BM25sIndex()
    loaded.load(tmp_path / "ix")
    assert ranked(loaded.search(QUERIES, k=4)) == ranked(index.search(QUERIES, k=4))
    loaded.add(make_chunks(["violin"]))  # tokens of loaded chunks are recomputed for the rebuild
    grown = BM25sIndex()
    grown.add(make_chunks([k for k in DOCS if k != "violin"] + ["violin"]))
    assert ranked(loaded.search(QUERIES, k=5)) == ranked(grown.search(QUERIES, k=5))


def test_persistence_failures_are_clear(index: BM25sIndex, tmp_path: Path) -> None:
    index.save(tmp_path / "ix")
    with pytest.raises(InputError, match=r"saved with k1=0\.9, but this index has k1=1\.5.*BM25sIndex\.open"):
        BM25sIndex(k1=1.5).load(tmp_path / "ix")
    assert BM25sIndex.open(tmp_path / "ix").k1 == 0.9
    manifest_path = tmp_path / "ix" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    (tmp_path / "ix" / "chunks.jsonl").write_text("{}\n")
    with pytest.raises(ChecksumError, match=r"chunks\.jsonl"):
        BM25sIndex().load(tmp_path / "ix")
    manifest["format_version"] = 3
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(FormatVersionError, match="version 3.*version 1"):
        BM25sIndex.open(tmp_path / "ix")
    BM25sIndex().save(tmp_path / "empty")
    assert len(BM25sIndex.open(tmp_path / "empty")) == 0


def test_config_round_trip_and_bad_parameters() -> None:
    idx = BM25sIndex(
        k1=1.2, b=0.75, method="robertson", stemmer="english", stopwords="none", include_title=False, lucene_lengths=False
    )
    assert build("index", json.loads(json.dumps(idx.to_config()))) == idx
    assert build("index", "bm25s") == BM25sIndex() and BM25sIndex().to_config()["type"] == "bm25s"
    with pytest.raises(InputError, match="method must be one of"):
        BM25sIndex(method="bm26")
    with pytest.raises(InputError, match="stopwords must be"):
        BM25sIndex(stopwords="fr")


def test_scifact_gives_lucenes_numbers(scifact_dir: Path) -> None:
    """BM25Index (Lucene) gives 0.6789 / 0.9253 / 0.6457 here, pyserini's published flat run."""
    from eval.retrieval import run_retrieval

    result = run_retrieval(scifact_dir, "bm25s")
    assert result["ndcg@10"] == pytest.approx(0.6789, abs=1e-4)
    assert result["recall@100"] == pytest.approx(0.9253, abs=1e-4) and result["mrr@10"] == pytest.approx(0.6457, abs=1e-4)
