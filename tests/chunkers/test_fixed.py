"""The fixed-size baselines: token windows with exact overlap, whole sentences packed under the cap."""

import pytest

from chunkers.fixed import SentenceChunker, TokenChunker
from rag.errors import InputError
from rag.registry import build
from rag.text import count_tokens, sentence_units
from rag.types import Document

pytestmark = pytest.mark.filterwarnings("ignore")

PROSE = (
    "The river rises in the hills. It flows north through three towns! Fishing boats use its lower course? "
    "A dam was built in 1950. \"It changed the valley,\" said the mayor. The reservoir now supplies the city.\n\n"
    "A second paragraph starts here. It is short."
)


def test_token_windows_have_the_size_and_the_exact_overlap():
    chunker = TokenChunker(max_tokens=10, overlap_tokens=3)
    doc = Document(text=PROSE, id="d")
    starts = chunker.token_starts(doc.text)
    chunks = chunker.chunk(doc)
    assert len(chunks) == 1 + -(-(len(starts) - 10) // 7)
    for chunk in chunks[:-1]:
        assert count_tokens(starts, chunk.start, chunk.end) == 10
    for prev, nxt in zip(chunks, chunks[1:]):
        assert count_tokens(starts, nxt.start, prev.end) == 3
    assert chunks[0].start == 0 and chunks[-1].end == len(PROSE)


def test_token_windows_without_overlap_partition_the_tokens():
    chunker = TokenChunker(max_tokens=7)
    doc = Document(text=PROSE, id="d")
    starts = chunker.token_starts(doc.text)
    chunks = chunker.chunk(doc)
    assert sum(count_tokens(starts, c.start, c.end) for c in chunks) == len(starts)
    assert all(prev.end <= nxt.start for prev, nxt in zip(chunks, chunks[1:]))


def test_sentence_chunks_are_whole_sentences_under_the_cap():
    chunker = SentenceChunker(max_tokens=20)
    doc = Document(text=PROSE, id="d")
    starts = chunker.token_starts(doc.text)
    units = {doc.text[a:b].strip() for a, b in sentence_units(doc.text, starts, 20)}
    chunks = chunker.chunk(doc)
    assert len(chunks) > 2
    for chunk in chunks:
        assert count_tokens(starts, chunk.start, chunk.end) <= 20
        assert chunk.text.endswith((".", "!", "?", '"', "here.")), chunk.text
    # each chunk is a run of whole sentences: it starts where a sentence starts
    assert all(any(chunk.text.startswith(u) for u in units) for chunk in chunks)
    assert "It is short." in chunks[-1].text


def test_sentence_overlap_repeats_the_last_sentences():
    doc = Document(text=" ".join(f"Sentence number {i} is here." for i in range(12)), id="d")
    chunks = SentenceChunker(max_tokens=24, overlap_sentences=1).chunk(doc)
    assert len(chunks) > 2
    for prev, nxt in zip(chunks, chunks[1:]):
        last_sentence = prev.text[prev.text.rfind("Sentence"):]
        assert nxt.text.startswith(last_sentence)
        assert nxt.end > prev.end


def test_over_long_sentences_and_code_are_split_under_the_cap():
    sentence = "word " * 300 + "end."
    code = "def f(x):\n    return [i*i for i in range(x) if i % 3 == 0]\n" * 8
    for text in (sentence, code, "qzxv" * 24):  # a 96-character word: many word pieces
        for chunker in (SentenceChunker(max_tokens=16), TokenChunker(max_tokens=16)):
            doc = Document(text=text, id="t")
            starts = chunker.token_starts(text)
            chunks = chunker.chunk(doc)
            assert len(chunks) > 1
            assert all(count_tokens(starts, c.start, c.end) <= 16 for c in chunks)
            assert all(text[c.start:c.end] == c.text for c in chunks)
    # code lines are kept whole when they fit
    lines = SentenceChunker(max_tokens=30).chunk(Document(text=code, id="c"))
    assert all(chunk.text.startswith("def f(x):") for chunk in lines)


def test_empty_and_whitespace_documents_give_no_chunks():
    for chunker in (TokenChunker(), SentenceChunker()):
        assert chunker.chunk(Document(text="", id="e")) == []
        assert chunker.chunk(Document(text=" \n\t ", id="w")) == []
        assert chunker.chunk_many([Document(text="", id="e"), Document(text="One.", id="o")])[0].text == "One."


def test_bad_parameters_are_clear():
    with pytest.raises(InputError, match="fixed chunker: max_tokens must be at least 1"):
        TokenChunker(max_tokens=0)
    with pytest.raises(InputError, match="overlap_tokens must be in"):
        TokenChunker(max_tokens=4, overlap_tokens=4)
    with pytest.raises(InputError, match="overlap_sentences"):
        SentenceChunker(overlap_sentences=-1)


def test_registry_names_and_config_round_trip():
    fixed = build("chunker", {"type": "fixed", "params": {"max_tokens": 64, "overlap_tokens": 8}})
    sentence = build("chunker", {"type": "sentence", "params": {"max_tokens": 64, "overlap_sentences": 2}})
    assert isinstance(fixed, TokenChunker) and isinstance(sentence, SentenceChunker)
    for chunker in (fixed, sentence):
        assert build("chunker", chunker.to_config()) == chunker
    assert fixed.to_config() == {"type": "fixed", "params": {"max_tokens": 64, "overlap_tokens": 8, "tokenizer": "minilm"}}


def test_chunk_many_matches_chunk_and_keeps_titles():
    docs = [Document(text=PROSE, id=f"d{i}", title=f"T{i}") for i in range(3)]
    chunker = SentenceChunker(max_tokens=20)
    assert chunker.chunk_many(docs) == [c for d in docs for c in chunker.chunk(d)]
    assert {c.title for c in chunker.chunk_many(docs)} == {"T0", "T1", "T2"}
