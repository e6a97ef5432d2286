"""Semantic chunking: breakpoints where neighbouring sentence windows diverge, inside the size limits."""

import numpy as np
import pytest

from chunkers.semantic import SemanticChunker, breakpoint_threshold, window_distances
from rag.errors import InputError
from rag.registry import build
from rag.text import count_tokens
from rag.types import Document
from tests.chunkers.topics import PYTHON, RAINFOREST

pytestmark = pytest.mark.filterwarnings("ignore")


def test_splits_between_two_unrelated_topics():
    doc = Document(text=f"{RAINFOREST} {PYTHON}", id="d")
    chunker = SemanticChunker(threshold_type="percentile", threshold_amount=90, min_tokens=8, max_tokens=200)
    chunks = chunker.chunk(doc)
    assert [c.text for c in chunks] == [RAINFOREST, PYTHON]


@pytest.mark.parametrize("threshold_type", ["std", "iqr"])
def test_other_threshold_rules_find_the_topic_change(threshold_type):
    doc = Document(text=f"{RAINFOREST} {PYTHON} {RAINFOREST}", id="d")
    chunker = SemanticChunker(threshold_type=threshold_type, threshold_amount=0.5, min_tokens=8, window=2)
    boundaries = {c.start for c in chunker.chunk(doc)}
    assert len(RAINFOREST) + 1 in boundaries and len(RAINFOREST) + len(PYTHON) + 2 in boundaries


def test_window_distances_and_thresholds():
    # two clusters of directions: the only large distance is at the gap between them
    embeddings = np.array([[1, 0], [1, 0.1], [0.9, 0], [0, 1], [0.1, 1]], dtype=np.float32)
    distances = window_distances(embeddings, window=1)
    assert distances[0] == 0 and np.argmax(distances) == 3
    wide = window_distances(embeddings, window=2)
    assert np.argmax(wide) == 3 and wide[3] < distances[3] + 1e-9
    values = np.array([0.1, 0.2, 0.3, 0.4, 1.0])
    assert breakpoint_threshold(values, "percentile", 50) == pytest.approx(0.3)
    assert breakpoint_threshold(values, "std", 1.0) == pytest.approx(values.mean() + values.std())
    assert breakpoint_threshold(values, "iqr", 1.5) == pytest.approx(values.mean() + 1.5 * 0.2)


def test_max_tokens_is_a_hard_limit_and_short_groups_are_merged():
    text = " ".join([RAINFOREST] * 4 + [PYTHON] * 3)
    chunker = SemanticChunker(min_tokens=30, max_tokens=60)
    doc = Document(text=text, id="d")
    starts = chunker.token_starts(text)
    chunks = chunker.chunk(doc)
    sizes = [count_tokens(starts, c.start, c.end) for c in chunks]
    assert max(sizes) <= 60
    assert sum(size < 30 for size in sizes) <= 1, sizes
    # the largest distance of the text is still a boundary after the size rules
    assert any(c.text.startswith("Python is") for c in chunks)


def test_one_encode_call_per_batch_of_documents(monkeypatch):
    chunker = SemanticChunker(min_tokens=1)
    calls = []
    original = type(chunker.encoder).encode_documents

    def counting(self, texts):
        calls.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(type(chunker.encoder), "encode_documents", counting)
    docs = [Document(text=f"{RAINFOREST} {PYTHON}", id=f"d{i}") for i in range(3)] + [Document(text="One.", id="o")]
    chunks = chunker.chunk_many(docs)
    assert calls == [30]  # 10 sentences per two-topic document; the one-sentence document needs no embedding
    assert {c.doc_id for c in chunks} == {"d0", "d1", "d2", "o"}


def test_texts_without_punctuation_and_empty_texts():
    chunker = SemanticChunker(max_tokens=24, min_tokens=4)
    code = "def f(x):\n    return x + 1\n\nclass A:\n    pass\n" * 6
    doc = Document(text=code, id="c")
    starts = chunker.token_starts(code)
    chunks = chunker.chunk(doc)
    assert all(count_tokens(starts, c.start, c.end) <= 24 and code[c.start:c.end] == c.text for c in chunks)
    assert chunker.chunk(Document(text="  \n ", id="w")) == []


def test_constructor_is_cheap_validates_and_round_trips():
    chunker = build("chunker", {"type": "semantic", "params": {"threshold_type": "iqr", "window": 2}})
    assert chunker._encoder is None
    assert build("chunker", chunker.to_config()) == chunker
    with pytest.raises(InputError, match="threshold_type must be one of"):
        SemanticChunker(threshold_type="gradient")
    with pytest.raises(InputError, match="min_tokens must be in"):
        SemanticChunker(min_tokens=300, max_tokens=200)
    with pytest.raises(InputError, match="percentile threshold_amount"):
        SemanticChunker(threshold_amount=120)


def test_bfloat16_encoder_is_an_option_that_round_trips_and_still_finds_the_topic_change():
    chunker = build("chunker", {"type": "semantic", "params": {"dtype": "bfloat16", "threshold_amount": 90,
                                                                "min_tokens": 8}})
    assert chunker.encoder.dtype == "bfloat16"
    assert build("chunker", chunker.to_config()) == chunker
    chunks = chunker.chunk(Document(text=f"{RAINFOREST} {PYTHON}", id="d"))
    assert [c.text for c in chunks] == [RAINFOREST, PYTHON]
    with pytest.raises(InputError, match="dtype must be one of float32, bfloat16"):
        SemanticChunker(dtype="float16")
