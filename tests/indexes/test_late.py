"""Late interaction with the real MiniLM pack, real faiss and real Lucene: MaxSim, PLAID-style search,
compression, persistence, reranking, and a ColBERT checkpoint (tiny, randomly initialised) loaded by path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexes.late import (
    LateInteractionIndex,
    LateRerankIndex,
    MaxSimReranker,
    TokenEncoder,
    default_nlist,
    is_colbert_checkpoint,
    maxsim,
    text_of,
)
from rag.errors import FormatVersionError, InputError
from rag.protocols import ScoresChunks
from rag.registry import build
from rag.types import Chunk
from tests.indexes.corpus import DOCS, QUERIES, check_scores_chunks, make_chunks, ranked
from tests.same_ranking import assert_same_ranking

@pytest.fixture(scope="module")
def encoder() -> TokenEncoder:
    enc = TokenEncoder("minilm")
    enc.backend
    return enc


@pytest.fixture()
def index(encoder: TokenEncoder) -> LateInteractionIndex:
    idx = LateInteractionIndex("minilm", nlist=8, nprobe=2, candidates=4)
    idx.add(make_chunks(list(DOCS)))
    return idx


def reference_scores(encoder: TokenEncoder, query: str, chunks: list[Chunk]) -> np.ndarray:
    """MaxSim in plain numpy, one document at a time."""
    (q,) = encoder.encode_queries([query])
    docs = encoder.encode_documents([text_of(c) for c in chunks])
    return np.array([float((q @ d.T).max(axis=1).sum()) for d in docs])


def test_maxsim_matches_a_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    query = rng.normal(size=(5, 16)).astype(np.float32)
    docs = [rng.normal(size=(n, 16)).astype(np.float32) for n in (1, 7, 3, 0, 12)]
    expected = [sum(max(float(q @ t) for t in d) for q in query) if len(d) else 0.0 for d in docs]
    assert maxsim(query, docs) == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_token_vectors_are_normalised_without_special_tokens(encoder: TokenEncoder) -> None:
    (vectors,) = encoder.encode_documents(["Paris is nice"])
    tokenizer = encoder.backend.tokenizer
    assert vectors.shape == (len(tokenizer.tokenize("Paris is nice")), 384)  # no [CLS], no [SEP]
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    (long,) = encoder.encode_documents(["word " * 400])
    assert len(long) == 256 - 2  # cut at 256 word pieces, special tokens included
    assert encoder.encode_documents([""])[0].shape[0] == 0


def test_exhaustive_and_candidate_scores_equal_the_reference(index: LateInteractionIndex, encoder: TokenEncoder) -> None:
    chunks = make_chunks(list(DOCS))
    for query in QUERIES[:3]:
        expected = reference_scores(encoder, query, chunks)
        order = np.argsort(-expected, kind="stable")[:3]
        for exhaustive in (True, False):
            hits = index.search_encoded(index.encode_queries([query]), k=3, exhaustive=exhaustive)[0]
            if exhaustive:
                assert [h.chunk.id for h in hits] == [chunks[i].id for i in order]
            for hit in hits:  # int8 storage: scores within 1e-2 of float32 MaxSim
                assert hit.score == pytest.approx(expected[[c.id for c in chunks].index(hit.chunk.id)], abs=1e-2)
    assert index.search(["capital of France"], k=1)[0][0].chunk.id == "paris#0"
    assert {h.source for h in index.search(QUERIES, k=3)[0]} == {"late"}


def test_candidate_search_equals_brute_force_when_every_list_is_probed(index: LateInteractionIndex) -> None:
    vectors = index.encode_queries(QUERIES)
    brute = index.search_encoded(vectors, k=len(DOCS), exhaustive=True)
    full = index.search_encoded(vectors, k=len(DOCS), exhaustive=False, nprobe=8, candidates=len(DOCS))
    # The two paths add the same float32 MaxSim terms in another order, so scores differ by a few ulp
    # (5.25791 against 5.25792 on one machine, rounded to five decimals); 1e-5 relative is ample.
    assert_same_ranking(full, brute, rel=1e-5, abs=1e-6)
    narrow = index.search_encoded(vectors, k=len(DOCS), exhaustive=False, nprobe=1, candidates=2)
    assert all(len(hits) <= 2 for hits in narrow)  # only candidates are scored


SCORED_QUERIES = [*QUERIES, "blood sugar", "what stops bleeding"]


def test_score_chunks_gives_search_scores_for_the_ids_asked(index: LateInteractionIndex, tmp_path: Path) -> None:
    assert isinstance(index, ScoresChunks)
    check_scores_chunks(index, SCORED_QUERIES, k=len(DOCS))  # candidate search, pruned tokens
    every = [c.id for c in make_chunks(list(DOCS))]
    for query in SCORED_QUERIES:
        (vectors,) = index.encode_queries([query])
        # How many candidates go on changes which chunks are returned, never their scores.
        hits = index.search_encoded([vectors], k=len(DOCS), candidates=len(DOCS))[0]
        by_id = dict(zip(every, index.score_encoded(vectors, every)))
        assert [by_id[h.chunk.id] for h in hits] == pytest.approx([h.score for h in hits], rel=1e-4, abs=1e-5)
        for overrides in ({"exhaustive": True}, {"nprobe": 8}):
            hits = index.search_encoded([vectors], k=len(DOCS), **overrides)[0]
            ids = [h.chunk.id for h in hits]
            scores = index.score_encoded(vectors, ids, **overrides)
            assert scores == pytest.approx([h.score for h in hits], rel=1e-4, abs=1e-5)
    assert index.score_chunks("blood", []) == [] and LateInteractionIndex().score_chunks("blood", []) == []
    assert index.score_chunks("fibrin", "clots#0") == index.score_chunks("fibrin", ["clots#0"])  # one str is one id
    with pytest.raises(InputError, match=r"late index 'late': chunk id 'nope' is not in the index"):
        index.score_chunks("blood", ["clots#0", "nope"])
    with pytest.raises(InputError, match="one query str"):
        index.score_chunks(["blood"], ["clots#0"])  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"one query's token vectors \(384-d rows\), got shape \(3,\)"):
        index.score_encoded(np.ones(3, dtype=np.float32), ["clots#0"])
    index.delete(["clots#0"])  # rows move
    with pytest.raises(InputError, match="'clots#0' is not in the index"):
        index.score_chunks("blood", ["clots#0"])
    check_scores_chunks(index, SCORED_QUERIES, k=len(DOCS))
    index.save(tmp_path / "late")
    check_scores_chunks(LateInteractionIndex.open(tmp_path / "late"), SCORED_QUERIES, k=len(DOCS))


def test_score_chunks_of_exhaustive_and_fully_probed_indexes(encoder: TokenEncoder) -> None:
    for settings in ({"exhaustive": True}, {"nlist": 4, "nprobe": 4, "candidates": 100}):
        index = LateInteractionIndex("minilm", **settings)
        index.add(make_chunks(list(DOCS)))
        check_scores_chunks(index, SCORED_QUERIES, k=len(DOCS))


def test_default_nlist_is_four_per_sqrt_token_capped_by_the_sample() -> None:
    assert default_nlist(1_231_885) == 4096  # SciFact's token vectors (eval/results/late.md)
    assert default_nlist(1_000_000) == 4096 and default_nlist(10_000) == 512
    assert default_nlist(64) == 8 and default_nlist(7) == 1  # at most n / 8: k-means needs points per centroid
    assert default_nlist(0) == 1


def test_compression_ratio_is_reported_and_recorded(encoder: TokenEncoder, tmp_path: Path) -> None:
    half = LateInteractionIndex(nlist=4, storage="float16")
    half.add(make_chunks(list(DOCS)))
    quarter = LateInteractionIndex(nlist=4)
    quarter.add(make_chunks(list(DOCS)))
    assert half.token_bytes_float32 == half.n_tokens * 384 * 4
    assert 1.5 < half.compression_ratio() < 2.0  # float16 vectors, plus centroid ids and centroids
    assert half.compression_ratio() < quarter.compression_ratio() < 4.0
    vectors = half.encode_queries(QUERIES)
    assert [[h.chunk.id for h in r] for r in quarter.search_encoded(vectors, 3, exhaustive=True)] == [
        [h.chunk.id for h in r] for r in half.search_encoded(vectors, 3, exhaustive=True)
    ]
    half.save(tmp_path / "ix")
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert manifest["compression_ratio"] == half.compression_ratio()
    assert manifest["storage"] == "float16" and manifest["encoder"] == "token-embeddings"
    assert manifest["tokens"] == half.n_tokens and manifest["dimension"] == 384


def test_delete_never_returns_deleted_ids(index: LateInteractionIndex) -> None:
    assert index.delete(["paris#0", "clots#0", "no-such-id"]) == 2
    assert index.delete(["paris#0"]) == 0
    assert len(index) == len(DOCS) - 2 and "paris#0" not in index
    for exhaustive in (True, False):
        vectors = index.encode_queries(QUERIES)
        results = index.search_encoded(vectors, k=len(DOCS), exhaustive=exhaustive, nprobe=8, candidates=len(DOCS))
        assert all({"paris#0", "clots#0"}.isdisjoint(h.chunk.id for h in hits) for hits in results)
        assert all(len(hits) == len(DOCS) - 2 for hits in results)
    index.add(make_chunks(["paris"]))  # a deleted id may come back
    assert index.search(["capital of France"], k=1)[0][0].chunk.id == "paris#0"
    assert index.delete([c.id for c in make_chunks(list(DOCS))]) == len(DOCS) - 1
    assert len(index) == 0 and index.search(["x"], k=3) == [[]]


def test_save_load_round_trip_gives_identical_results(index: LateInteractionIndex, tmp_path: Path) -> None:
    index.delete(["violin#0"])
    before = ranked(index.search(QUERIES, k=4))
    index.save(tmp_path / "ix")
    names = sorted(p.name for p in (tmp_path / "ix").iterdir())
    assert names == [
        "centroids.npy", "chunks.jsonl", "codes.npy", "manifest.json", "offsets.npy", "scales.npy", "tokens.npy"
    ]
    loaded = LateInteractionIndex("minilm", nlist=8, nprobe=2, candidates=4)
    loaded.load(tmp_path / "ix")
    opened = LateInteractionIndex.open(tmp_path / "ix")
    assert ranked(loaded.search(QUERIES, k=4)) == ranked(opened.search(QUERIES, k=4)) == before
    assert opened == index and len(opened) == len(DOCS) - 1
    loaded.add(make_chunks(["violin"]))
    assert loaded.search(["instrument with four strings"], k=1)[0][0].chunk.id == "violin#0"
    with pytest.raises(InputError, match=r"saved with storage='int8'.*LateInteractionIndex\.open"):
        LateInteractionIndex(storage="float16").load(tmp_path / "ix")


def test_other_format_version_is_refused(index: LateInteractionIndex, tmp_path: Path) -> None:
    index.save(tmp_path / "ix")
    path = tmp_path / "ix" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 9
    path.write_text(json.dumps(manifest))
    with pytest.raises(FormatVersionError, match="version 9.*version 1"):
        LateInteractionIndex().load(tmp_path / "ix")
    with pytest.raises(FormatVersionError):
        LateInteractionIndex.open(tmp_path / "ix")


def test_bad_input_is_refused(index: LateInteractionIndex) -> None:
    with pytest.raises(InputError, match="k must be at least 1"):
        index.search(QUERIES, k=0)
    assert index.search([], k=3) == []
    with pytest.raises(InputError, match=r"query 1 \(''\) has no tokens"):
        index.search(["ocean", ""], k=3)
    with pytest.raises(InputError, match="query 0 is a int"):
        index.search([3], k=3)  # type: ignore[list-item]
    with pytest.raises(InputError, match=r"'paris#0' is already in the index"):
        index.add(make_chunks(["paris"]))
    fresh = LateInteractionIndex()
    with pytest.raises(InputError, match=r"'violin#0' appears twice"):
        fresh.add(make_chunks(["violin", "violin"]))
    assert len(fresh) == 0 and len(index) == len(DOCS)
    with pytest.raises(InputError, match="storage must be one of float16, int8"):
        LateInteractionIndex(storage="bf16")
    with pytest.raises(InputError, match="nprobe >= 1"):
        build("index", {"type": "late", "params": {"nprobe": 0}})
    with pytest.raises(InputError, match="k must be at least 1"):
        MaxSimReranker().rerank("q", [], k=0)


def test_config_round_trip() -> None:
    idx = LateInteractionIndex(nprobe=3, candidates=100, storage="float16", name="mine")
    assert build("index", json.loads(json.dumps(idx.to_config()))) == idx
    assert build("index", "late") == LateInteractionIndex()
    assert build("index", "late-rerank") == LateRerankIndex()
    assert build("reranker", "maxsim") == MaxSimReranker()
    for index in (LateInteractionIndex(dtype="bfloat16"), LateRerankIndex(dtype="bfloat16")):
        assert build("index", json.loads(json.dumps(index.to_config())))._encoder.dtype == "bfloat16"
    assert build("reranker", {"type": "maxsim", "params": {"dtype": "bfloat16"}}) == MaxSimReranker(dtype="bfloat16")
    with pytest.raises(InputError, match="dtype must be one of float32, bfloat16"):
        LateInteractionIndex(dtype="int4")


def test_bfloat16_token_vectors_are_float32_unit_vectors_close_to_float32s(encoder: TokenEncoder) -> None:
    texts = ["Aspirin thins the blood and prevents clots.", "The Eiffel Tower is in Paris."]
    half = TokenEncoder(dtype="bfloat16")
    for low, full in zip(half.encode_documents(texts), encoder.encode_documents(texts)):
        assert low.dtype == np.float32 and low.shape == full.shape
        assert np.allclose(np.linalg.norm(low, axis=1), 1.0, atol=1e-5)  # normalised after the network, in float32
        assert (low * full).sum(axis=1).min() > 0.99 and not np.array_equal(low, full)


def test_maxsim_reranker_reorders_bm25_hits(encoder: TokenEncoder) -> None:
    from indexes.bm25 import BM25Index

    bm25 = BM25Index()
    bm25.add(make_chunks(list(DOCS)))
    query = "what stops bleeding"
    hits = bm25.search([query], k=8)[0]
    reranker = MaxSimReranker()
    reranked = reranker.rerank(query, hits + hits[:1], k=3)  # a repeated hit is scored once
    expected = reference_scores(encoder, query, [h.chunk for h in hits])
    order = np.argsort(-expected, kind="stable")[:3]
    assert [h.chunk.id for h in reranked] == [hits[i].chunk.id for i in order]
    assert [h.score for h in reranked] == pytest.approx(expected[order].tolist(), abs=1e-4)
    assert {h.source for h in reranked} == {"maxsim"}
    assert reranker.rerank(query, [], k=3) == []


def test_late_rerank_index_reranks_bm25_top_depth(encoder: TokenEncoder, tmp_path: Path) -> None:
    idx = LateRerankIndex(depth=5)
    idx.add(make_chunks(list(DOCS)))
    query = "blood clots and platelets"
    bm25_ids = {h.chunk.id for h in idx.bm25.search([query], k=5)[0]}
    hits = idx.search([query], k=10)[0]
    assert {h.chunk.id for h in hits} == bm25_ids and len(hits) == len(bm25_ids)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    expected = reference_scores(encoder, query, [h.chunk for h in hits])
    assert [h.score for h in hits] == pytest.approx(expected.tolist(), abs=1e-2)
    assert idx.delete(["aspirin#0"]) == 1
    assert "aspirin#0" not in {h.chunk.id for h in idx.search([query], k=10)[0]}
    before = ranked(idx.search(QUERIES, k=3))
    idx.save(tmp_path / "rr")
    assert ranked(LateRerankIndex.open(tmp_path / "rr").search(QUERIES, k=3)) == before


def test_late_rerank_index_score_chunks_gives_search_scores(encoder: TokenEncoder, tmp_path: Path) -> None:
    idx = LateRerankIndex(depth=3)
    idx.add(make_chunks(list(DOCS)))
    assert isinstance(idx, ScoresChunks)
    check_scores_chunks(idx, SCORED_QUERIES, k=10)
    # A chunk outside BM25's top depth is never returned, but has its MaxSim all the same.
    query = "blood clots and platelets"
    outside = [c for c in make_chunks(list(DOCS)) if c.id not in {h.chunk.id for h in idx.search(query, k=10)[0]}]
    assert outside
    expected = reference_scores(encoder, query, outside)
    assert idx.score_chunks(query, [c.id for c in outside]) == pytest.approx(expected.tolist(), abs=1e-2)
    (vectors,) = idx._encoder.encode_queries([query])
    assert idx.score_encoded(vectors, "paris#0") == pytest.approx(idx.score_chunks(query, ["paris#0"]), rel=1e-5)
    assert idx.score_chunks(query, []) == []
    with pytest.raises(InputError, match=r"late-rerank index 'late-rerank': chunk id 'nope' is not in the index"):
        idx.score_chunks(query, ["nope"])
    with pytest.raises(InputError, match="one query str"):
        idx.score_chunks([query], ["paris#0"])  # type: ignore[arg-type]
    idx.delete(["aspirin#0"])
    with pytest.raises(InputError, match="'aspirin#0' is not in the index"):
        idx.score_chunks(query, ["aspirin#0"])
    check_scores_chunks(idx, SCORED_QUERIES, k=10)
    idx.save(tmp_path / "rr")
    check_scores_chunks(LateRerankIndex.open(tmp_path / "rr"), SCORED_QUERIES, k=10)


def _tiny_colbert(folder: Path) -> None:
    """A colbertv2.0-layout folder: random tiny BERT under bert.*, a linear projection, MiniLM's tokenizer."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=512,
    )
    bert = BertModel(config, add_pooling_layer=False)
    linear = torch.nn.Linear(32, 16, bias=False)
    state = {f"bert.{k}": v.contiguous() for k, v in bert.state_dict().items()}
    state["linear.weight"] = linear.weight.detach().contiguous()
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    config.save_pretrained(folder)
    TokenEncoder("minilm").backend.tokenizer.save_pretrained(folder)


def test_colbert_checkpoint_loads_by_path(tmp_path: Path) -> None:
    import torch

    folder = tmp_path / "colbert"
    _tiny_colbert(folder)
    assert is_colbert_checkpoint(folder) and not is_colbert_checkpoint(tmp_path)
    enc = TokenEncoder(str(folder))
    assert enc.kind == "colbert" and enc.dimension == 16
    (query,) = enc.encode_queries(["capital of France"])
    assert query.shape == (32, 16)  # [CLS], [unused0], the query, [SEP], [MASK] padding to 32
    assert np.allclose(np.linalg.norm(query, axis=1), 1.0, atol=1e-5)
    (doc,) = enc.encode_documents(["Paris is the capital"])
    tokenizer = enc.backend.tokenizer
    ids = tokenizer("Paris is the capital")["input_ids"]
    ids = ids[:1] + [tokenizer.convert_tokens_to_ids("[unused1]")] + ids[1:]
    assert doc.shape == (len(ids), 16)
    # By hand: BERT, then the projection, then L2 normalisation.
    with torch.inference_mode():
        hidden = enc.backend.bert(input_ids=torch.tensor([ids])).last_hidden_state
        manual = torch.nn.functional.normalize(enc.backend.linear(hidden), dim=-1)[0].numpy()
    assert np.allclose(doc, manual, atol=1e-5)
    (half,) = TokenEncoder(str(folder), dtype="bfloat16").encode_documents(["Paris is the capital"])
    assert half.dtype == np.float32 and half.shape == doc.shape and (half * doc).sum(axis=1).min() > 0.99
    idx = LateInteractionIndex(str(folder), nlist=2)
    idx.add(make_chunks(list(DOCS)))
    assert len(idx.search(["capital of France"], k=3)[0]) == 3
    idx.save(tmp_path / "ix")
    assert json.loads((tmp_path / "ix" / "manifest.json").read_text())["encoder"] == "colbert"
