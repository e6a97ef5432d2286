"""The compressors with real small models: MiniLM scoring, SmolLM2 surprisal, tiny random classifiers."""

from __future__ import annotations

import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressors.extractive import ExtractiveCompressor, lexical_overlap
from compressors.pruning import ClassifierCompressor, SurprisalCompressor
from rag.errors import InputError
from rag.registry import build
from tests.compressors.conftest import WORDS, check_context, hits_of

PASSAGES = [
    "Super Bowl 50 was an American football game. The Denver Broncos defeated the Carolina Panthers 24-10. "
    "The game was played at Levi's Stadium in Santa Clara, California.",
    "Photosynthesis converts light energy into chemical energy. Plants store it in glucose.",
    "Mitochondria produce ATP for the cell. They are often called the powerhouse of the cell.",
]
QUESTION = "Who won Super Bowl 50?"
few = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
words_text = st.lists(st.sampled_from(WORDS), min_size=1, max_size=40).map(" ".join)


def test_extractive_keeps_the_answer_sentence_first():
    hits = hits_of(PASSAGES)
    context = ExtractiveCompressor(target_tokens=30).compress(QUESTION, hits)
    check_context(context, hits, 30)
    assert "Super Bowl 50" in context.text and "Denver Broncos defeated" in context.text
    assert context.passages[0].chunk.id == "c0"


def test_per_passage_keeps_each_passages_best_sentence_before_the_rest():
    hits = hits_of(PASSAGES)
    plain = ExtractiveCompressor(target_tokens=60).compress(QUESTION, hits)
    each = ExtractiveCompressor(target_tokens=60, per_passage=1).compress(QUESTION, hits)
    check_context(each, hits, 60)
    assert len(plain.passages) < len(PASSAGES) == len(each.passages)  # one ranking spends the budget on fewer
    assert "Denver Broncos defeated" in each.text  # the best sentence overall is still kept
    with pytest.raises(InputError, match="per_passage"):
        ExtractiveCompressor(per_passage=-1)



def test_mass_adapts_the_budget_to_how_the_scores_are_spread():
    hits = hits_of(PASSAGES)
    ceiling = ExtractiveCompressor(target_tokens=60).compress(QUESTION, hits)
    peaked = ExtractiveCompressor(target_tokens=60, mass=0.5, temperature=0.05).compress(QUESTION, hits)
    check_context(peaked, hits, 60)
    # The best sentence outscores the rest by far: half the weight needs fewer tokens than the ceiling.
    assert "Super Bowl 50" in peaked.text and peaked.kept_tokens < ceiling.kept_tokens
    flat = ExtractiveCompressor(target_tokens=60, mass=0.5, temperature=100.0).compress(QUESTION, hits)
    assert flat.kept_tokens > peaked.kept_tokens  # flat weights: half of them takes half of the sentences
    floored = ExtractiveCompressor(target_tokens=60, mass=0.5, temperature=0.05, min_rate=0.5).compress(QUESTION, hits)
    assert floored.kept_tokens > peaked.kept_tokens and floored.kept_tokens <= 60
    whole = ExtractiveCompressor(target_tokens=60, mass=1.0, temperature=100.0).compress(QUESTION, hits)
    assert whole.text == ceiling.text  # all the weight: the ceiling decides, as without mass
    for bad in ({"mass": 0.0}, {"mass": 1.5}, {"temperature": 0.0}, {"min_rate": 2.0}):
        with pytest.raises(InputError, match="mass|temperature|min_rate"):
            ExtractiveCompressor(**bad)

def test_selective_augmentation_returns_an_empty_context():
    hits = hits_of(PASSAGES)
    # A dense score is at most 1 and the lexical share at most 1: nothing clears 2.01.
    context = ExtractiveCompressor(rate=1.0, min_score=2.01).compress(QUESTION, hits)
    assert context.passages == () and context.kept_tokens == 0 and context.original_tokens > 0


def test_lexical_overlap_weights_query_terms_by_idf_over_the_sentences():
    texts = ["The Broncos won the game.", "The game was long.", "Nothing here matches.", "A team"]
    overlap = lexical_overlap("Which team won the game?", texts)
    # Terms: which, team, won, game ("the" is a stop word). "which" is in no text and does not count;
    # "game" is in 2 of 4 texts, so it weighs less than "won" and "team" (1 of 4 each).
    assert overlap[2] == 0.0
    assert overlap[0] > overlap[3] > overlap[1] > 0.0
    assert lexical_overlap("Which team won the game?", ["team won the games"]) == [1.0]  # stems match
    assert lexical_overlap("the of and", texts) == [0.0] * 4  # only stop words
    assert lexical_overlap("anything", []) == []


def test_extractive_score_is_dense_plus_weighted_lexical_share():
    texts = ["The Denver Broncos defeated the Carolina Panthers.", "Plants store energy in glucose."]
    dense = ExtractiveCompressor(lexical_weight=0.0).score(QUESTION, texts)
    mixed = ExtractiveCompressor(lexical_weight=0.5).score(QUESTION, texts)
    lexical = lexical_overlap(QUESTION, texts)
    assert mixed == pytest.approx([d + 0.5 * x for d, x in zip(dense, lexical)])
    with pytest.raises(InputError, match="lexical_weight"):
        ExtractiveCompressor(lexical_weight=-1.0)


def test_extractive_scores_with_a_bfloat16_encoder_close_to_float32s():
    texts = ["The Denver Broncos defeated the Carolina Panthers.", "Plants store energy in glucose."]
    full = ExtractiveCompressor(lexical_weight=0.0).score(QUESTION, texts)
    compressor = build("compressor", {"type": "extractive", "params": {"lexical_weight": 0.0, "dtype": "bfloat16"}})
    assert build("compressor", compressor.to_config()) == compressor
    half = compressor.score(QUESTION, texts)
    assert half == pytest.approx(full, abs=0.02) and half[0] > half[1]
    with pytest.raises(InputError, match="dtype must be one of float32, bfloat16"):
        ExtractiveCompressor(dtype="int8")


@few
@given(chunks=st.lists(words_text, max_size=3), rate=st.floats(0.0, 1.0))
def test_dense_extractive_budget_holds_for_any_input(chunks, rate):
    hits = hits_of(chunks)
    check_context(ExtractiveCompressor(rate=rate, neighbours=1).compress(QUESTION, hits), hits)


def test_surprisal_drops_predictable_words_first_and_keeps_names():
    hits = hits_of(PASSAGES[:1])
    context = SurprisalCompressor(rate=0.5).compress(QUESTION, hits)
    check_context(context, hits)
    kept = context.text.split()
    assert "Broncos" in kept or "Denver" in kept
    original = PASSAGES[0].split()
    assert kept.count("the") < original.count("the")


def test_int8_surprisal_keeps_the_budget_and_mostly_the_same_words():
    hits = hits_of(PASSAGES[:2])
    full = SurprisalCompressor(rate=0.5).compress(QUESTION, hits)
    quantized = SurprisalCompressor(rate=0.5, quantize="int8").compress(QUESTION, hits)
    check_context(quantized, hits)
    same = set(full.text.split()) & set(quantized.text.split())
    assert len(same) >= 0.7 * len(set(full.text.split()))  # approximate scores, much the same choice


def test_surprisal_on_llama_cpp_scores_close_to_transformers_and_keeps_the_budget():
    import numpy as np

    pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by `make install`")
    hits = hits_of(PASSAGES[:2])
    texts = [h.chunk.text for h in hits]
    llama = SurprisalCompressor(rate=0.5, engine="llama.cpp", window_tokens=24, context_tokens=8, batch_size=2)
    reference = SurprisalCompressor(rate=0.5, window_tokens=24, context_tokens=8, batch_size=2)
    for ours, theirs in zip(llama.token_scores(QUESTION, texts)[1], reference.token_scores(QUESTION, texts)[1]):
        assert np.array_equal(np.isnan(ours), np.isnan(theirs))  # the same tokens scored
        np.testing.assert_allclose(ours, theirs, atol=0.5)  # the GGUF's 4-bit weights, 8-bit activations
        assert np.corrcoef(ours[np.isfinite(ours)], theirs[np.isfinite(theirs)])[0, 1] > 0.99
    context = llama.compress(QUESTION, hits)
    check_context(context, hits)
    same = set(context.text.split()) & set(reference.compress(QUESTION, hits).text.split())
    assert len(same) >= 0.8 * len(set(context.text.split()))
    assert build("compressor", llama.to_config()) == llama
    with pytest.raises(InputError, match="applies to the transformers engines only"):
        SurprisalCompressor(rate=0.5, engine="llama.cpp", quantize="int8")
    with pytest.warns(DeprecationWarning):  # configs of earlier rounds
        assert SurprisalCompressor(rate=0.5, dtype="bfloat16").engine == "transformers:bfloat16"


def test_surprisal_windows_and_batches_give_the_same_budgeted_result_shape():
    long_text = " ".join(PASSAGES * 2)
    hits = hits_of([long_text, PASSAGES[1]])
    small = SurprisalCompressor(rate=0.3, window_tokens=32, context_tokens=8, batch_size=3).compress(QUESTION, hits)
    check_context(small, hits)
    assert small.kept_tokens >= 0.9 * small.budget_tokens  # the budget is filled closely


@few
@given(chunks=st.lists(words_text, max_size=3), rate=st.floats(0.0, 1.0))
def test_surprisal_budget_holds_for_any_input(chunks, rate):
    hits = hits_of(chunks)
    check_context(SurprisalCompressor(rate=rate, window_tokens=16, context_tokens=4).compress(QUESTION, hits), hits)


def test_extractive_then_surprisal_preset():
    hits = hits_of(PASSAGES)
    composed = build("compressor", {"type": "extractive+surprisal", "params": {"rate": 0.25}})
    context = composed.compress(QUESTION, hits)
    check_context(context, hits)
    assert context.passages and context.passages[0].chunk.id == "c0"
    assert context.compressor == "compose"


def _tiny_bert(tmp_path, head: str, num_labels: int):
    """A randomly initialised 2-layer BERT with MiniLM's tokenizer, saved under tmp_path."""
    import torch
    import transformers

    from rag.models import resolve_model

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=num_labels,
    )
    model = getattr(transformers, head)(config)
    folder = tmp_path / head
    model.save_pretrained(folder)
    source = resolve_model("minilm")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(f"{source}/{name}", folder / name)
    return str(folder)


def test_classifier_with_a_tiny_random_model(tmp_path):
    path = _tiny_bert(tmp_path, "BertForTokenClassification", 2)
    hits = hits_of([" ".join(PASSAGES * 3), PASSAGES[2]])  # longer than the 64 positions: windows
    comp = build("compressor", {"type": "classifier", "params": {"model": path, "rate": 0.4, "batch_size": 2}})
    context = comp.compress(QUESTION, hits)
    check_context(context, hits)
    assert 0.3 <= context.rate <= 0.4
    assert ClassifierCompressor(model=path, rate=0.0).compress(QUESTION, hits).passages == ()


def test_cross_encoder_scorer_with_a_tiny_random_model(tmp_path):
    pytest.importorskip("sentence_transformers")
    path = _tiny_bert(tmp_path, "BertForSequenceClassification", 1)
    hits = hits_of(PASSAGES)
    context = ExtractiveCompressor(target_tokens=30, scorer="cross-encoder", model=path).compress(QUESTION, hits)
    check_context(context, hits, 30)
    assert context.passages


def test_pipeline_hands_its_budget_to_the_compressor(tmp_path):
    from rag.pipeline import Pipeline
    from rag.types import Document

    pipe = Pipeline(chunker={"type": "sentence", "params": {"max_tokens": 64}}, compressor="extractive",
                    generator=None, budget_tokens=12)
    pipe.ingest([Document(text=t, id=f"d{i}") for i, t in enumerate(PASSAGES)])
    answer = pipe.ask(QUESTION)
    (record,) = [r for r in answer.trace.stages if r.stage == "compress"]
    assert 0 < record.tokens_out <= 12 < record.tokens_in


def test_windowed_surprisal_equals_one_full_forward_of_question_and_passages():
    import numpy as np
    import torch

    from rag.generation.hf import load_causal_lm

    texts = PASSAGES[:2]
    lm = load_causal_lm("smollm2-135m")
    tok = lm.tokenizer
    # Reference: the model's own logits over prefix + passage 1 + blank line + passage 2, log-softmaxed.
    prefix = tok(f"Question: {QUESTION}\nRelevant text:\n", add_special_tokens=False)["input_ids"]
    if tok.bos_token_id is not None:
        prefix = [tok.bos_token_id] + prefix
    first, second = (tok(t, add_special_tokens=False)["input_ids"] for t in texts)
    sequence = prefix + first + tok("\n\n", add_special_tokens=False)["input_ids"] + second
    with torch.inference_mode():
        logprobs = torch.log_softmax(lm.model(input_ids=torch.tensor([sequence])).logits[0].float(), dim=-1)
    reference = -logprobs[:-1].gather(1, torch.tensor(sequence[1:])[:, None]).squeeze(1).numpy()
    expected_second = reference[len(sequence) - 1 - len(second):]
    # One window holding everything gives the reference exactly; small windows with context stay close
    # for the tokens they read with the whole question and enough text before them.
    whole = SurprisalCompressor(window_tokens=4096)
    offsets, scores = whole.token_scores(QUESTION, texts)
    assert [len(o) for o in offsets] == [len(first), len(second)]
    np.testing.assert_allclose(scores[0], reference[len(prefix) - 1:len(prefix) - 1 + len(first)], atol=1e-3)
    np.testing.assert_allclose(scores[1], expected_second, atol=1e-3)
    windowed = SurprisalCompressor(window_tokens=16, context_tokens=4, batch_size=2).token_scores(QUESTION, texts)[1]
    assert all(np.isfinite(s).all() for s in windowed)
    assert np.corrcoef(windowed[1], expected_second)[0, 1] > 0.7


def test_pruners_keep_everything_that_fits_without_running_a_model():
    hits = hits_of(PASSAGES)
    for compressor in (SurprisalCompressor(rate=1.0, model="/no/such/model"), ClassifierCompressor("/no/such/model")):
        context = compressor.compress(QUESTION, hits, budget_tokens=10_000)
        check_context(context, hits)
        assert [p.text for p in context.passages] == PASSAGES
