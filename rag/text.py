"""Text units shared by the stages: token offsets, and spans of a text cut at paragraphs, sentences, lines
and words, sized in tokens.

A text is tokenised once with offsets (:func:`token_starts_many`: the character where each token starts),
a span ``[a, b)`` holds ``count_tokens(starts, a, b)`` tokens, and pieces are cut from the text by their
offsets, so nothing is tokenised twice and every piece is an exact slice of the text. The chunkers cut
documents with these; the extractive compressor cuts passages into sentences (:func:`sentence_units`).
"""

from __future__ import annotations

import bisect
import re
from array import array
from typing import Sequence

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
