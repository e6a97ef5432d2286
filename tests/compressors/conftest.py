"""Shared set-up for compressor tests: hits from plain texts, and the checks every result must pass."""

from __future__ import annotations

from rag.compression import CompressedContext, TokenCounter
from rag.types import Chunk, Hit

WORDS = (
    "The Denver Broncos defeated the Carolina Panthers 24-10 to earn their third Super Bowl title. "
    "The game was played on February 7, 2016, at Levi's Stadium in Santa Clara, California. "
    "As this was the 50th Super Bowl, the league emphasized the golden anniversary. "
    "Photosynthesis converts light energy into chemical energy stored in glucose. "
    "Mitochondria are the powerhouse of the cell, they produce ATP. "
    "Über naïve café — 東京 is big! (Really?) Yes: \"quoted\" text; e.g. x=1."
).split()


def hits_of(texts: list[str]) -> list[Hit]:
    """One hit per text, each its own chunk (ids c0, c1, ...), scores descending."""
    return [
        Hit(Chunk(id=f"c{i}", doc_id=f"d{i}", text=t, start=0, end=len(t), title=f"T{i}"), 1.0 - i / 10, "test")
        for i, t in enumerate(texts)
    ]


def check_context(context: CompressedContext, hits: list[Hit], budget: int | None = None) -> None:
    """Budget held, token counts true, every passage maps back to its chunk, chunks in hit order."""
    counter = TokenCounter("qwen2.5-0.5b")
    assert context.kept_tokens <= context.budget_tokens
    if budget is not None:
        assert context.budget_tokens == budget
    assert context.kept_tokens == sum(counter.count([p.text for p in context.passages]))
    assert context.original_tokens == sum(counter.count([h.chunk.text for h in hits]))
    order = [h.chunk.id for h in hits]
    positions = [order.index(p.chunk.id) for p in context.passages]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    for passage in context.passages:
        assert passage.chunk in [h.chunk for h in hits]
        text = passage.chunk.text
        assert passage.spans, "a passage with no spans"
        previous_end = -1
        for a, b in passage.spans:
            assert 0 <= a < b <= len(text) and a > previous_end
            assert not text[a].isspace() and not text[b - 1].isspace()
            previous_end = b
        assert passage.text == " ".join(text[a:b] for a, b in passage.spans)
