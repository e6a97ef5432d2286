"""Rerankers: the shared contract (bad input, ties, k), the cross-encoder path with a tiny random BERT, and
the LLM rerankers with a tiny random Qwen2 (the real Qwen tokenizer): left-padded batches give the same
scores as single prompts, and FIRST ranks a window of 20 in one forward pass."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rag.errors import InputError
from rag.protocols import BaseReranker, rank_by
from rag.registry import build
from rag.types import Chunk, Hit
from ranking.rerankers import CrossEncoderReranker, FirstReranker, LLMPointwiseReranker
from tests.same_ranking import assert_same_ranking


def hit(n: int, score: float = 1.0, text: str | None = None, source: str = "bm25") -> Hit:
    body = text if text is not None else f"passage number {n} about topic {n % 7}"
    return Hit(chunk=Chunk(id=f"c{n}", doc_id=f"d{n}", text=body, start=0, end=len(body)), score=score, source=source)


class LengthReranker(BaseReranker):
    """Scores a hit by the length of its text: enough to test the base class."""

    name = "length"

    def __init__(self) -> None:
        pass

    def score(self, query: str, hits: list[Hit]) -> list[float]:
        return [float(len(h.chunk.text)) for h in hits]


# -- the shared contract ------------------------------------------------------------------------------


def test_empty_lists_fewer_hits_than_k_and_stable_ties() -> None:
    reranker = LengthReranker()
    assert reranker.rerank("q", [], 5) == []
    hits = [hit(1, text="aa"), hit(2, text="bbbb"), hit(3, text="cc"), hit(4, text="dd")]
    out = reranker.rerank("q", hits, 10)
    assert [h.chunk.id for h in out] == ["c2", "c1", "c3", "c4"]  # equal scores keep input order
    assert all(h.source == "length" for h in out) and out[0].score == 4.0
    assert [h.chunk.id for h in reranker.rerank("q", hits, 2)] == ["c2", "c1"]
    with pytest.raises(InputError, match="k must be at least 1"):
        reranker.rerank("q", hits, 0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinite_scores_name_the_query_and_the_chunk(bad: float) -> None:
    hits = [hit(1, 0.5), hit(2, bad)]
    with pytest.raises(InputError, match=r"query 'what\?': hit 1 \(chunk 'c2'\) has score"):
        LengthReranker().rerank("what?", hits, 2)


def test_rank_by_is_stable() -> None:
    hits = [hit(i) for i in range(5)]
    assert [h.chunk.id for h in rank_by(hits, [1, 2, 1, 2, 0], "x")] == ["c1", "c3", "c0", "c2", "c4"]


def test_registered_names_round_trip() -> None:
    for name, cls in [("first", FirstReranker), ("llm-pointwise", LLMPointwiseReranker),
                      ("cross-encoder", CrossEncoderReranker)]:
        built = build("reranker", name)
        assert isinstance(built, cls) and built.to_config()["type"] == name
        assert build("reranker", built.to_config()) == built
    assert build("reranker", {"type": "first", "params": {"window": 10, "stride": 5}}).windows(25) == [
        (15, 25), (10, 20), (5, 15), (0, 10)]
    with pytest.raises(InputError, match="stride"):
        FirstReranker(window=20, stride=30)


# -- cross-encoder ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from rag.models import resolve_model

    folder = tmp_path_factory.mktemp("tiny-cross-encoder")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=128, num_labels=1)
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_cross_encoder_scores_are_the_checkpoints_own(tiny_cross_encoder: Path) -> None:
    from sentence_transformers import CrossEncoder

    hits = [hit(i, text=f"text {i} " * (i + 1)) for i in range(6)]
    reranker = CrossEncoderReranker(str(tiny_cross_encoder), batch_size=4, max_length=64)
    out = reranker.rerank("a query", hits, 4)
    direct = CrossEncoder(str(tiny_cross_encoder), device="cpu", max_length=64).predict(
        [("a query", h.chunk.text) for h in hits])
    expected = sorted(range(6), key=lambda i: -direct[i])[:4]
    # Batches of 4 here and of 32 there: other padding, so float noise in the last bits.
    assert_same_ranking([out], [[(f"c{i}", float(direct[i])) for i in expected]], rel=0.0, abs=1e-5)
    assert {h.source for h in out} == {"cross-encoder"}


# -- LLM rerankers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A randomly initialised 2-layer Qwen2 with the real Qwen2.5 tokenizer (chat template included)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from rag.models import pack_status, resolve_model

    if pack_status("qwen2.5-0.5b").state != "converted":
        pytest.skip("qwen2.5-0.5b pack not converted (its tokenizer is needed): specrag models fetch qwen2.5-0.5b")
    folder = tmp_path_factory.mktemp("tiny-qwen")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("qwen2.5-0.5b"))
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True)
    Qwen2ForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def count_forward_calls(reranker: BaseReranker, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    model = reranker.lm.model
    calls: list[int] = []
    original = model.forward

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counted)
    return calls


def test_pointwise_left_padded_batches_score_like_single_prompts(tiny_qwen: str, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    hits = [hit(i, text="word " * (3 + 7 * i)) for i in range(5)]  # very different lengths: much padding
    batched = LLMPointwiseReranker(tiny_qwen, batch_size=5)
    calls = count_forward_calls(batched, monkeypatch)
    together = batched.score("is this relevant?", hits)
    assert len(calls) == 1
    single = LLMPointwiseReranker(tiny_qwen, batch_size=1).score("is this relevant?", hits)
    assert together == pytest.approx(single, abs=1e-4)
    assert len(set(round(s, 6) for s in together)) > 1  # the scores do depend on the passage
    out = batched.rerank("is this relevant?", hits, 3)
    assert len(out) == 3 and {h.source for h in out} == {"llm-pointwise"}
    assert [h.score for h in out] == sorted(together, reverse=True)[:3]


def test_first_ranks_a_window_of_20_in_one_forward_pass(tiny_qwen: str, monkeypatch: pytest.MonkeyPatch) -> None:
    reranker = FirstReranker(tiny_qwen, max_passage_tokens=16)
    calls = count_forward_calls(reranker, monkeypatch)
    out = reranker.rerank("which passage?", [hit(i) for i in range(20)], 20)
    assert len(calls) == 1  # one pass, no generation loop
    assert sorted(h.chunk.id for h in out) == sorted(f"c{i}" for i in range(20))
    assert [h.score for h in out] == [float(20 - p) for p in range(20)] and out[0].source == "first"
    calls.clear()
    reranker.rerank("which passage?", [hit(i) for i in range(50)], 10)
    assert len(calls) == len(reranker.windows(50)) == 4  # windows [30,50) [20,40) [10,30) [0,20)


def test_first_ranks_by_the_first_token_logits_of_the_identifiers(tiny_qwen: str) -> None:
    """With the LM head biased towards some letters, the window comes out in that order."""
    import torch

    reranker = FirstReranker(tiny_qwen, window=5, stride=2, max_passage_tokens=8)
    head = reranker.lm.model.get_output_embeddings()
    preferred = "DBE"  # D first, then B, then E; A and C last
    ids = [reranker.single_token(c) for c in preferred]
    original = head.forward

    def biased(x):  # type: ignore[no-untyped-def]
        logits = original(x)
        bonus = torch.zeros(logits.shape[-1])
        for weight, token in zip((300.0, 200.0, 100.0), ids):
            bonus[token] = weight
        return logits + bonus

    head.forward = biased
    try:
        out = reranker.rerank("q", [hit(i) for i in range(5)], 5)
    finally:
        del head.forward
    assert [h.chunk.id for h in out][:3] == ["c3", "c1", "c4"]


def test_first_sliding_window_brings_the_top_10_of_50_to_the_top() -> None:
    """Bottom-up windows of 20 with stride 10 carry each of the true top 10 up to the first window."""

    class Oracle(FirstReranker):
        def rank_window(self, query: str, hits: list[Hit]) -> list[int]:
            self.forward_calls += 1
            return sorted(range(len(hits)), key=lambda i: -hits[i].score)

    import random

    scores = list(range(50))
    random.Random(3).shuffle(scores)
    hits = [hit(i, float(s)) for i, s in enumerate(scores)]
    reranker = Oracle()
    out = reranker.rerank("q", hits, 10)
    assert reranker.forward_calls == 4
    assert [int(h.chunk.id[1:]) for h in out] == sorted(range(50), key=lambda i: -scores[i])[:10]
