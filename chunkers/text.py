"""Shared machinery of the chunkers: token offsets, sentence units, spans, and boundary-strength segmentation.

Every chunker here works on character spans of the original text, sized by counting token starts: the text
is tokenised once with offsets (``token_starts``), a span ``[a, b)`` holds ``count_tokens(starts, a, b)``
tokens, and chunks are cut from the text by their offsets, so ``doc.text[start:end] == chunk.text`` holds
by construction and no piece of text is tokenised twice.

Model-based chunkers (semantic, perplexity, margin sampling) cut a text into *units* (sentences, or pieces
of over-long sentences and of text without sentence punctuation, see :func:`sentence_units`), score every
gap between neighbouring units, and hand the scores to :func:`segment`, which turns them into chunks under
the size limits: split groups above the hard maximum at their strongest gap, merge groups across their
weakest gaps up to a target length, and merge groups below a minimum into a neighbour.
"""

from __future__ import annotations

import bisect
import re
from array import array
from typing import Iterable, Sequence

from rag.errors import InputError
from rag.protocols import BaseChunker
from rag.types import Chunk, Document

Span = tuple[int, int]

PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
# A sentence ends with terminal punctuation (optionally closed by quotes or brackets) before whitespace;
# CJK full stops end a sentence without whitespace after them.
SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"')\]]*\s+|(?<=[。！？])")
LINE_BREAK = re.compile(r"\n\s*")
WHITESPACE_BREAK = re.compile(r"\s+")

# The recursive chunker's order of preference, and the one used to split an over-long sentence (or a
# run of text without sentence punctuation, such as code or a list) into units: lines, then words.
RECURSIVE_PATTERNS: tuple[re.Pattern[str], ...] = (PARAGRAPH_BREAK, SENTENCE_BREAK, WHITESPACE_BREAK)
UNIT_PATTERNS: tuple[re.Pattern[str], ...] = (LINE_BREAK, WHITESPACE_BREAK)

# Documents tokenised per call of the fast tokenizer in ``chunk_many``.
TOKENIZE_BATCH = 256


def chunk_id(doc_id: str, index: int) -> str:
    return f"{doc_id}#{index}"


def count_tokens(starts: Sequence[int], a: int, b: int) -> int:
    """Tokens whose first character lies in ``[a, b)``."""
    return bisect.bisect_left(starts, b) - bisect.bisect_left(starts, a)


# A text is tokenised in pieces of about this many characters. The fast tokenizer's result for one text
# holds about 150 bytes a character in Python objects (ids, masks, offset tuples): a 50 MB document read
# whole would take several GB. Pieces bound that to one piece, and the starts are kept in 4 bytes a token.
PIECE_CHARACTERS = 100_000
BATCH_CHARACTERS = 4 * PIECE_CHARACTERS
# A piece ends where a run of whitespace begins (the run opens the next piece). No tokenizer here joins
# characters across such a cut: WordPiece splits at whitespace, byte-level BPE attaches a space to the word
# after it. A run of PIECE_CHARACTERS without whitespace is cut where it is (its tokens there may differ).
PIECE_CUT = re.compile(r"(?<=\S)\s")


def token_starts_many(tokenizer: str, texts: list[str]) -> list[array]:
    """For each text, the character offsets where its tokens start (special tokens excluded), ascending."""
    from rag.tokenizers import load_tokenizer

    if not texts:
        return []
    # 4 bytes a start where the text allows it (under 4G characters), else 8
    starts = [array("I" if len(text) < 1 << 32 else "q") for text in texts]
    encode = load_tokenizer(tokenizer)

    def flush(batch: list[tuple[int, int, int]]) -> None:
        offsets = encode([texts[n][a:b] for n, a, b in batch], add_special_tokens=False,
                         return_offsets_mapping=True, return_attention_mask=False, return_token_type_ids=False)
        for (number, a, _), piece in zip(batch, offsets["offset_mapping"]):
            starts[number].extend(a + start for start, end in piece if end > start)

    # Batched calls (the Rust tokenizer is several times faster on a batch than text by text), each of at
    # most TOKENIZE_BATCH pieces and about BATCH_CHARACTERS characters.
    batch: list[tuple[int, int, int]] = []
    size = 0
    for number, text in enumerate(texts):
        for a, b in _pieces(text):
            if batch and (len(batch) == TOKENIZE_BATCH or size + b - a > BATCH_CHARACTERS):
                flush(batch)
                batch, size = [], 0
            batch.append((number, a, b))
            size += b - a
    if batch:
        flush(batch)
    return starts


def _pieces(text: str) -> list[Span]:
    """``text`` cut into spans of about PIECE_CHARACTERS, each ending where a run of whitespace begins."""
    spans: list[Span] = []
    a = 0
    while len(text) - a > PIECE_CHARACTERS:
        cut = PIECE_CUT.search(text, a + PIECE_CHARACTERS)
        b = cut.start() if cut is not None and cut.start() - a < 2 * PIECE_CHARACTERS else a + PIECE_CHARACTERS
        spans.append((a, b))
        a = b
    spans.append((a, len(text)))
    return spans


def split_span(
    text: str,
    a: int,
    b: int,
    starts: Sequence[int],
    budget: int,
    patterns: Sequence[re.Pattern[str]] = RECURSIVE_PATTERNS,
    level: int = 0,
) -> list[Span]:
    """Contiguous spans covering ``[a, b)``, each within ``budget`` tokens.

    Cuts at ``patterns[level]`` first, recursing into pieces still too long with the next pattern, and
    joins neighbouring pieces greedily while they fit; past the last pattern it cuts between tokens.
    """
    if count_tokens(starts, a, b) <= budget:
        return [(a, b)]
    if level < len(patterns):
        cuts = [m.end() for m in patterns[level].finditer(text, a, b) if a < m.end() < b]
        if not cuts:
            return split_span(text, a, b, starts, budget, patterns, level + 1)
        bounds = [a, *cuts, b]
        pieces = [split_span(text, x, y, starts, budget, patterns, level + 1) for x, y in zip(bounds, bounds[1:])]
        return merge_spans([span for piece in pieces for span in piece], starts, budget)
    # Last resort: cut between tokens, ``budget`` tokens at a time (a word longer than the cap, code).
    first, last = bisect.bisect_left(starts, a), bisect.bisect_left(starts, b)
    cuts = [starts[i] for i in range(first + budget, last, budget) if starts[i] > a]
    bounds = [a, *cuts, b]
    return list(zip(bounds, bounds[1:]))


def merge_spans(spans: list[Span], starts: Sequence[int], budget: int) -> list[Span]:
    """Join neighbouring spans greedily while the joined span stays within ``budget`` tokens."""
    merged: list[Span] = []
    for a, b in spans:
        if merged and count_tokens(starts, merged[-1][0], b) <= budget:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


def strip_span(text: str, a: int, b: int) -> Span:
    """``[a, b)`` without leading and trailing whitespace."""
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def overlap_start(text: str, starts: Sequence[int], prev_start: int, start: int, overlap: int) -> int:
    """Move ``start`` back over at most ``overlap`` tokens of the previous chunk, landing on a word start."""
    index = bisect.bisect_left(starts, start)
    earliest = bisect.bisect_left(starts, prev_start)
    for i in range(max(index - overlap, earliest), index):
        # Prefer a token that begins a word, so the overlap never starts in the middle of one.
        if starts[i] == 0 or text[starts[i] - 1].isspace():
            return starts[i]
    return start


def sentence_units(text: str, starts: Sequence[int], max_tokens: int) -> list[Span]:
    """A contiguous partition of ``text`` into sentences of at most ``max_tokens`` tokens each.

    Sentences end at terminal punctuation and at paragraph breaks; whitespace after a sentence belongs to
    it. A longer sentence (or a stretch without punctuation: code, lists, tables) is cut at line breaks,
    then at whitespace, then between tokens. Pieces holding no token (a run of characters the tokenizer
    drops) join the following unit, so every unit has at least one token when the text has any.
    """
    if not text:
        return []
    cuts = {m.end() for pattern in (PARAGRAPH_BREAK, SENTENCE_BREAK) for m in pattern.finditer(text)}
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(text)), len(text)]
    units: list[Span] = []
    for a, b in zip(bounds, bounds[1:]):
        units.extend(split_span(text, a, b, starts, max_tokens, UNIT_PATTERNS))
    return _absorb_empty(units, starts)


def _absorb_empty(units: list[Span], starts: Sequence[int]) -> list[Span]:
    merged: list[Span] = []
    pending: int | None = None  # start of a run of token-less units waiting for the next unit
    for a, b in units:
        if count_tokens(starts, a, b) == 0:
            pending = a if pending is None else pending
            continue
        merged.append((pending if pending is not None else a, b))
        pending = None
    if pending is not None:
        if merged:
            merged[-1] = (merged[-1][0], units[-1][1])
        else:
            merged.append((pending, units[-1][1]))
    return merged


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
