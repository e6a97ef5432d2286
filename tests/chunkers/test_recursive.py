"""The recursive chunker keeps exact offsets, the token cap and full coverage on any text."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkers.recursive import DocumentChunker, RecursiveChunker, count_tokens
from rag.errors import InputError
from rag.registry import build
from rag.types import Document

pytestmark = pytest.mark.filterwarnings("ignore")


def check_invariants(chunker: RecursiveChunker, doc: Document) -> None:
    chunks = chunker.chunk(doc)
    starts = chunker.token_starts(doc.text)
    covered = [False] * len(doc.text)
    for chunk in chunks:
        assert doc.text[chunk.start:chunk.end] == chunk.text
        assert chunk.text.strip() and chunk.doc_id == doc.id
        assert count_tokens(starts, chunk.start, chunk.end) <= chunker.max_tokens
        for i in range(chunk.start, chunk.end):
            covered[i] = True
    # every non-space character belongs to some chunk
    assert all(covered[i] for i, ch in enumerate(doc.text) if not ch.isspace())
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=400), max_tokens=st.integers(1, 40), overlap=st.integers(0, 10))
def test_invariants_on_arbitrary_unicode(text, max_tokens, overlap):
    overlap = min(overlap, max_tokens - 1)
    check_invariants(RecursiveChunker(max_tokens=max_tokens, overlap_tokens=overlap), Document(text=text, id="d"))


@settings(max_examples=30, deadline=None)
@given(words=st.lists(st.sampled_from(["alpha", "beta.", "gamma!", "\n\n", "delta?", "x" * 30, "é", "中文。"]), max_size=200))
def test_invariants_on_prose_like_text(words):
    check_invariants(RecursiveChunker(max_tokens=16, overlap_tokens=4), Document(text=" ".join(words), id="d"))


def test_prefers_paragraph_then_sentence_boundaries():
    para1 = "First sentence here. Second sentence here."
    para2 = "Another paragraph follows. It has two sentences."
    doc = Document(text=f"{para1}\n\n{para2}", id="d")
    chunker = RecursiveChunker(max_tokens=12)
    texts = [c.text for c in chunker.chunk(doc)]
    assert texts == [para1, para2]
    small = RecursiveChunker(max_tokens=5).chunk(doc)
    assert [c.text for c in small][:2] == ["First sentence here.", "Second sentence here."]


def test_long_unpunctuated_text_and_code_are_split_by_tokens():
    code = "def f(x):\n    return [i*i for i in range(x) if i % 3 == 0 and i > 10 or i < -5]\n" * 5
    chunks = RecursiveChunker(max_tokens=10).chunk(Document(text=code, id="c"))
    assert len(chunks) > 5
    check_invariants(RecursiveChunker(max_tokens=10), Document(text=code, id="c"))
    word = "supercalifragilistic" * 20
    check_invariants(RecursiveChunker(max_tokens=7), Document(text=word, id="w"))


def test_overlap_repeats_the_end_of_the_previous_chunk():
    text = " ".join(f"word{i}." for i in range(60))
    chunks = RecursiveChunker(max_tokens=20, overlap_tokens=5).chunk(Document(text=text, id="d"))
    assert len(chunks) > 2
    for prev, nxt in zip(chunks, chunks[1:]):
        assert nxt.start < prev.end, "chunks overlap"


def test_empty_and_whitespace_documents_give_no_chunks():
    chunker = RecursiveChunker()
    assert chunker.chunk(Document(text="", id="e")) == []
    assert chunker.chunk(Document(text=" \n\t ", id="w")) == []


def test_bad_parameters_are_clear():
    with pytest.raises(InputError, match="max_tokens must be at least 1"):
        RecursiveChunker(max_tokens=0)
    with pytest.raises(InputError, match="overlap_tokens must be in"):
        RecursiveChunker(max_tokens=4, overlap_tokens=4)


def test_registry_and_config_round_trip():
    chunker = build("chunker", {"type": "recursive", "params": {"max_tokens": 64, "overlap_tokens": 8}})
    assert build("chunker", chunker.to_config()) == chunker
    whole = build("chunker", "document").chunk(Document(text="abc", id="d", title="T"))
    assert [(c.id, c.text, c.title) for c in whole] == [("d#0", "abc", "T")]
