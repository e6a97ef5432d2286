"""Shared machinery of the chunkers: spans to chunks, boundary-strength segmentation, the span chunker base.

Every chunker here works on character spans of the original text, sized by counting token starts (the text
units of :mod:`rag.text`): the text is tokenised once with offsets (``token_starts``), a span ``[a, b)``
holds ``count_tokens(starts, a, b)`` tokens, and chunks are cut from the text by their offsets, so
``doc.text[start:end] == chunk.text`` holds by construction and no piece of text is tokenised twice.

Model-based chunkers (semantic, perplexity, margin sampling) cut a text into *units* (sentences, or pieces
of over-long sentences and of text without sentence punctuation, see :func:`sentence_units`), score every
gap between neighbouring units, and hand the scores to :func:`segment`, which turns them into chunks under
the size limits: split groups above the hard maximum at their strongest gap, merge groups across their
weakest gaps up to a target length, and merge groups below a minimum into a neighbour.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from rag.errors import InputError
from rag.protocols import BaseChunker
from rag.text import TOKENIZE_BATCH, Span, count_tokens, strip_span, token_starts_many
from rag.types import Chunk, Document

def chunk_id(doc_id: str, index: int) -> str:
    return f"{doc_id}#{index}"


def spans_to_chunks(doc: Document, spans: Iterable[Span]) -> list[Chunk]:
    """Chunks of ``doc`` for ``spans``, stripped of surrounding whitespace; empty ones are dropped."""
    chunks: list[Chunk] = []
    for a, b in spans:
        a, b = strip_span(doc.text, a, b)
        if b > a:
            chunks.append(
                Chunk(id=chunk_id(doc.id, len(chunks)), doc_id=doc.id, text=doc.text[a:b], start=a, end=b, title=doc.title)
            )
    return chunks


# -- segmentation by boundary strength ----------------------------------------------------------------


def segment(
    units: Sequence[Span],
    starts: Sequence[int],
    strength: Sequence[float],
    cuts: Iterable[int],
    max_tokens: int,
    min_tokens: int = 0,
    target_tokens: int | None = None,
) -> list[Span]:
    """Group consecutive ``units`` into spans, starting from the boundaries ``cuts``.

    ``strength[c]`` (``0 < c < len(units)``) scores the gap between unit ``c - 1`` and unit ``c``: the
    higher, the stronger the reason to cut there. Gap ``c`` is a cut in ``cuts``. Then:

    1. a group above ``max_tokens`` is cut at its strongest gap (preferring gaps that leave both sides at
       least ``min_tokens``), recursively, until every group fits (units themselves fit by construction);
    2. with ``target_tokens``, groups are merged across their weakest cuts first while the merged group
       stays within ``target_tokens`` (dynamic merging);
    3. groups below ``min_tokens`` are merged into a neighbour across the weaker of their two cuts, weakest
       first, while the merged group stays within ``max_tokens``.
    """
    n = len(units)
    if n == 0:
        return []

    def size(i: int, j: int) -> int:  # tokens of units i .. j-1
        return count_tokens(starts, units[i][0], units[j - 1][1])

    boundaries = sorted({c for c in cuts if 0 < c < n})
    groups: list[tuple[int, int]] = []
    for i, j in zip([0, *boundaries], [*boundaries, n]):
        groups.extend(_split_group(i, j, size, strength, max_tokens, min_tokens))
    bounds = [i for i, _ in groups[1:]]
    if target_tokens is not None:
        bounds = _merge_weakest(bounds, n, size, strength, target_tokens, small=None)
    if min_tokens > 0:
        bounds = _merge_weakest(bounds, n, size, strength, max_tokens, small=min_tokens)
    edges = [0, *bounds, n]
    return [(units[i][0], units[j - 1][1]) for i, j in zip(edges, edges[1:])]


def _split_group(i: int, j: int, size, strength: Sequence[float], max_tokens: int, min_tokens: int) -> list[tuple[int, int]]:
    done: list[tuple[int, int]] = []
    stack = [(i, j)]
    while stack:
        a, b = stack.pop()
        if b - a <= 1 or size(a, b) <= max_tokens:
            done.append((a, b))
            continue
        gaps = range(a + 1, b)
        balanced = [c for c in gaps if size(a, c) >= min_tokens and size(c, b) >= min_tokens]
        cut = max(balanced or gaps, key=lambda c: (strength[c], -abs((a + b) / 2 - c)))
        stack.append((cut, b))
        stack.append((a, cut))
    return done


def _merge_weakest(bounds: list[int], n: int, size, strength: Sequence[float], limit: int, small: int | None) -> list[int]:
    """Remove cuts weakest first while the joined group fits ``limit``; with ``small``, only cuts next to a
    group below ``small`` tokens are candidates."""
    prev = {c: p for p, c in zip([0, *bounds], bounds)}
    nxt = {c: q for c, q in zip(bounds, [*bounds[1:], n])}
    removed: set[int] = set()
    for cut in sorted(bounds, key=lambda c: (strength[c], c)):
        p, q = prev[cut], nxt[cut]
        if size(p, q) > limit:
            continue
        if small is not None and size(p, cut) >= small and size(cut, q) >= small:
            continue
        removed.add(cut)
        if q in prev:
            prev[q] = p
        if p in nxt:
            nxt[p] = q
    return [c for c in bounds if c not in removed]


# -- the base of span-producing chunkers --------------------------------------------------------------


class SpanChunker(BaseChunker):
    """A chunker that cuts each document into character spans sized in tokens of ``self.tokenizer``.

    Every chunk holds at most ``max_tokens`` tokens, with one exception: chunks are character spans, so a
    single character that the tokenizer reads as more tokens than the budget (MiniLM's normaliser splits a
    Hangul syllable into its three jamo, for example) becomes a chunk of its own, over the budget.

    Subclasses implement :meth:`_spans_many` for a batch of documents (so model-based chunkers can batch
    their model calls across documents); empty and whitespace-only documents never reach it.
    """

    tokenizer: str = "minilm"
    max_tokens: int = 200

    def token_starts(self, text: str) -> Sequence[int]:
        """Character offsets where each token of ``text`` starts (special tokens excluded)."""
        return token_starts_many(self.tokenizer, [text])[0]

    def chunk(self, doc: Document) -> list[Chunk]:
        return self.chunk_many([doc])

    def chunk_many(self, docs: Iterable[Document]) -> list[Chunk]:
        docs = [doc for doc in docs if doc.text.strip()]
        chunks: list[Chunk] = []
        for begin in range(0, len(docs), TOKENIZE_BATCH):
            batch = docs[begin:begin + TOKENIZE_BATCH]
            starts = token_starts_many(self.tokenizer, [d.text for d in batch])
            for doc, spans in zip(batch, self._spans_many([d.text for d in batch], starts)):
                chunks.extend(spans_to_chunks(doc, spans))
        return chunks

    def _spans_many(self, texts: list[str], starts: list[Sequence[int]]) -> list[list[Span]]:
        raise NotImplementedError


def check_sizes(name: str, max_tokens: int, **others: int | None) -> None:
    """Validate ``max_tokens`` and the limits that must lie in ``[0, max_tokens]`` (named in errors)."""
    if max_tokens < 1:
        raise InputError(f"{name} chunker: max_tokens must be at least 1, got {max_tokens}")
    for key, value in others.items():
        if value is not None and not 0 <= value <= max_tokens:
            raise InputError(f"{name} chunker: {key} must be in [0, max_tokens={max_tokens}], got {value}")
