"""Budget semantics, selection helpers, registration and the property tests of the shared machinery.

The property tests use compressors with cheap deterministic scores (word overlap, word length), so
hypothesis can try many inputs; the real scorers get their own (fewer) examples in the other files.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressors.compose import ComposeCompressor
from compressors.extractive import ExtractiveCompressor
from compressors.pruning import _Pruner
from rag.compression import Unit, greedy, merge_spans, resolve_budget
from rag.errors import InputError
from rag.registry import build, known
from tests.compressors.conftest import WORDS, check_context, hits_of


class OverlapExtractive(ExtractiveCompressor):
    """Extractive selection scored by word overlap with the query (no model)."""

    def score(self, query, texts):
        q = set(query.lower().split())
        return [len(q & set(t.lower().split())) / (1 + len(t.split())) for t in texts]


class LengthPruner(_Pruner):
    """Token pruning scored by token position parity (no model): tests the word mapping and budgets."""

    def __init__(self, rate=None, target_tokens=None, tokenizer="qwen2.5-0.5b"):
        self.rate, self.target_tokens, self.tokenizer = rate, target_tokens, tokenizer

    def word_score(self, values):
        return float(values.sum())

    def token_scores(self, query, texts):
        from rag.tokenizers import load_tokenizer

        encoded = load_tokenizer("smollm2-135m")(texts, add_special_tokens=False, return_offsets_mapping=True)
        scores = [np.array([(i % 7) + len(query) % 3 for i in range(len(ids))], dtype=float)
                  for ids in encoded["input_ids"]]
        return [list(map(tuple, o)) for o in encoded["offset_mapping"]], scores


separators = st.sampled_from([" ", " ", " ", "\n", "\n\n", "  ", "\t"])
texts = st.lists(st.tuples(st.sampled_from(WORDS), separators), max_size=60).map(
    lambda pairs: "".join(w + s for w, s in pairs)
)
fast = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_budget_resolution():
    assert resolve_budget(300, None, None, None) == 150  # default rate 0.5
    assert resolve_budget(300, 1 / 3, None, None) == 100
    assert resolve_budget(300, None, 40, None) == 40
    assert resolve_budget(300, 1 / 3, None, 25) == 25  # the pipeline's budget overrides
    assert resolve_budget(300, 1.0, None, None) == 300


def test_bad_budget_parameters_are_errors():
    with pytest.raises(InputError, match="not both"):
        ExtractiveCompressor(rate=0.5, target_tokens=10)
    with pytest.raises(InputError, match="rate"):
        ExtractiveCompressor(rate=3)
    with pytest.raises(InputError, match="scorer"):
        ExtractiveCompressor(scorer="magic")


def test_greedy_fills_the_budget_best_first_then_source_order():
    units = [Unit(0, 0, 1, 0.9, 5), Unit(0, 2, 3, 0.1, 2), Unit(1, 0, 1, 0.5, 4), Unit(1, 2, 3, 0.7, 3)]
    assert greedy(units, 8) == [0, 3]  # 5 + 3 tokens; the 4-token unit no longer fits
    assert greedy(units, 10) == [0, 1, 3]  # a smaller, worse unit still fits after a skip
    assert greedy(units, 0) == []


def test_merge_spans_joins_across_white_space_only():
    text = "one two. three"
    assert merge_spans(text, [(9, 14), (0, 3), (4, 8)]) == ((0, 14),)
    assert merge_spans("a, b", [(0, 1), (3, 4)]) == ((0, 1), (3, 4))


def test_registered_names_and_config_round_trip():
    assert {"extractive", "surprisal", "classifier", "compose", "extractive+surprisal"} <= set(known("compressor"))
    composed = build("compressor", {"type": "extractive+surprisal", "params": {"rate": 0.25}})
    assert isinstance(composed, ComposeCompressor) and composed.steps == ["extractive", "surprisal"]
    assert build("compressor", composed.to_config()) == composed
    extractive = build("compressor", {"type": "extractive", "params": {"target_tokens": 50, "neighbours": 1}})
    assert build("compressor", extractive.to_config()) == extractive


@pytest.mark.parametrize("make", [OverlapExtractive, LengthPruner], ids=["extractive", "pruner"])
def test_empty_input_gives_an_empty_context(make):
    context = make(rate=0.5).compress("anything", [])
    assert context.passages == () and context.original_tokens == 0 and context.kept_tokens == 0
    context = make(rate=0.5).compress("anything", hits_of(["", "   \n"]))
    assert context.passages == () and context.kept_tokens == 0


@fast
@given(chunks=st.lists(texts, max_size=5), rate=st.floats(0.0, 1.0), query=st.sampled_from(WORDS))
def test_extractive_budget_and_mapping_hold_for_any_input(chunks, rate, query):
    hits = hits_of(chunks)
    context = OverlapExtractive(rate=rate).compress(query, hits)
    check_context(context, hits)


@fast
@given(chunks=st.lists(texts, max_size=5), budget=st.integers(0, 120), query=st.sampled_from(WORDS),
       neighbours=st.integers(0, 2))
def test_pipeline_budget_overrides_and_neighbours_respect_it(chunks, budget, query, neighbours):
    hits = hits_of(chunks)
    context = OverlapExtractive(rate=1.0, neighbours=neighbours).compress(query, hits, budget_tokens=budget)
    check_context(context, hits, budget)


@fast
@given(chunks=st.lists(texts, max_size=5), rate=st.floats(0.0, 1.0), query=st.sampled_from(WORDS))
def test_pruner_budget_and_mapping_hold_for_any_input(chunks, rate, query):
    hits = hits_of(chunks)
    context = LengthPruner(rate=rate).compress(query, hits)
    check_context(context, hits)


@fast
@given(chunks=st.lists(texts, max_size=4), rate=st.floats(0.0, 1.0))
def test_compose_budget_and_mapping_hold_for_any_input(chunks, rate):
    hits = hits_of(chunks)
    composed = ComposeCompressor(rate=rate)
    composed._built = [OverlapExtractive(), LengthPruner()]
    check_context(composed.compress("Denver Broncos", hits), hits)


@fast
@given(chunks=st.lists(texts, min_size=1, max_size=4))
def test_rate_one_keeps_every_word(chunks):
    hits = hits_of(chunks)
    context = LengthPruner(rate=1.0).compress("q", hits)
    kept = " ".join(p.text for p in context.passages).split()
    assert kept == " ".join(chunks).split()
    check_context(context, hits)


def test_unregistered_subclass_and_bad_hits():
    with pytest.raises(InputError, match="Hit"):
        OverlapExtractive().compress("q", ["not a hit"])  # type: ignore[list-item]
