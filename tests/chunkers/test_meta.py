"""Meta-Chunking on a real small LM (SmolLM2-135M): perplexity chunking, margin sampling, dynamic merging."""

from __future__ import annotations

import numpy as np
import pytest

from chunkers.meta import MarginChunker, PerplexityChunker, dynamic_merge, local_minima
from chunkers.text import segment
from rag.errors import InputError
from rag.registry import build
from rag.text import count_tokens, sentence_units
from rag.types import Document
from tests.chunkers.topics import BREAD, PYTHON, RAINFOREST

pytestmark = pytest.mark.filterwarnings("ignore")

PAIRS = [(RAINFOREST, PYTHON), (BREAD, RAINFOREST), (PYTHON, BREAD)]


# -- pure parts: minima, segmentation, merging ----------------------------------------------------------


def test_local_minima_follow_the_papers_rule():
    values = [5.0, 2.0, 4.0, 3.9, 1.0, 3.0, 2.5]
    cuts, strength = local_minima(values, threshold=0.0)
    assert cuts == [2, 5]  # after the minima at items 1 and 4; item 6 is last, nothing follows it
    assert strength[2] == pytest.approx(2.0) and strength[5] == pytest.approx(2.0) and strength[1] == pytest.approx(-3.0)
    assert local_minima(values, threshold=1.5)[0] == [2, 5]
    assert local_minima(values, threshold=2.5)[0] == []  # item 1 rises 2.0 on its right, item 4 rises 2.0
    # the first item only needs its right side; equal neighbours are no minimum
    assert local_minima([1.0, 3.0, 3.0, 3.0], 0.0)[0] == [1]


def test_dynamic_merge_merges_weakest_boundaries_first_up_to_the_target():
    starts = list(range(0, 100, 10))  # one token every 10 characters
    spans = [(0, 20), (20, 40), (40, 60), (60, 80), (80, 100)]  # 2 tokens each
    strengths = [0.9, 0.1, 0.5, 0.2]
    assert dynamic_merge(spans, strengths, starts, target_tokens=4) == [(0, 20), (20, 60), (60, 100)]
    # 0.1 then 0.2 merge; 0.5 would make 8 tokens; the strongest boundary, 0.9, still fits 6 tokens
    assert dynamic_merge(spans, strengths, starts, target_tokens=6) == [(0, 60), (60, 100)]
    assert dynamic_merge(spans, strengths, starts, target_tokens=10) == [(0, 100)]
    assert dynamic_merge(spans, strengths, starts, target_tokens=1) == spans
    for target in range(1, 11):
        merged = dynamic_merge(spans, strengths, starts, target)
        assert all(count_tokens(starts, a, b) <= max(target, 2) for a, b in merged)
    with pytest.raises(InputError, match="need 4 strengths"):
        dynamic_merge(spans, [0.1], starts, 4)


def test_segment_cuts_long_groups_at_their_strongest_gap_and_merges_short_ones():
    starts = list(range(10))
    units = [(i, i + 1) for i in range(10)]  # one token per unit
    strength = [0, 0.1, 0.2, 0.9, 0.1, 0.3, 0.1, 0.8, 0.1, 0.1]
    # no boundaries given: the 10-token group is cut at gap 3, then the 7-token rest at gap 7
    assert segment(units, starts, strength, [], max_tokens=5) == [(0, 3), (3, 7), (7, 10)]
    # a 1-unit group is merged across its weaker side
    assert segment(units, starts, strength, [1, 3, 7], max_tokens=5, min_tokens=2) == [(0, 3), (3, 7), (7, 10)]
    # weakest first: gap 7 (0.8) joins units 3..9 (7 tokens); gap 3 would make 10
    assert segment(units, starts, strength, [3, 7], max_tokens=10, target_tokens=7) == [(0, 3), (3, 10)]


# -- the LM parts ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm():
    from rag.generation.engine import load_engine

    return load_engine("smollm2-135m", "transformers:float32")


@pytest.fixture(scope="module")
def ppl_chunks(lm):
    chunker = PerplexityChunker(max_tokens=200, target_tokens=80)
    return chunker, chunker.chunk_many([Document(text=f"{a} {b}", id=f"pair{i}") for i, (a, b) in enumerate(PAIRS)])


def _near_change(chunks, first: str, second: str) -> bool:
    """Whether a chunk boundary lies within one sentence of the start of ``second``."""
    change = len(first) + 1
    sentence_starts = [0] + [i + 2 for i, ch in enumerate(f"{first} {second}") if ch == "." and i + 2 < change + len(second)]
    k = sentence_starts.index(change)
    return any(c.start in sentence_starts[k - 1:k + 2] for c in chunks[1:])


def test_perplexity_chunking_splits_two_unrelated_paragraphs_near_the_topic_change(ppl_chunks):
    chunker, chunks = ppl_chunks
    found = [_near_change([c for c in chunks if c.doc_id == f"pair{i}"], a, b) for i, (a, b) in enumerate(PAIRS)]
    # SmolLM2-135M finds the change in two of the three pairs (exactly, with dynamic merging to 80 tokens);
    # on rainforest -> Python its perplexity barely rises at "Python is a ... programming language."
    assert sum(found) >= 2, found
    for i in range(len(PAIRS)):
        assert len([c for c in chunks if c.doc_id == f"pair{i}"]) <= 4


def test_perplexity_values_rise_at_a_topic_change(lm):
    chunker = PerplexityChunker(max_tokens=200)
    text = f"{BREAD} {RAINFOREST}"
    units = sentence_units(text, chunker.token_starts(text), 200)
    values = chunker.sentence_nll(text, units)
    assert len(values) == 10 and np.isfinite(values).all()
    assert values[5] - values[4] > 1.0  # "The Amazon rainforest covers ..." after "Cool the bread ..."


def test_margin_sampling_batches_equal_single_prompts_and_split_near_the_topic_change(lm):
    chunker = MarginChunker(max_tokens=200, target_tokens=80, batch_size=16)
    pairs = [("Knead the dough.", "Let it rise."), ("Jaguars live there.", "Python is a language with a long name.")]
    batched = chunker.margins(pairs)
    single = np.concatenate([chunker.margins([p]) for p in pairs])
    np.testing.assert_allclose(batched, single, atol=1e-4)
    assert ((-1 <= batched) & (batched <= 1)).all()
    chunks = chunker.chunk_many([Document(text=f"{a} {b}", id=f"pair{i}") for i, (a, b) in enumerate(PAIRS)])
    found = [_near_change([c for c in chunks if c.doc_id == f"pair{i}"], a, b) for i, (a, b) in enumerate(PAIRS)]
    assert sum(found) >= 2, found


def test_lm_chunkers_are_cheap_to_build_and_round_trip(monkeypatch):
    import rag.generation.engine

    monkeypatch.setattr(rag.generation.engine, "load_engine", lambda *a, **k: pytest.fail("the constructor loaded the LM"))
    for spec in (
        {"type": "perplexity", "params": {"threshold": 0.5, "target_tokens": 64, "window_tokens": 128}},
        {"type": "margin", "params": {"threshold": 0.1, "max_tokens": 100, "batch_size": 4, "engine": "llama.cpp"}},
    ):
        chunker = build("chunker", spec)
        assert build("chunker", chunker.to_config()) == chunker
        assert chunker.chunk(Document(text=" \n ", id="w")) == []
    assert build("chunker", {"type": "margin"}).engine == "transformers:float32"  # the same chunks on every machine
    with pytest.warns(DeprecationWarning, match="use engine='transformers:bfloat16'"):  # configs of earlier rounds
        old = build("chunker", {"type": "perplexity", "params": {"dtype": "bfloat16"}})
    assert old.engine == "transformers:bfloat16" and build("chunker", old.to_config()) == old
    with pytest.raises(InputError, match="unknown engine 'cuda'"):
        PerplexityChunker(engine="cuda")
    with pytest.raises(InputError, match="target_tokens must be in"):
        PerplexityChunker(max_tokens=100, target_tokens=200)
    with pytest.raises(InputError, match="threshold must be in"):
        MarginChunker(threshold=2.0)
    with pytest.raises(InputError, match="threshold must be at least 0"):
        PerplexityChunker(threshold=-1.0)


def test_merging_joins_fine_chunks_up_to_the_target_under_the_hard_maximum(lm):
    text = " ".join([RAINFOREST, PYTHON, BREAD])
    doc = Document(text=text, id="long")
    starts = PerplexityChunker().token_starts(text)
    fine = PerplexityChunker(max_tokens=60).chunk(doc)
    fine_spans = {(c.start, c.end) for c in fine}
    assert max(count_tokens(starts, c.start, c.end) for c in fine) <= 60
    counts = {}
    for target in (30, 60):
        merged = PerplexityChunker(max_tokens=60, target_tokens=target).chunk(doc)
        assert {c.start for c in merged} <= {c.start for c in fine}  # merging only removes boundaries
        counts[target] = len(merged)
        for chunk in merged:
            size = count_tokens(starts, chunk.start, chunk.end)
            assert size <= 60
            assert size <= target or (chunk.start, chunk.end) in fine_spans  # only a lone fine chunk may pass it
    assert len(fine) >= counts[30] >= counts[60] and counts[60] < len(fine)


def test_lm_chunkers_on_llama_cpp_find_the_same_topic_changes():
    """The GGUF pack through llama.cpp: perplexity values and margins close to the transformers engine's,
    and the chunks still split the unrelated paragraphs near their topic change."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by `make install`")
    text = f"{BREAD} {RAINFOREST}"
    reference = PerplexityChunker(max_tokens=200)
    units = sentence_units(text, reference.token_starts(text), 200)
    llama = PerplexityChunker(max_tokens=200, engine="llama.cpp")
    np.testing.assert_allclose(llama.sentence_nll(text, units), reference.sentence_nll(text, units), atol=0.15)
    docs = [Document(text=f"{a} {b}", id=f"pair{i}") for i, (a, b) in enumerate(PAIRS)]
    chunks = PerplexityChunker(max_tokens=200, target_tokens=80, engine="llama.cpp").chunk_many(docs)
    found = [_near_change([c for c in chunks if c.doc_id == f"pair{i}"], a, b) for i, (a, b) in enumerate(PAIRS)]
    assert sum(found) >= 2, found
    pairs = [("Knead the dough.", "Let it rise."), ("Jaguars live there.", "Python is a language with a long name.")]
    margins = MarginChunker(engine="llama.cpp").margins(pairs)
    np.testing.assert_allclose(margins, MarginChunker().margins(pairs), atol=0.15)
