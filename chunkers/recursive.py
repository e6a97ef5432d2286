"""Recursive chunking: paragraphs, then sentences, then token boundaries, under a hard token cap.

The text is tokenised once with offsets; every size decision is made by counting token starts inside a
character span, so chunk offsets stay exact (``doc.text[start:end] == chunk.text``) and no piece of text
is tokenised twice.
"""

from __future__ import annotations

import bisect
import re
from typing import Iterable, Sequence

from rag.errors import InputError
from rag.protocols import BaseChunker
from rag.types import Chunk, Document

PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
# A sentence ends with terminal punctuation (optionally closed by quotes or brackets) before whitespace;
# CJK full stops end a sentence without whitespace after them.
SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"')\]]*\s+|(?<=[。！？])")
WHITESPACE_BREAK = re.compile(r"\s+")


def chunk_id(doc_id: str, index: int) -> str:
    return f"{doc_id}#{index}"


class DocumentChunker(BaseChunker):
    """One chunk per document, the whole text. For evaluation on corpora of passage-sized documents."""

    def __init__(self) -> None:
        pass

    def chunk(self, doc: Document) -> list[Chunk]:
        return [Chunk(id=chunk_id(doc.id, 0), doc_id=doc.id, text=doc.text, start=0, end=len(doc.text), title=doc.title)]


class RecursiveChunker(BaseChunker):
    """Split at paragraph breaks, then sentence ends, then whitespace, then tokens, to at most ``max_tokens``.

    ``overlap_tokens`` of the previous chunk are repeated at the start of the next one (counted inside the
    cap). Token counts use ``tokenizer`` (a model pack name, path or hub id), by default the dense
    encoder's, so that chunks fit the encoder's window.

        >>> chunker = RecursiveChunker(max_tokens=128, overlap_tokens=16)  # doctest: +SKIP
        >>> chunks = chunker.chunk(Document(text=long_text, id="doc1"))    # doctest: +SKIP
    """

    def __init__(self, max_tokens: int = 200, overlap_tokens: int = 0, tokenizer: str = "minilm") -> None:
        if max_tokens < 1:
            raise InputError(f"recursive chunker: max_tokens must be at least 1, got {max_tokens}")
        if not 0 <= overlap_tokens < max_tokens:
            raise InputError(
                f"recursive chunker: overlap_tokens must be in [0, max_tokens), got {overlap_tokens} with max_tokens={max_tokens}"
            )
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.tokenizer = tokenizer

    def token_starts(self, text: str) -> list[int]:
        """Character offsets where each token of ``text`` starts (special tokens excluded)."""
        return self._token_starts_many([text])[0]

    def _token_starts_many(self, texts: list[str]) -> list[list[int]]:
        from rag.tokenizers import load_tokenizer

        # One batched call: the Rust tokenizer is several times faster on a batch than text by text.
        encodings = load_tokenizer(self.tokenizer)(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [[start for start, end in offsets if end > start] for offsets in encodings["offset_mapping"]]

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

    def _chunk(self, doc: Document, starts: list[int]) -> list[Chunk]:
        text = doc.text
        budget = self.max_tokens - self.overlap_tokens
        spans = _merge(_split(text, 0, len(text), starts, budget, level=0), starts, budget)
        spans = [_strip(text, a, b) for a, b in spans]
        spans = [(a, b) for a, b in spans if b > a]
        if self.overlap_tokens:
            spans = [spans[0]] + [
                (_overlap_start(text, starts, prev_a, a, self.overlap_tokens), b)
                for (prev_a, _), (a, b) in zip(spans, spans[1:])
            ]
        return [
            Chunk(id=chunk_id(doc.id, i), doc_id=doc.id, text=text[a:b], start=a, end=b, title=doc.title)
            for i, (a, b) in enumerate(spans)
        ]


def count_tokens(starts: Sequence[int], a: int, b: int) -> int:
    """Tokens whose first character lies in ``[a, b)``."""
    return bisect.bisect_left(starts, b) - bisect.bisect_left(starts, a)


def _split(text: str, a: int, b: int, starts: Sequence[int], budget: int, level: int) -> list[tuple[int, int]]:
    """Contiguous spans covering ``[a, b)``, each within ``budget`` tokens."""
    if count_tokens(starts, a, b) <= budget:
        return [(a, b)]
    if level < 3:
        pattern = (PARAGRAPH_BREAK, SENTENCE_BREAK, WHITESPACE_BREAK)[level]
        cuts = [m.end() for m in pattern.finditer(text, a, b) if a < m.end() < b]
        if not cuts:
            return _split(text, a, b, starts, budget, level + 1)
        bounds = [a, *cuts, b]
        pieces = [_split(text, x, y, starts, budget, level + 1) for x, y in zip(bounds, bounds[1:])]
        return _merge([span for piece in pieces for span in piece], starts, budget)
    # Last resort: cut between tokens, ``budget`` tokens at a time (a word longer than the cap, code).
    first, last = bisect.bisect_left(starts, a), bisect.bisect_left(starts, b)
    cuts = [starts[i] for i in range(first + budget, last, budget) if starts[i] > a]
    bounds = [a, *cuts, b]
    return list(zip(bounds, bounds[1:]))


def _merge(spans: list[tuple[int, int]], starts: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Join neighbouring spans greedily while the joined span stays within ``budget`` tokens."""
    merged: list[tuple[int, int]] = []
    for a, b in spans:
        if merged and count_tokens(starts, merged[-1][0], b) <= budget:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


def _strip(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def _overlap_start(text: str, starts: Sequence[int], prev_start: int, start: int, overlap: int) -> int:
    """Move ``start`` back over at most ``overlap`` tokens of the previous chunk, landing on a word start."""
    index = bisect.bisect_left(starts, start)
    earliest = bisect.bisect_left(starts, prev_start)
    for i in range(max(index - overlap, earliest), index):
        # Prefer a token that begins a word, so the overlap never starts in the middle of one.
        if starts[i] == 0 or text[starts[i] - 1].isspace():
            return starts[i]
    return start
