"""Recursive chunking: paragraphs, then sentences, then token boundaries, under a hard token cap.

The text is tokenised once with offsets; every size decision is made by counting token starts inside a
character span, so chunk offsets stay exact (``doc.text[start:end] == chunk.text``) and no piece of text
is tokenised twice.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from chunkers.text import chunk_id
from rag.errors import InputError
from rag.protocols import BaseChunker
from rag.registry import declared_params
from rag.text import (
    PARAGRAPH_BREAK,
    SENTENCE_BREAK,
    WHITESPACE_BREAK,
    count_tokens,
    merge_spans,
    overlap_start,
    split_span,
    strip_span,
    token_starts_many,
)
from rag.types import Chunk, Document

# Re-exported: these names were defined here before they moved to chunkers.text (now rag.text).
__all__ = [
    "PARAGRAPH_BREAK", "SENTENCE_BREAK", "WHITESPACE_BREAK", "DocumentChunker", "RecursiveChunker", "chunk_id", "count_tokens",
]


@declared_params
class DocumentChunker(BaseChunker):
    """One chunk per document, the whole text. For evaluation on corpora of passage-sized documents."""

    def chunk(self, doc: Document) -> list[Chunk]:
        # like every chunker, nothing from a document without text (it was a chunk of whitespace)
        return [Chunk.whole(doc, chunk_id(doc.id, 0))] if doc.text.strip() else []


@declared_params
class RecursiveChunker(BaseChunker):
    """Split at paragraph breaks, then sentence ends, then whitespace, then tokens, to at most ``max_tokens``.

    ``overlap_tokens`` of the previous chunk are repeated at the start of the next one (counted inside the
    cap). Token counts use ``tokenizer`` (a model pack name, path or hub id), by default the dense
    encoder's, so that chunks fit the encoder's window.

        >>> chunker = RecursiveChunker(max_tokens=128, overlap_tokens=16)  # doctest: +SKIP
        >>> chunks = chunker.chunk(Document(text=long_text, id="doc1"))    # doctest: +SKIP
    """

    max_tokens: int = 200
    overlap_tokens: int = 0
    tokenizer: str = "minilm"

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise InputError(f"recursive chunker: max_tokens must be at least 1, got {self.max_tokens}")
        if not 0 <= self.overlap_tokens < self.max_tokens:
            raise InputError(f"recursive chunker: overlap_tokens must be in [0, max_tokens), got {self.overlap_tokens} "
                             f"with max_tokens={self.max_tokens}")

    def token_starts(self, text: str) -> Sequence[int]:
        """Character offsets where each token of ``text`` starts (special tokens excluded)."""
        return self._token_starts_many([text])[0]

    def _token_starts_many(self, texts: list[str]) -> list[Sequence[int]]:
        return token_starts_many(self.tokenizer, texts)

    def chunk(self, doc: Document) -> list[Chunk]:
        if not doc.text.strip():
            return []
        return self._chunk(doc, self.token_starts(doc.text))

    def chunk_many(self, docs: Iterable[Document]) -> list[Chunk]:
        docs = [doc for doc in docs if doc.text.strip()]
        chunks: list[Chunk] = []
        for begin in range(0, len(docs), 256):
            batch = docs[begin:begin + 256]
            for doc, starts in zip(batch, self._token_starts_many([d.text for d in batch])):
                chunks.extend(self._chunk(doc, starts))
        return chunks

    def _chunk(self, doc: Document, starts: Sequence[int]) -> list[Chunk]:
        text = doc.text
        budget = self.max_tokens - self.overlap_tokens
        spans = merge_spans(split_span(text, 0, len(text), starts, budget), starts, budget)
        spans = [strip_span(text, a, b) for a, b in spans]
        spans = [(a, b) for a, b in spans if b > a]
        if self.overlap_tokens:
            spans = [spans[0]] + [
                (overlap_start(text, starts, prev_a, a, self.overlap_tokens), b)
                for (prev_a, _), (a, b) in zip(spans, spans[1:])
            ]
        return [
            Chunk(id=chunk_id(doc.id, i), doc_id=doc.id, text=text[a:b], start=a, end=b, title=doc.title)
            for i, (a, b) in enumerate(spans)
        ]
