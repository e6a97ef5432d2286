"""SpladeEncoder and SpladeIndex with the real splade-tiny pack and a real Lucene impact index: no mocks.

The model loads once per session and the JVM starts once (the first test that touches Lucene pays for it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexes.splade import SpladeIndex
from indexes.splade_encoder import SpladeEncoder, quantize
from rag.errors import FormatVersionError, InputError
from rag.protocols import ScoresChunks
from rag.registry import build
from rag.types import Chunk, Hit
from tests.indexes.corpus import DOCS, ROOT, check_scores_chunks, make_chunks, ranked

QUERIES = ["blood clots and platelets", "capital of France", "deepest ocean", "glucose for energy", "violin music"]


@pytest.fixture(scope="module")
def encoder() -> SpladeEncoder:
    return SpladeEncoder()


@pytest.fixture(scope="module")
def built() -> SpladeIndex:
    """Read-only: tests that change an index build their own."""
    idx = SpladeIndex()
    idx.add(make_chunks(list(DOCS)))
    return idx


# -- the encoder -------------------------------------------------------------------------------------


def test_encoder_rows_are_nonnegative_sparse_in_input_order_and_independent_of_batching(encoder: SpladeEncoder) -> None:
    texts = [text for _, text in DOCS.values()] + ["bow"]
    batched = encoder.encode_documents(texts)
    assert batched.shape == (len(texts), 30522) == (len(texts), encoder.vocab_size)
    assert batched.dtype == np.float32 and batched.format == "csr"
    assert batched.data.min() > 0 and 0 < batched.nnz < 0.05 * batched.shape[0] * batched.shape[1]
    # Each text alone (no padding) gives the same row as inside a padded, length-sorted batch.
    one_by_one = SpladeEncoder(batch_size=1)
    for row, text in enumerate(texts):
        np.testing.assert_allclose(batched[row].toarray(), one_by_one.encode_documents([text]).toarray(), atol=1e-5)
    queries = encoder.encode_queries(QUERIES)
    assert queries.shape == (len(QUERIES), 30522) and queries.dtype == np.float32
    assert encoder.encode_queries([]).shape == (0, 30522)
    with pytest.raises(InputError, match="queries item 1 is a int"):
        encoder.encode_queries(["fine", 3])  # type: ignore[list-item]


def test_weights_are_max_pooled_log_saturated_logits_over_unpadded_tokens(encoder: SpladeEncoder) -> None:
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from rag.models import resolve_model

    path = resolve_model("splade-tiny")
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForMaskedLM.from_pretrained(path).eval()
    texts = ["bow", DOCS["clots"][1]]  # the short one is padded to the long one's length
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        saturated = torch.log1p(torch.relu(model(**batch).logits))
    mask = batch["attention_mask"].unsqueeze(-1)
    reference = (saturated * mask).amax(dim=1).numpy()  # SPLADE's max pooling over real tokens
    got = encoder.encode_documents(texts).toarray()
    np.testing.assert_allclose(got, reference, atol=1e-5)
    # The mask matters: pooling over the padding too gives a different vector for the short text.
    assert not np.allclose(saturated.amax(dim=1).numpy()[0], reference[0], atol=1e-3)
    truncated = SpladeEncoder(max_length=4).encode_documents([texts[1]]).toarray()
    first_two = tokenizer.decode(batch["input_ids"][1][1:3])  # max_length 4 keeps [CLS], two tokens, [SEP]
    np.testing.assert_allclose(truncated, encoder.encode_documents([first_two]).toarray(), atol=1e-5)


def test_explain_lists_the_heaviest_query_terms(built: SpladeIndex) -> None:
    terms = built.explain("capital of France", top=5)
    assert len(terms) == 5 and all(type(t) is str and type(w) is float and w > 0 for t, w in terms)
    assert [w for _, w in terms] == sorted((w for _, w in terms), reverse=True)
    assert {"capital", "france"} <= {t for t, _ in terms}
    everything = built.explain("capital of France", top=10_000)
    assert everything[:5] == terms and len(everything) == built.encoder.encode_queries(["capital of France"]).nnz
    with pytest.raises(InputError, match="top must be at least 1"):
        built.explain("x", top=0)
    with pytest.raises(InputError, match="one query str"):
        built.explain(["x"])  # type: ignore[arg-type]


# -- the impact index --------------------------------------------------------------------------------


def exact_ranking(queries: Any, documents: Any, chunks: list[Chunk], scale: int, k: int) -> list[list[tuple[str, float]]]:
    """The top ``k`` of the exact integer dot products of quantised vectors (ties by chunk id), as scores."""
    rankings = []
    for row in (queries @ documents.T).toarray():
        best = sorted(((c.id, s) for c, s in zip(chunks, row.tolist()) if s > 0), key=lambda p: (-p[1], p[0]))[:k]
        rankings.append([(cid, s / scale**2) for cid, s in best])
    return rankings


def test_lucene_impact_scores_equal_the_exact_dot_product_of_quantised_vectors(
    built: SpladeIndex, encoder: SpladeEncoder
) -> None:
    chunks = make_chunks(list(DOCS))
    documents = quantize(encoder.encode_documents([built.text_of(c) for c in chunks]), built.scale)
    queries = built.query_vectors(QUERIES)
    assert queries.dtype == np.int32 and queries.data.min() >= 1
    results = built.search(QUERIES, k=len(DOCS))
    # Integer impacts: Lucene's sums are exact, so scores equal the integer products exactly.
    assert ranked(results) == exact_ranking(queries, documents, chunks, built.scale, len(DOCS))
    for hits in results:
        for hit in hits:
            assert type(hit) is Hit and type(hit.score) is float and type(hit.chunk.id) is str
            assert hit.source == "splade" and hit.chunk.metadata == {"k": hit.chunk.doc_id}
    assert [hits[0].chunk.doc_id for hits in results] == ["aspirin", "paris", "ocean", "glucose", "violin"]
    # The single-query path, against its own query vector: a query encoded alone is padded differently from
    # one in a batch, and that float noise can round one of its weights the other way.
    alone = built.search(QUERIES[1:2], k=3)
    assert ranked(alone) == exact_ranking(built.query_vectors(QUERIES[1:2]), documents, chunks, built.scale, 3)


def test_score_chunks_gives_search_scores_for_the_ids_asked(built: SpladeIndex, encoder: SpladeEncoder) -> None:
    assert isinstance(built, ScoresChunks)
    queries = [*QUERIES, "blood", "sugar glucose cells blood"]
    check_scores_chunks(built, queries, k=len(DOCS))
    check_scores_chunks(built, queries, k=2)
    # Every chunk, returned or not: the exact dot product of the quantised vectors (0 without a shared term).
    chunks = make_chunks(list(DOCS))
    documents = quantize(encoder.encode_documents([built.text_of(c) for c in chunks]), built.scale)
    for query in queries[:3]:
        exact = (built.query_vectors([query]) @ documents.T).toarray()[0] / built.scale**2
        assert built.score_chunks(query, [c.id for c in chunks]) == pytest.approx(exact.tolist(), rel=1e-6, abs=1e-9)
    assert built.score_chunks("blood", []) == []
    assert built.score_chunks("fibrin", "clots#0") == built.score_chunks("fibrin", ["clots#0"])  # one str is one id
    with pytest.raises(InputError, match=r"splade index 'splade': chunk id 'nope' is not in the index"):
        built.score_chunks("blood", ["clots#0", "nope"])
    with pytest.raises(InputError, match="one query str"):
        built.score_chunks(["blood"], ["clots#0"])  # type: ignore[arg-type]


def test_score_chunks_follows_adds_deletes_and_reloads(tmp_path: Path) -> None:
    idx = SpladeIndex(name="sp")
    idx.add(make_chunks(list(DOCS)[:4]))
    check_scores_chunks(idx, QUERIES[:2], k=4)
    idx.add(make_chunks(list(DOCS)[4:]))
    check_scores_chunks(idx, QUERIES, k=len(DOCS))  # the scorer reopens on the new directory
    from scipy.sparse import csr_matrix

    zero = Chunk(id="zero", doc_id="z", text="x", start=0, end=1)  # every weight rounded to 0: not in Lucene
    idx._add_vectors([zero], csr_matrix((1, len(idx.encoder.vocabulary)), dtype=np.int32))
    assert idx.score_chunks("blood", ["zero", "aspirin#0"])[0] == 0.0
    idx.delete(["clots#0"])
    with pytest.raises(InputError, match="'clots#0' is not in the index"):
        idx.score_chunks("blood", ["clots#0"])
    check_scores_chunks(idx, QUERIES, k=len(DOCS))
    idx.save(tmp_path / "sp")
    check_scores_chunks(SpladeIndex.open(tmp_path / "sp"), QUERIES, k=len(DOCS))
    assert SpladeIndex().score_chunks("blood", []) == []
    with pytest.raises(InputError, match="'paris#0' is not in the index"):
        SpladeIndex().score_chunks("blood", ["paris#0"])


def test_queries_k_and_empty_indexes(built: SpladeIndex) -> None:
    assert built.search([], k=3) == []
    empty = SpladeIndex(name="empty")
    assert len(empty) == 0 and empty.search(["anything"], k=3) == [[]]
    empty.add([])
    assert len(built.search(["blood"], k=1)[0]) == 1
    with pytest.raises(InputError, match="k must be at least 1"):
        built.search(["blood"], k=0)
    with pytest.raises(InputError, match="query 1 is a int"):
        built.search(["blood", 3], k=1)  # type: ignore[list-item]
    # Lucene query syntax means nothing here: queries are vectors.
    assert built.search(['blood AND (clots OR "platelets") *:* ~2 \\'], k=1)[0][0].chunk.doc_id == "clots"


def test_duplicate_ids_and_a_failed_add_leave_the_index_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    import indexes.lucene_dir as lucene_dir  # SPLADE indexes through the shared Lucene directory builder

    idx = SpladeIndex()
    idx.add(make_chunks(list(DOCS)[:5]))
    before = ranked(idx.search(QUERIES, k=3))
    with pytest.raises(InputError, match=r"'paris#0' is already in the index"):
        idx.add(make_chunks(["paris"]))
    with pytest.raises(InputError, match=r"'violin#0' appears twice"):
        idx.add(make_chunks(["violin", "violin"]))

    def broken() -> None:
        raise RuntimeError("indexer crashed")

    monkeypatch.setattr(lucene_dir, "_index_collection", broken)
    with pytest.raises(RuntimeError, match="indexer crashed"):
        idx.add(make_chunks(["violin"]))
    assert len(idx) == 5 and "violin#0" not in idx and ranked(idx.search(QUERIES, k=3)) == before


def test_add_in_steps_equals_one_go_and_deleted_ids_never_come_back() -> None:
    # Every text encoded alone (batch_size=1) in both indexes: in padded batches of other sizes, float noise
    # could round a weight the other way, and the two would then differ by the encoder's batching, not by
    # the index. With the same integer impacts, Lucene's sums are exact.
    keys = list(DOCS)
    whole = SpladeIndex(batch_size=1)
    whole.add(make_chunks(keys))
    idx = SpladeIndex(batch_size=1)
    idx.add(make_chunks(keys[:3]))
    idx.add(make_chunks(keys[3:]))
    assert len(idx) == len(DOCS) and ranked(idx.search(QUERIES, k=5)) == ranked(whole.search(QUERIES, k=5))
    assert idx.delete(["clots#0", "no-such-id", "clots#0"]) == 1 and idx.delete(["clots#0"]) == 0
    assert len(idx) == len(DOCS) - 1 and "clots#0" not in idx
    every = idx.search(QUERIES + ["clot clotting fibrin bleeding"], k=100)
    assert all(h.chunk.id != "clots#0" for hits in every for h in hits)
    expected = [[(c, s) for c, s in row if c != "clots#0"][:5] for row in ranked(whole.search(QUERIES, k=8))]
    assert ranked(idx.search(QUERIES, k=5)) == expected
    idx.add(make_chunks(["clots"]))  # a deleted id may be added again
    assert idx.search(["fibrin"], k=1)[0][0].chunk.id == "clots#0"


# The child encodes the queries with the parent's torch thread count: the same code path, so the same floats.
SEARCH_IN_CHILD = """
import json, sys
import torch
torch.set_num_threads(int(sys.argv[3]))
from indexes.splade import SpladeIndex
index = SpladeIndex.open(sys.argv[1])
results = index.search(json.loads(sys.argv[2]), k=4)
print(json.dumps([[(h.chunk.id, h.score, h.chunk.to_dict()) for h in hits] for hits in results]))
"""


def test_save_then_load_gives_identical_results_in_a_fresh_object_and_process(tmp_path: Path) -> None:
    import torch

    idx = SpladeIndex(name="sp")
    idx.add(make_chunks(list(DOCS)))
    idx.delete(["violin#0"])
    idx.save(tmp_path / "ix")
    assert sorted(p.name for p in (tmp_path / "ix").iterdir()) == ["chunks.jsonl", "lucene", "manifest.json"]
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert manifest["kind"] == "splade" and manifest["format_version"] == 1 and manifest["component"] == idx.to_config()
    assert manifest["scale"] == 100 and "round(weight * scale)" in manifest["quantisation"]
    assert manifest["model"] == "splade-tiny"
    assert manifest["count"] == manifest["lucene_documents"] == len(DOCS) - 1
    assert "lucene/write.lock" not in manifest["files"]
    expected = idx.search(QUERIES, k=4)

    loaded = SpladeIndex(name="sp")
    loaded.load(tmp_path / "ix")
    assert ranked(loaded.search(QUERIES, k=4)) == ranked(expected)
    child = subprocess.run(
        [sys.executable, "-c", SEARCH_IN_CHILD, str(tmp_path / "ix"), json.dumps(QUERIES), str(torch.get_num_threads())],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    got = json.loads(child.stdout.strip().splitlines()[-1])
    assert [[tuple(h) for h in hits] for hits in got] == [
        [(h.chunk.id, h.score, h.chunk.to_dict()) for h in hits] for hits in expected
    ]

    loaded.add(make_chunks(["violin"]))  # a loaded index grows; the saved files stay as they were
    assert loaded.search(["violin strings"], k=1)[0][0].chunk.id == "violin#0"
    assert all(h.chunk.id != "violin#0" for h in SpladeIndex.open(tmp_path / "ix").search(["violin strings"], k=10)[0])

    SpladeIndex().save(tmp_path / "empty")
    assert len(SpladeIndex.open(tmp_path / "empty")) == 0


def test_other_format_version_or_settings_are_refused(built: SpladeIndex, tmp_path: Path) -> None:
    built.save(tmp_path / "ix")
    with pytest.raises(InputError, match=r"saved with scale=100.*scale=10.*SpladeIndex\.open"):
        SpladeIndex(scale=10).load(tmp_path / "ix")
    with pytest.raises(InputError, match="holds a 'splade' index, not a 'bm25' index"):
        from indexes.bm25 import BM25Index

        BM25Index().load(tmp_path / "ix")
    path = tmp_path / "ix" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 2
    path.write_text(json.dumps(manifest))
    with pytest.raises(FormatVersionError, match=r"version 2.*version 1"):
        SpladeIndex().load(tmp_path / "ix")
    with pytest.raises(FormatVersionError):
        SpladeIndex.open(tmp_path / "ix")


def test_bad_parameters_and_config_round_trip() -> None:
    with pytest.raises(InputError, match="scale must be a positive int"):
        SpladeIndex(scale=0)
    with pytest.raises(InputError, match="scale must be a positive int"):
        SpladeIndex(scale=0.5)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="batch_size >= 1"):
        SpladeIndex(batch_size=0)
    idx = SpladeIndex(
        model="splade-tiny", scale=50, max_length=256, batch_size=8, include_title=False, threads=2, name="mine"
    )
    config = idx.to_config()
    assert config == {
        "type": "splade",
        "params": {
            "model": "splade-tiny", "scale": 50, "max_length": 256, "batch_size": 8,
            "include_title": False, "threads": 2, "name": "mine", "dtype": "float32",
        },
    }
    assert build("index", json.loads(json.dumps(config))) == idx and build("index", "splade") == SpladeIndex()
    chunk = make_chunks(["paris"])[0]
    assert SpladeIndex().text_of(chunk) == "France " + chunk.text and idx.text_of(chunk) == chunk.text


def test_bfloat16_encoder_gives_float32_weights_close_to_float32s(encoder: SpladeEncoder) -> None:
    texts = ["Aspirin thins the blood and prevents clots.", "The Eiffel Tower is in Paris."]
    half = SpladeEncoder(dtype="bfloat16")
    low, full = half.encode_documents(texts), encoder.encode_documents(texts)
    assert low.dtype == np.float32 and low.shape == full.shape
    a, b = low.toarray(), full.toarray()
    cosine = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.99  # bfloat16 keeps about three significant digits of each logit
    assert not np.array_equal(a, b)  # the network really ran in the other dtype
    assert build("index", SpladeIndex(dtype="bfloat16").to_config()).encoder.dtype == "bfloat16"
    with pytest.raises(InputError, match="dtype must be one of float32, bfloat16"):
        SpladeIndex(dtype="float16")
