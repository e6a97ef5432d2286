"""DenseIndex with the real MiniLM pack and real faiss: search, delete, persistence, and its failure modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexes.dense import DenseIndex
from rag.encoders import SentenceEncoder
from rag.errors import FormatVersionError, InputError
from rag.manifest import ChecksumError
from rag.protocols import ScoresChunks
from rag.registry import build
from rag.types import Chunk
from tests.indexes.corpus import SENTENCES, check_scores_chunks, make_chunks, ranked

QUERIES = ["what thins the blood", "capital city of France", "deepest ocean", "how is blood sugar controlled"]


@pytest.fixture(scope="session")
def encoder() -> SentenceEncoder:
    enc = SentenceEncoder("minilm")
    enc.backend  # load once; every DenseIndex("minilm") in the session shares the cached model
    return enc


@pytest.fixture()
def index(encoder: SentenceEncoder) -> DenseIndex:
    idx = DenseIndex("minilm")
    idx.add(make_chunks(list(SENTENCES)))
    return idx


def test_search_finds_the_matching_chunk_with_inner_product_scores(index: DenseIndex, encoder: SentenceEncoder) -> None:
    results = index.search(QUERIES, k=2)
    assert [hits[0].chunk.doc_id for hits in results] == ["aspirin", "paris", "ocean", "insulin"]
    assert all(len(hits) == 2 and hits[0].score >= hits[1].score for hits in results)
    assert all(h.source == "dense" for hits in results for h in hits)
    top = results[1][0]
    expected = encoder.encode_queries([QUERIES[1]])[0] @ encoder.encode_documents([index.text_of(top.chunk)])[0]
    assert top.score == pytest.approx(float(expected), abs=1e-5)
    assert top.chunk.metadata == {"k": "paris"}


def test_text_of_prefixes_the_title_only_when_there_is_one() -> None:
    paris, ocean = make_chunks(["paris", "ocean"])
    assert DenseIndex().text_of(paris) == "France " + paris.text
    assert DenseIndex().text_of(ocean) == ocean.text
    assert DenseIndex(include_title=False).text_of(paris) == paris.text


def test_empty_index_and_small_index_edge_cases(encoder: SentenceEncoder) -> None:
    idx = DenseIndex("minilm", name="mine")
    assert len(idx) == 0
    assert idx.search(QUERIES[:2], k=5) == [[], []]
    assert idx.search([], k=5) == []
    idx.add([])
    idx.add(make_chunks(["paris", "ocean"]))
    hits = idx.search(["France"], k=10)[0]
    assert [h.chunk.id for h in hits] == ["paris#0", "ocean#0"]
    assert {h.source for h in hits} == {"mine"}
    with pytest.raises(InputError, match="k must be at least 1"):
        idx.search(["France"], k=0)


def test_duplicate_ids_are_errors_and_leave_the_index_unchanged(index: DenseIndex) -> None:
    with pytest.raises(InputError, match=r"'paris#0' is already in the index"):
        index.add(make_chunks(["paris"]))
    fresh = DenseIndex("minilm")
    with pytest.raises(InputError, match=r"'violin#0' appears twice"):
        fresh.add(make_chunks(["violin", "violin"]))
    assert len(index) == len(SENTENCES) and len(fresh) == 0


def test_a_failed_encoding_leaves_the_index_as_it_was(index: DenseIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    before = ranked(index.search(QUERIES, k=3))

    def broken(self: SentenceEncoder, texts: list[str]) -> np.ndarray:
        raise RuntimeError("encoder died")

    monkeypatch.setattr(SentenceEncoder, "encode_documents", broken)
    extra = Chunk(id="new#0", doc_id="new", text="something new", start=0, end=13)
    with pytest.raises(RuntimeError, match="encoder died"):
        index.add([extra])
    monkeypatch.undo()
    assert len(index) == len(SENTENCES) and "new#0" not in index
    assert ranked(index.search(QUERIES, k=3)) == before
    index.add([extra])  # the id was not reserved by the failed attempt
    assert "new#0" in index


def test_delete_removes_chunks_by_id(index: DenseIndex) -> None:
    assert index.delete(["paris#0", "no-such-id"]) == 1
    assert index.delete(["paris#0"]) == 0
    assert len(index) == len(SENTENCES) - 1 and "paris#0" not in index
    hits = index.search(["capital city of France"], k=len(SENTENCES))[0]
    assert "paris#0" not in {h.chunk.id for h in hits} and len(hits) == len(SENTENCES) - 1
    index.add(make_chunks(["paris"]))  # a deleted id may be added again
    assert index.search(["capital city of France"], k=1)[0][0].chunk.id == "paris#0"


def test_save_load_round_trip_gives_identical_results(index: DenseIndex, tmp_path: Path) -> None:
    index.delete(["violin#0"])  # ids with a gap must survive the round trip
    before = ranked(index.search(QUERIES, k=4))
    index.save(tmp_path / "ix")
    assert sorted(p.name for p in (tmp_path / "ix").iterdir()) == ["chunks.jsonl", "manifest.json", "vectors.faiss"]

    loaded = DenseIndex("minilm")
    loaded.load(tmp_path / "ix")
    opened = DenseIndex.open(tmp_path / "ix")
    assert len(loaded) == len(opened) == len(index)
    assert ranked(loaded.search(QUERIES, k=4)) == before
    assert ranked(opened.search(QUERIES, k=4)) == before
    assert opened == index
    assert loaded.search(QUERIES[:1], k=1)[0][0].chunk == index.search(QUERIES[:1], k=1)[0][0].chunk

    # Sequential ids continue after a reload: adding does not collide with a saved id.
    loaded.add(make_chunks(["violin"]))
    assert loaded.search(["instrument with four strings"], k=1)[0][0].chunk.id == "violin#0"


def test_manifest_records_format_model_counts_and_checksums(index: DenseIndex, tmp_path: Path) -> None:
    index.save(tmp_path / "ix")
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["kind"] == "dense"
    assert manifest["index_kind"] == "flat" and manifest["metric"] == "ip"
    assert manifest["model"] == "minilm" and manifest["dimension"] == 384
    assert manifest["count"] == len(SENTENCES) and manifest["created_at"]
    assert manifest["component"] == index.to_config()
    assert set(manifest["files"]) == {"vectors.faiss", "chunks.jsonl"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    lines = (tmp_path / "ix" / "chunks.jsonl").read_text().splitlines()
    assert [json.loads(line)["faiss_id"] for line in lines] == list(range(len(SENTENCES)))


def test_empty_index_saves_and_loads(encoder: SentenceEncoder, tmp_path: Path) -> None:
    DenseIndex("minilm").save(tmp_path / "empty")
    opened = DenseIndex.open(tmp_path / "empty")
    assert len(opened) == 0 and opened.search(["x"], k=3) == [[]]


def test_failed_save_leaves_the_previous_index_loadable(
    index: DenseIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import faiss

    target = tmp_path / "ix"
    index.save(target)
    good = ranked(index.search(QUERIES, k=3))
    index.add([Chunk(id="late#0", doc_id="late", text="added after the save", start=0, end=20)])

    def broken_write(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", broken_write)
    with pytest.raises(OSError, match="disk full"):
        index.save(target)
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == [".ix.lock", "ix"]  # no staging directory left behind
    reopened = DenseIndex.open(target)
    assert len(reopened) == len(SENTENCES) and "late#0" not in reopened
    assert ranked(reopened.search(QUERIES, k=3)) == good


def test_other_format_version_is_refused_naming_both_versions(index: DenseIndex, tmp_path: Path) -> None:
    index.save(tmp_path / "ix")
    manifest_path = tmp_path / "ix" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = 7
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(FormatVersionError) as caught:
        DenseIndex("minilm").load(tmp_path / "ix")
    message = str(caught.value)
    assert str(tmp_path / "ix") in message and "version 7" in message and "version 1" in message
    with pytest.raises(FormatVersionError):
        DenseIndex.open(tmp_path / "ix")


def test_checksum_mismatch_names_the_file(index: DenseIndex, tmp_path: Path) -> None:
    index.save(tmp_path / "ix")
    chunks_path = tmp_path / "ix" / "chunks.jsonl"
    data = chunks_path.read_bytes()
    chunks_path.write_bytes(data.replace(b"Paris", b"Rome!"))  # same size, other bytes
    target = DenseIndex("minilm")
    with pytest.raises(ChecksumError, match=r"chunks\.jsonl: sha256"):
        target.load(tmp_path / "ix")
    assert len(target) == 0  # nothing was loaded

    chunks_path.write_bytes(data)
    (tmp_path / "ix" / "vectors.faiss").write_bytes(b"garbage")
    with pytest.raises(ChecksumError, match=r"vectors\.faiss: 7 bytes"):
        DenseIndex.open(tmp_path / "ix")


def test_load_refuses_another_model_and_open_adopts_it(index: DenseIndex, tmp_path: Path) -> None:
    index.save(tmp_path / "ix")
    with pytest.raises(InputError, match=r"saved with model='minilm'.*model='other-model'.*DenseIndex\.open"):
        DenseIndex("other-model").load(tmp_path / "ix")
    with pytest.raises(InputError, match="no manifest.json"):
        DenseIndex("minilm").load(tmp_path)
    assert DenseIndex.open(tmp_path / "ix").model == "minilm"


def test_unknown_kind_lists_the_supported_kinds() -> None:
    with pytest.raises(InputError, match=r"kind 'nope' is not supported; supported kinds: flat, hnsw, ivfpq"):
        DenseIndex(kind="nope")
    with pytest.raises(InputError, match="supported kinds"):
        build("index", {"type": "dense", "params": {"kind": "nope"}})


def test_an_unknown_encoder_dtype_is_refused_at_construction() -> None:
    with pytest.raises(InputError, match="dtype must be one of float32, bfloat16 or 'auto', got 'float16'"):
        DenseIndex(dtype="float16")


def test_config_round_trip() -> None:
    idx = DenseIndex(model="minilm", kind="flat", batch_size=16, include_title=False, name="dense-notitle")
    config = idx.to_config()
    assert config == {
        "type": "dense",
        "params": {
            "model": "minilm", "kind": "flat", "batch_size": 16, "include_title": False, "name": "dense-notitle",
            "ef_search": 128, "nprobe": 64, "nlist": 0, "pq_m": 192, "mmap": False,
            "dtype": "float32",
        },
    }
    assert build("index", config) == idx
    assert build("index", json.loads(json.dumps(config))) == idx
    assert build("index", "dense") == DenseIndex()
    assert build("index", config) != DenseIndex()


# -- approximate kinds: HNSW and IVF-PQ ---------------------------------------------------------------


@pytest.fixture(scope="module")
def title_chunks(scifact_dir: Path) -> list[Chunk]:
    """300 short real texts (SciFact titles): enough to train IVF-PQ, quick to encode."""
    from rag.io import read_jsonl

    chunks = []
    for _, record in read_jsonl(scifact_dir / "corpus.jsonl"):
        title = record["title"]
        chunks.append(Chunk(id=str(record["_id"]), doc_id=str(record["_id"]), text=title, start=0, end=len(title)))
        if len(chunks) == 300:
            break
    return chunks


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_kinds_agree_with_exact_search(kind: str, title_chunks: list[Chunk], encoder: SentenceEncoder) -> None:
    exact, approximate = DenseIndex(kind="flat"), DenseIndex(kind=kind, nprobe=64)
    exact.add(title_chunks)
    approximate.add(title_chunks)
    queries = [c.text for c in title_chunks[:40]]
    truth = [[h.chunk.id for h in hits] for hits in exact.search(queries, k=10)]
    found = [[h.chunk.id for h in hits] for hits in approximate.search(queries, k=10)]
    overlap = sum(len(set(a) & set(b)) for a, b in zip(truth, found)) / (10 * len(queries))
    assert overlap >= (0.95 if kind == "hnsw" else 0.6), overlap
    # A title searched for itself comes first (or, under PQ's approximate scores, within the top 3).
    assert sum(q.id in ids[: 1 if kind == "hnsw" else 3] for q, ids in zip(title_chunks, found)) >= 38
    assert all(len(ids) == 10 for ids in found)


def test_hnsw_delete_leaves_tombstones_that_search_skips_even_after_a_reload(
    title_chunks: list[Chunk], encoder: SentenceEncoder, tmp_path: Path
) -> None:
    index = DenseIndex(kind="hnsw")
    index.add(title_chunks[:100])
    gone = [c.id for c in title_chunks[:30]]
    assert index.delete(gone + ["no-such-id"]) == 30 and len(index) == 70
    queries = [c.text for c in title_chunks[:30]]
    for hits in index.search(queries, k=5):
        assert len(hits) == 5 and not {h.chunk.id for h in hits} & set(gone)
    everything = index.search(queries[:1], k=100)[0]
    assert len(everything) == 70
    index.save(tmp_path / "hnsw")
    reloaded = DenseIndex.open(tmp_path / "hnsw")
    assert len(reloaded) == 70
    assert ranked(reloaded.search(queries, k=5)) == ranked(index.search(queries, k=5))
    index.add(title_chunks[:1])  # a deleted id may come back
    assert index.search(queries[:1], k=1)[0][0].chunk.id == title_chunks[0].id


def test_ivfpq_trains_on_its_first_add_and_round_trips(
    title_chunks: list[Chunk], encoder: SentenceEncoder, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="at least 256 chunks; got 10"):
        DenseIndex(kind="ivfpq").add(title_chunks[:10])
    with pytest.raises(InputError, match="pq_m=50 must divide the embedding dimension 384"):
        DenseIndex(kind="ivfpq", pq_m=50).add(title_chunks)
    empty = DenseIndex(kind="ivfpq")
    empty.save(tmp_path / "empty")  # saved before training; the first add after loading trains
    index = DenseIndex.open(tmp_path / "empty")
    index.add(title_chunks)
    assert index.search([title_chunks[0].text], k=1)[0]
    index.delete([title_chunks[0].id])
    queries = [c.text for c in title_chunks[:20]]
    assert title_chunks[0].id not in {h.chunk.id for hits in index.search(queries, k=20) for h in hits}
    index.save(tmp_path / "ivfpq")
    manifest = json.loads((tmp_path / "ivfpq" / "manifest.json").read_text())
    assert manifest["faiss_factory"] == "IVF7,PQ192x8" and manifest["count"] == 299
    reloaded = DenseIndex.open(tmp_path / "ivfpq")
    assert reloaded._faiss.code_size == 192  # bytes per vector, against 1,536 for float32
    assert ranked(reloaded.search(queries, k=5)) == ranked(index.search(queries, k=5))


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_memory_mapped_load_gives_identical_results(
    kind: str, title_chunks: list[Chunk], encoder: SentenceEncoder, tmp_path: Path
) -> None:
    index = DenseIndex(kind=kind)
    index.add(title_chunks)
    index.save(tmp_path / kind)
    mapped = DenseIndex(kind=kind, mmap=True)
    mapped.load(tmp_path / kind)
    queries = [c.text for c in title_chunks[:10]]
    assert ranked(mapped.search(queries, k=5)) == ranked(index.search(queries, k=5))


def test_search_vectors_checks_its_input(index: DenseIndex, encoder: SentenceEncoder) -> None:
    vectors = encoder.encode_queries(QUERIES)
    assert ranked(index.search_vectors(vectors, k=3)) == ranked(index.search(QUERIES, k=3))
    with pytest.raises(InputError, match="query vectors are 3-d"):
        index.search_vectors(np.ones((1, 3), dtype=np.float32))
    with pytest.raises(InputError, match="must be 2-d"):
        index.search_vectors(np.ones(384, dtype=np.float32))


def test_score_chunks_gives_search_scores_for_the_ids_asked(index: DenseIndex, encoder: SentenceEncoder) -> None:
    assert isinstance(index, ScoresChunks)
    check_scores_chunks(index, QUERIES, k=len(SENTENCES))
    vector = encoder.encode_queries([QUERIES[0]])
    ids = ["violin#0", "aspirin#0", "violin#0"]  # any order, repeats allowed
    assert index.score_vectors(vector, ids) == pytest.approx(index.score_chunks(QUERIES[0], ids), rel=1e-4, abs=1e-5)
    assert index.score_vectors(vector[0], "paris#0") == pytest.approx(index.score_chunks(QUERIES[0], ["paris#0"]))
    assert index.score_chunks(QUERIES[0], []) == [] and index.score_vectors(vector, []) == []
    with pytest.raises(InputError, match=r"dense index 'dense': chunk id 'nope#0' is not in the index"):
        index.score_chunks(QUERIES[0], ["paris#0", "nope#0"])
    with pytest.raises(InputError, match="query vector is 3-d"):
        index.score_vectors(np.ones(3, dtype=np.float32), ["paris#0"])
    with pytest.raises(InputError, match="one query vector"):
        index.score_vectors(np.ones((2, 384), dtype=np.float32), ["paris#0"])
    with pytest.raises(InputError, match="one query str"):
        index.score_chunks(QUERIES[:2], ["paris#0"])  # type: ignore[arg-type]
    index.delete(["paris#0"])
    with pytest.raises(InputError, match="'paris#0' is not in the index"):
        index.score_chunks(QUERIES[1], ["paris#0"])
    with pytest.raises(InputError, match="'paris#0' is not in the index"):
        DenseIndex("minilm").score_chunks(QUERIES[1], ["paris#0"])
    assert DenseIndex("minilm").score_chunks(QUERIES[1], []) == []


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_score_chunks_gives_the_approximate_kinds_own_scores(
    kind: str, title_chunks: list[Chunk], encoder: SentenceEncoder, tmp_path: Path
) -> None:
    index = DenseIndex(kind=kind)
    index.add(title_chunks)
    queries = [c.text for c in title_chunks[:5]] + ["blood clots", "insulin resistance"]
    check_scores_chunks(index, queries, k=10)
    gone = [c.id for c in title_chunks[:3]]
    index.delete(gone)  # HNSW keeps tombstones, IVF removes (and updates the direct map score_chunks made)
    with pytest.raises(InputError, match=f"{gone[0]!r} is not in the index"):
        index.score_chunks(queries[0], gone[:1])
    index.add(title_chunks[:1])  # a deleted id comes back, with a new faiss id
    check_scores_chunks(index, queries, k=10)
    index.save(tmp_path / kind)
    mapped = DenseIndex(kind=kind, mmap=True)
    mapped.load(tmp_path / kind)
    check_scores_chunks(mapped, queries, k=10)
    assert ranked(mapped.search(queries, k=5)) == ranked(index.search(queries, k=5))


def test_presets_name_the_approximate_kinds() -> None:
    assert build("index", "dense-hnsw") == DenseIndex(kind="hnsw")
    assert build("index", "dense-ivfpq") == DenseIndex(kind="ivfpq")
