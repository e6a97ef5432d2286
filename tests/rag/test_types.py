import pytest

from rag.types import Chunk, Context, Document, Hit, Trace, content_id


def test_document_id_defaults_to_content_hash():
    doc = Document(text="hello", title="t")
    assert doc.id == content_id("hello", "t")
    assert Document(text="hello", title="t").id == doc.id
    assert Document(text="hello", title="u").id != doc.id
    assert Document(text="hello", id="given").id == "given"


def test_document_rejects_non_string_text():
    with pytest.raises(TypeError, match="d7"):
        Document(text=None, id="d7")  # type: ignore[arg-type]


def test_chunk_offsets_must_match_text():
    Chunk(id="c", doc_id="d", text="abc", start=2, end=5)
    with pytest.raises(ValueError, match="offsets"):
        Chunk(id="c", doc_id="d", text="abc", start=2, end=6)


def test_chunk_dict_round_trip():
    chunk = Chunk(id="c", doc_id="d", text="abc", start=0, end=3, title="T", metadata={"k": 1})
    assert Chunk.from_dict(chunk.to_dict()) == chunk


def test_trace_times_stages_and_formats():
    trace = Trace()
    with trace.timed("retrieve", n_in=1) as record:
        record["n_out"] = 3
    assert trace.stages[0].stage == "retrieve" and trace.stages[0].n_out == 3
    assert trace.seconds("retrieve") >= 0
    assert "retrieve" in trace.format() and "total" in trace.format()


def test_context_from_hits_keeps_order_and_chunks():
    chunks = [Chunk(id=f"c{i}", doc_id="d", text="x", start=i, end=i + 1) for i in range(3)]
    hits = [Hit(chunk=c, score=1.0 - i, source="dense") for i, c in enumerate(chunks)]
    context = Context.from_hits(hits)
    assert [p.chunk.id for p in context.passages] == ["c0", "c1", "c2"]


def test_whole_chunk_covers_the_document():
    doc = Document("some text", id="d1", title="T", metadata={"k": 1})
    chunk = Chunk.whole(doc)
    assert (chunk.id, chunk.doc_id, chunk.text, chunk.start, chunk.end, chunk.title) == ("d1", "d1", "some text", 0, 9, "T")
    assert chunk.metadata == {}
    assert Chunk.whole(doc, "d1#0").id == "d1#0"
