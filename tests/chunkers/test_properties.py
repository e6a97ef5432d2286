"""Properties every chunker keeps on arbitrary Unicode: exact offsets, the hard token cap, full coverage.

The language-model chunkers run the real SmolLM2-135M, so they get fewer and shorter examples.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag.registry import build
from rag.text import count_tokens
from rag.types import Document

pytestmark = pytest.mark.filterwarnings("ignore")

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODEL = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LM = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Prose-like text: words, sentence ends, line and paragraph breaks, CJK stops, long words, code.
WORDS = ["alpha", "beta.", "gamma!", "\n", "\n\n", "delta?", "x" * 40, "é", "中文。", "def f(x):", "  return x", "- item"]
prose = st.lists(st.sampled_from(WORDS), max_size=80).map(" ".join)
short_prose = st.lists(st.sampled_from(WORDS), max_size=24).map(" ".join)


def check_invariants(chunker, doc: Document) -> None:
    chunks = chunker.chunk(doc)
    starts = chunker.token_starts(doc.text)
    covered = [False] * len(doc.text)
    for chunk in chunks:
        assert doc.text[chunk.start:chunk.end] == chunk.text
        assert chunk.text.strip() and chunk.text == chunk.text.strip() and chunk.doc_id == doc.id
        # the token cap, except a single character the tokenizer reads as more tokens than the budget
        # (MiniLM splits a Hangul syllable into three jamo): a character span cannot cut it
        assert count_tokens(starts, chunk.start, chunk.end) <= chunker.max_tokens or len(chunk.text) == 1
        for i in range(chunk.start, chunk.end):
            covered[i] = True
    # every non-space character belongs to some chunk
    assert all(covered[i] for i, ch in enumerate(doc.text) if not ch.isspace())
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)
    assert [c.id for c in chunks] == [f"{doc.id}#{i}" for i in range(len(chunks))]
    if not doc.text.strip():
        assert chunks == []


@FAST
@given(text=st.one_of(st.text(max_size=400), prose), max_tokens=st.integers(1, 40), overlap=st.integers(0, 10))
def test_fixed(text, max_tokens, overlap):
    params = {"max_tokens": max_tokens, "overlap_tokens": min(overlap, max_tokens - 1)}
    chunker = build("chunker", {"type": "fixed", "params": params})
    check_invariants(chunker, Document(text=text, id="d"))


@FAST
@given(text=st.one_of(st.text(max_size=400), prose), max_tokens=st.integers(1, 40), overlap=st.integers(0, 3))
def test_sentence(text, max_tokens, overlap):
    chunker = build("chunker", {"type": "sentence", "params": {"max_tokens": max_tokens, "overlap_sentences": overlap}})
    check_invariants(chunker, Document(text=text, id="d"))


@FAST
@given(text=st.one_of(st.text(max_size=400), prose), max_tokens=st.integers(1, 40), overlap=st.integers(0, 10))
def test_recursive(text, max_tokens, overlap):
    params = {"max_tokens": max_tokens, "overlap_tokens": min(overlap, max_tokens - 1)}
    chunker = build("chunker", {"type": "recursive", "params": params})
    check_invariants(chunker, Document(text=text, id="d"))


@MODEL
@given(
    text=st.one_of(st.text(max_size=300), prose),
    max_tokens=st.integers(1, 40),
    min_tokens=st.integers(0, 20),
    rule=st.sampled_from(["percentile", "std", "iqr"]),
    window=st.integers(1, 3),
)
def test_semantic(text, max_tokens, min_tokens, rule, window):
    params = {"max_tokens": max_tokens, "min_tokens": min(min_tokens, max_tokens), "threshold_type": rule, "window": window}
    check_invariants(build("chunker", {"type": "semantic", "params": params}), Document(text=text, id="d"))


@LM
@given(
    text=st.one_of(st.text(max_size=160), prose),
    max_tokens=st.integers(2, 40),
    target=st.one_of(st.none(), st.integers(1, 40)),
)
def test_perplexity(text, max_tokens, target):
    params = {
        "max_tokens": max_tokens,
        "target_tokens": None if target is None else min(target, max_tokens),
        "window_tokens": 48,  # small windows and context: the KV cache is trimmed inside these examples
        "context_tokens": 24,
    }
    check_invariants(build("chunker", {"type": "perplexity", "params": params}), Document(text=text, id="d"))


@LM
@given(
    text=st.one_of(st.text(max_size=100), short_prose),
    max_tokens=st.integers(8, 40),
    target=st.one_of(st.none(), st.integers(8, 40)),
)
def test_margin(text, max_tokens, target):
    params = {
        "max_tokens": max_tokens,
        "target_tokens": None if target is None else min(target, max_tokens),
        "context_tokens": 16,
        "sentence_tokens": 16,
        "batch_size": 32,
    }
    check_invariants(build("chunker", {"type": "margin", "params": params}), Document(text=text, id="d"))


@pytest.mark.parametrize("name", ["fixed", "sentence", "recursive", "semantic", "perplexity", "margin"])
def test_every_chunker_round_trips_and_handles_degenerate_text(name):
    params = {"max_tokens": 12, **({"min_tokens": 4} if name == "semantic" else {})}
    chunker = build("chunker", {"type": name, "params": params})
    assert build("chunker", chunker.to_config()) == chunker
    for text in ("", "   \n\t", "\x00\x01", "word", "a" * 3 + "\n" * 5):
        check_invariants(chunker, Document(text=text, id="d"))


@pytest.mark.parametrize("kind", ["fixed", "sentence", "recursive"])
def test_a_character_over_the_budget_is_a_chunk_of_its_own(kind):
    # '쑴' is three MiniLM tokens (NFD jamo) starting at one character: found by hypothesis with max_tokens=1
    chunker = build("chunker", {"type": kind, "params": {"max_tokens": 1}})
    doc = Document(text="쑴 a 쑴쑴", id="d")
    assert [c.text for c in chunker.chunk(doc)] == ["쑴", "a", "쑴", "쑴"]
    check_invariants(chunker, doc)
