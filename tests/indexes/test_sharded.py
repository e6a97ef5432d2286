"""ShardedIndex and Ray Data ingestion on a real local Ray cluster (2 CPUs, started once for this module).

Real shards (MiniLM dense, bm25s, Lucene BM25) in real actors: exactness of the dense merge, closeness of
per-shard BM25, a shard actor killed in the middle of a query, timeouts, the shard manifest and bad input.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from indexes.bm25s_index import BM25sIndex  # noqa: E402
from indexes.sharded import (  # noqa: E402
    FORMAT_VERSION,
    ShardError,
    ShardedIndex,
    merge_hits,
    read_shard_manifest,
    shard_directory,
    shard_of,
)
from rag.errors import FormatVersionError, InputError, UnknownComponentError  # noqa: E402
from rag.manifest import MANIFEST, ChecksumError  # noqa: E402
from rag.registry import build, registered  # noqa: E402
from rag.types import Hit  # noqa: E402
from tests.indexes.corpus import DOCS, QUERIES, make_chunks, ranked  # noqa: E402
from tests.indexes.test_bm25 import LUCENE_SUM_ORDER  # noqa: E402
from tests.same_ranking import assert_same_ranking  # noqa: E402


class SlowIndex(BM25sIndex):
    """bm25s that sleeps ``delay`` seconds in every search: a query that is still running when a test acts."""

    def __init__(self, delay: float = 0.0, name: str = "slow") -> None:
        super().__init__(name=name)
        self.delay = delay

    def search(self, queries: list[str], k: int = 10) -> list[list[Hit]]:
        time.sleep(self.delay)
        return super().search(queries, k)


@pytest.fixture(scope="module", autouse=True)
def _slow_index_registered():
    """Registered in this process for the module's tests (the actors get the class with the spec)."""
    with registered("index", "test-slow", f"{__name__}:SlowIndex"):
        yield


@pytest.fixture(scope="module", autouse=True)
def cluster():
    if ray.is_initialized():
        yield
        return
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def write_corpus(path: Path, docs: dict[str, tuple[str, str]]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for key, (title, text) in docs.items():
            handle.write(json.dumps({"_id": key, "title": title, "text": text}) + "\n")
    return path


@pytest.fixture(scope="module")
def scifact_sharded(tmp_path_factory, scifact_dir):
    """A SciFact subset (30 queries, about 780 documents) ingested with Ray Data into 4 bm25s shards."""
    from eval.beir import load_beir
    from indexes.ray_ingest import ingest

    dataset = load_beir(scifact_dir).subset(30)
    root = tmp_path_factory.mktemp("scifact")
    corpus = root / "corpus.jsonl"
    with corpus.open("w", encoding="utf-8") as handle:
        for doc in dataset.corpus:
            handle.write(json.dumps({"_id": doc.id, "title": doc.title, "text": doc.text}) + "\n")
    trace = ingest(corpus, root / "sharded", index="bm25s", chunker="document", shards=4)
    return dataset, root / "sharded", trace


# -- exactness and closeness ------------------------------------------------------------------------------


def test_dense_sharded_top_k_is_identical_to_one_index() -> None:
    chunks = make_chunks(list(DOCS))
    single = build("index", "dense")
    single.add(chunks)
    sharded = ShardedIndex(shard="dense", shards=3)
    try:
        sharded.add(chunks)
        assert len(sharded) == len(chunks)
        assert sorted({shard_of(c.doc_id, 3) for c in chunks}) == [0, 1, 2]  # every shard holds something
        expected, got = single.search(QUERIES, k=5), sharded.search(QUERIES, k=5)
        # The shards encode the queries in their own processes: float noise, far below 1e-5.
        assert_same_ranking(got, expected, rel=0.0, abs=1e-5)
        assert all(h.source == "dense" and h.chunk.metadata == {"k": h.chunk.doc_id} for hits in got for h in hits)
        report = sharded.last_report
        assert report.answered == [0, 1, 2] and not report.partial and set(report.shard_seconds) == {0, 1, 2}
        assert sharded.delete(["paris#0", "nope#0"]) == 1 and len(sharded) == len(chunks) - 1
        assert "paris#0" not in [h.chunk.id for h in sharded.search(["capital of France"], k=8)[0]]
    finally:
        sharded.close()


def test_bm25_shards_from_ray_data_stay_close_to_one_index(scifact_sharded) -> None:
    from eval.metrics import evaluate_run, hits_to_run

    dataset, directory, trace = scifact_sharded
    stage = trace.stages[0]
    assert stage.stage == "ray-ingest" and stage.n_in == stage.n_out == len(dataset.corpus)
    single = BM25sIndex()
    single.add(build("chunker", "document").chunk_many(dataset.corpus))
    sharded = ShardedIndex.open(directory)
    try:
        qids = list(dataset.queries)
        texts = [dataset.queries[q] for q in qids]
        one, many = single.search(texts, 10), sharded.search(texts, 10)
        ndcg_one = evaluate_run(hits_to_run(qids, one), dataset.qrels)["ndcg@10"]
        ndcg_many = evaluate_run(hits_to_run(qids, many), dataset.qrels)["ndcg@10"]
        # Per-shard statistics: ~200 documents per shard here, so the scores move; the rankings barely do.
        assert abs(ndcg_many - ndcg_one) < 0.03, (ndcg_one, ndcg_many)
        overlap = sum(len({h.chunk.id for h in a} & {h.chunk.id for h in b}) for a, b in zip(one, many))
        assert overlap / (10 * len(texts)) > 0.8
    finally:
        sharded.close()


def test_lucene_bm25_shards_each_load_by_themselves(tmp_path: Path) -> None:
    from indexes.bm25 import BM25Index

    chunks = make_chunks(list(DOCS))
    sharded = ShardedIndex(shard="bm25", shards=2)
    try:
        sharded.add(chunks)
        sharded.save(tmp_path / "lucene-sharded")
        hits = sharded.search(QUERIES, k=3)
        assert [h[0].chunk.doc_id for h in hits] == ["clots", "paris", "ocean", "glucose", "violin"]
    finally:
        sharded.close()
    for number in range(2):
        shard = BM25Index.open(tmp_path / "lucene-sharded" / shard_directory(number))
        assert {c.doc_id for c in shard._chunks.values()} == {c.doc_id for c in chunks if shard_of(c.doc_id, 2) == number}


def test_lucene_bm25_global_statistics_reproduce_one_index() -> None:
    from indexes.bm25 import BM25Index

    chunks = make_chunks(list(DOCS))
    single = BM25Index()
    single.add(chunks)
    expected = ranked(single.search(QUERIES, k=5))
    # One shard in global mode: the idf-correcting boosts are all 1, so the query must equal Anserini's own.
    one = ShardedIndex(shard="bm25", shards=1)
    assert one.uses_global_statistics  # "auto" picks them for Lucene BM25
    try:
        one.add(chunks)
        # Its own BooleanQuery of the same terms and boosts, whose clauses Lucene may add in another order.
        assert_same_ranking(one.search(QUERIES, k=5), expected, **LUCENE_SUM_ORDER)
    finally:
        one.close()
    with pytest.raises(InputError, match="statistics='global' is implemented for Lucene BM25"):
        ShardedIndex(shard="bm25s", statistics="global")


# -- failures -----------------------------------------------------------------------------------------


def test_a_shard_killed_mid_query_fails_clearly_then_partial_mode_answers() -> None:
    chunks = make_chunks(list(DOCS))
    sharded = ShardedIndex(shard={"type": "test-slow", "params": {"delay": 3.0}}, shards=3, timeout_s=60)
    try:
        sharded.add(chunks)
        sharded.warm_up()
        victim = sharded.actors[1]
        outcome: dict[str, BaseException] = {}

        def search() -> None:
            try:
                sharded.search(QUERIES, k=4)
            except BaseException as exc:  # handed to the test thread below
                outcome["error"] = exc

        worker = threading.Thread(target=search)
        worker.start()
        time.sleep(1.0)  # the query is now sleeping inside every shard
        ray.kill(victim)
        worker.join(timeout=60)
        error = outcome.get("error")
        assert isinstance(error, ShardError), outcome
        assert "shard 1 " in str(error) and "actor died" in str(error) and "allow_partial=True" in str(error)
        assert [(f.shard, f.reason) for f in error.failures] == [(1, "died")]
        assert sharded.last_report.answered == [0, 2] and sharded.last_report.partial

        sharded.allow_partial = True
        hits = sharded.search(QUERIES, k=4)
        report = sharded.last_report
        assert report.partial and [(f.shard, f.reason) for f in report.failed] == [(1, "died")]
        assert report.to_dict()["partial"] is True and report.answered == [0, 2]
        # The merge of what the surviving shards hold, each scored with its own statistics.
        expected = []
        for number in (0, 2):
            survivor = BM25sIndex()
            survivor.add([c for c in chunks if shard_of(c.doc_id, 3) == number])
            expected.append(survivor.search(QUERIES, k=4))
        merged = [merge_hits([expected[0][q], expected[1][q]], 4) for q in range(len(QUERIES))]
        assert [[(h.chunk.id, pytest.approx(h.score)) for h in row] for row in merged] == ranked(hits)
    finally:
        sharded.close()


def test_a_shard_that_does_not_answer_in_time_is_named() -> None:
    sharded = ShardedIndex(shard={"type": "test-slow", "params": {"delay": 2.0}}, shards=2, timeout_s=0.5)
    try:
        sharded.add(make_chunks(list(DOCS)))
        with pytest.raises(ShardError, match=r"shard 0 did not answer within 0.5 s") as caught:
            sharded.search(QUERIES[:1], k=2)
        assert sorted(f.reason for f in caught.value.failures) == ["timeout", "timeout"]
    finally:
        sharded.close()


# -- the shard manifest --------------------------------------------------------------------------------


def test_shard_manifest_round_trip(scifact_sharded, tmp_path: Path) -> None:
    dataset, directory, _ = scifact_sharded
    manifest = read_shard_manifest(directory)
    assert manifest["kind"] == "sharded" and manifest["format_version"] == FORMAT_VERSION
    assert manifest["shard_component"]["type"] == "bm25s" and manifest["component"]["type"] == "sharded"
    assert [s["directory"] for s in manifest["shards"]] == [shard_directory(n) for n in range(4)]
    assert sum(s["count"] for s in manifest["shards"]) == manifest["count"] == len(dataset.corpus)
    assert manifest["ingest"]["documents"] == len(dataset.corpus)
    for number, entry in enumerate(manifest["shards"]):
        shard = BM25sIndex.open(directory / entry["directory"])  # each shard is a normal index
        assert len(shard) == entry["count"] > 0
        assert all(shard_of(c.doc_id, 4) == number for c in shard._chunks.values())

    first = ShardedIndex.open(directory)
    try:
        before = ranked(first.search(QUERIES, k=5))
        first.save(tmp_path / "copy")
    finally:
        first.close()
    again = ShardedIndex.open(tmp_path / "copy")
    try:
        assert ranked(again.search(QUERIES, k=5)) == before
        assert read_shard_manifest(tmp_path / "copy")["count"] == manifest["count"]
    finally:
        again.close()

    wrong = ShardedIndex(shard="bm25s", shards=3)
    with pytest.raises(InputError, match="holds 4 shards of 'bm25s'"):
        wrong.load(directory)

    data = json.loads((tmp_path / "copy" / MANIFEST).read_text())
    (tmp_path / "copy" / shard_directory(2) / MANIFEST).write_text("{}")
    with pytest.raises(ChecksumError, match=shard_directory(2)):
        read_shard_manifest(tmp_path / "copy")
    data["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "copy" / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(FormatVersionError, match="sharded index format version"):
        ShardedIndex.open(tmp_path / "copy")


# -- bad input -----------------------------------------------------------------------------------------


def test_bad_input_is_named(tmp_path: Path) -> None:
    from indexes.ray_ingest import ingest

    with pytest.raises(InputError, match="shards must be a positive integer"):
        ShardedIndex(shards=0)
    with pytest.raises(UnknownComponentError, match="unknown index 'nope'"):
        ShardedIndex(shard="nope")
    with pytest.raises(InputError, match="cannot itself be a sharded index"):
        ShardedIndex(shard={"type": "sharded", "params": {"shard": "bm25s"}})
    with pytest.raises(InputError, match="k must be at least 1"):
        ShardedIndex(shard="bm25s").search(["q"], k=0)
    with pytest.raises(InputError, match="not a saved specrag index"):
        ShardedIndex(shard="bm25s").load(tmp_path)
    with pytest.raises(InputError, match="no such file"):
        ingest(tmp_path / "missing.jsonl", tmp_path / "out", index="bm25s", chunker="document")

    corpus = write_corpus(tmp_path / "corpus.jsonl", {"a": ("", "fine text")})
    with corpus.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"_id": "b", "title": "no text"}) + "\n")
    with pytest.raises(InputError, match=r"corpus.jsonl \(document 'b'\): document has no 'text' string"):
        ingest(corpus, tmp_path / "out", index="bm25s", chunker="document", shards=2)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_cli_index_ray_writes_a_pipeline_that_loads_and_searches(tmp_path: Path) -> None:
    import yaml

    from rag.cli import main
    from rag.pipeline import Pipeline

    corpus = write_corpus(tmp_path / "corpus.jsonl", DOCS)
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"chunker": {"type": "document"}, "index": {"type": "bm25s"}, "generator": None}))
    assert main(["index", "--shards", "2", "--corpus", str(corpus), "--out", str(tmp_path / "p")]) == 2
    code = main(["index", "--ray", "--shards", "2", "--corpus", str(corpus), "--out", str(tmp_path / "p"),
                 "--config", str(config)])
    assert code == 0
    pipeline = Pipeline.load(tmp_path / "p")
    try:
        assert isinstance(pipeline.index, ShardedIndex) and pipeline.index.shard["type"] == "bm25s"
        assert pipeline.index.shards == 2 and len(pipeline.index) == len(DOCS)
        hits, _ = pipeline.retrieve(["capital of France"])
        assert hits[0][0].chunk.doc_id == "paris"
    finally:
        pipeline.index.close()
