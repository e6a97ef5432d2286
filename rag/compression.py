"""What every compressor shares: the token budget, the pieces of text it works on, and the Context it returns.

A compressor reads the hits' chunk texts and keeps some character spans of them. Everything is counted in
tokens of one tokenizer (the generator's: ``qwen2.5-0.5b`` by default), and the budget is either a
``rate`` (kept / original tokens) or ``target_tokens``; the ``budget_tokens`` argument of
:meth:`BaseCompressor.compress` (the pipeline's) overrides both.

Subclasses implement :meth:`BaseCompressor.select`: given the query, :class:`Piece` objects (a chunk and
the spans of it still in play) and a budget in tokens, return the pieces with fewer spans. They score
*units* (sentences, words) inside the spans and keep the best under the budget with :func:`greedy`. The
base class turns the kept spans into :class:`CompressedPassage` objects, whose ``spans`` say exactly
which characters of the chunk survived, so citations (and offsets into the document) survive compression:

    passage.text == " ".join(passage.chunk.text[a:b] for a, b in passage.spans)

The base class then checks the budget with the tokenizer itself and, when joining spans changed the count,
tightens the budget and selects again: a result never holds more than the budget.
"""

from __future__ import annotations

import bisect
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Sequence

from rag.errors import InputError
from rag.registry import Component
from rag.text import Span, strip_span
from rag.types import Chunk, Context, Hit, Passage


DEFAULT_RATE = 0.5
DEFAULT_TOKENIZER = "qwen2.5-0.5b"
JOIN = " "
WORD = re.compile(r"\S+")


@dataclass(frozen=True, slots=True)
class CompressedPassage(Passage):
    """A passage cut from its chunk: ``text`` is the kept ``spans`` of ``chunk.text`` joined by one space.

    ``spans`` are sorted, disjoint ``(start, end)`` character offsets into ``chunk.text`` (add
    ``chunk.start`` for offsets into the document).
    """

    spans: tuple[Span, ...] = ()


@dataclass(frozen=True, slots=True)
class CompressedContext(Context):
    """A compressor's result: the passages plus the budget it worked to and who produced it.

    ``rate`` is kept / original tokens (1.0 for an empty input).
    """

    budget_tokens: int = 0
    compressor: str = ""

    @property
    def rate(self) -> float:
        return self.kept_tokens / self.original_tokens if self.original_tokens else 1.0

    @property
    def text(self) -> str:
        """Every passage's text, separated by blank lines (what a generator reads, without numbering)."""
        return "\n\n".join(p.text for p in self.passages)


@dataclass(frozen=True)
class Piece:
    """A hit's chunk and the character spans of its text still in play (sorted, disjoint, stripped)."""

    chunk: Chunk
    score: float
    spans: tuple[Span, ...]

    def text(self) -> str:
        return JOIN.join(self.chunk.text[a:b] for a, b in self.spans)


@dataclass(frozen=True)
class Unit:
    """A scored span (a sentence, a word) of piece ``piece``; ``tokens`` is its length in budget tokens."""

    piece: int
    start: int
    end: int
    score: float
    tokens: int


class TokenCounter:
    """Counts tokens of one tokenizer: whole texts, and spans of a text through its token starts."""

    def __init__(self, tokenizer: str) -> None:
        self.name = tokenizer

    @property
    def tokenizer(self) -> Any:
        from rag.tokenizers import load_tokenizer

        return load_tokenizer(self.name)

    def count(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def starts(self, texts: Sequence[str]) -> list[list[int]]:
        """Per text, where each token's first non-space character lies (so a word owns its leading-space token)."""
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        return [token_starts(text, offsets) for text, offsets in zip(texts, encoded["offset_mapping"])]


def token_starts(text: str, offsets: Sequence[tuple[int, int]]) -> list[int]:
    """Sorted first non-space character of every token (a whitespace-only token keeps its own start)."""
    starts = []
    for s, e in offsets:
        if e <= s:
            continue
        while s < e - 1 and text[s].isspace():
            s += 1
        starts.append(s)
    starts.sort()
    return starts


def count_in(starts: Sequence[int], a: int, b: int) -> int:
    """Tokens whose (adjusted) start lies in ``[a, b)``."""
    return bisect.bisect_left(starts, b) - bisect.bisect_left(starts, a)


def merge_spans(text: str, spans: Sequence[Span]) -> tuple[Span, ...]:
    """Sorted spans with neighbours joined when only white space separates them (the text between is kept)."""
    merged: list[Span] = []
    for a, b in sorted(spans):
        if b <= a:
            continue
        if merged and (a <= merged[-1][1] or not text[merged[-1][1]:a].strip()):
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return tuple(merged)


def words(text: str, spans: Sequence[Span]) -> list[Span]:
    """The words (runs of non-space characters) inside ``spans``; a word is never split."""
    return [(m.start(), m.end()) for a, b in spans for m in WORD.finditer(text, a, b)]


def greedy(units: Sequence[Unit], budget: int) -> list[int]:
    """Indices of the units kept: best score first, each one that still fits the budget (then source order).

    Ties keep the earlier unit. A unit longer than what is left is skipped, and smaller ones after it may
    still fit, so the budget is filled closely.
    """
    order = sorted(range(len(units)), key=lambda i: (-units[i].score, i))
    left, chosen = budget, []
    for i in order:
        if units[i].tokens <= left:
            chosen.append(i)
            left -= units[i].tokens
    return sorted(chosen)


def keep_units(pieces: Sequence[Piece], units: Sequence[Unit], chosen: Sequence[int]) -> list[Piece]:
    """The pieces holding only the chosen units (pieces left with nothing are dropped)."""
    by_piece: dict[int, list[Span]] = {}
    for i in chosen:
        by_piece.setdefault(units[i].piece, []).append((units[i].start, units[i].end))
    kept = []
    for number, piece in enumerate(pieces):
        if number in by_piece:
            kept.append(Piece(piece.chunk, piece.score, merge_spans(piece.chunk.text, by_piece[number])))
    return kept


def resolve_budget(original: int, rate: float | None, target_tokens: int | None, budget_tokens: int | None) -> int:
    """Tokens allowed: ``budget_tokens`` if given, else ``target_tokens``, else ``rate`` x original (floor)."""
    if budget_tokens is not None:
        return max(int(budget_tokens), 0)
    if target_tokens is not None:
        return target_tokens
    return math.floor((DEFAULT_RATE if rate is None else rate) * original + 1e-9)


def check_budget_params(name: str, rate: float | None, target_tokens: int | None) -> None:
    if rate is not None and target_tokens is not None:
        raise InputError(f"{name} compressor: give rate or target_tokens, not both (got {rate} and {target_tokens})")
    if rate is not None and not 0 <= rate <= 1:
        raise InputError(f"{name} compressor: rate is kept/original tokens and must lie in [0, 1], got {rate}")
    if target_tokens is not None and target_tokens < 0:
        raise InputError(f"{name} compressor: target_tokens must be at least 0, got {target_tokens}")


class BaseCompressor(Component):
    """Compressors implement :meth:`select`; budgets, timing, counting and the Context come from here.

    Subclasses keep ``rate``, ``target_tokens`` and ``tokenizer`` as attributes (constructor arguments of
    the same names). With neither ``rate`` nor ``target_tokens`` the rate is :data:`DEFAULT_RATE`.
    """

    role = "compressor"
    rate: float | None = None
    target_tokens: int | None = None
    tokenizer: str = DEFAULT_TOKENIZER
    # Re-selections with a tighter budget before falling back to dropping words from the end.
    MAX_RETRIES = 4

    @property
    def counter(self) -> TokenCounter:
        return TokenCounter(self.tokenizer)

    def compress(self, query: str, hits: list[Hit], budget_tokens: int | None = None) -> CompressedContext:
        """Keep the parts of ``hits`` that matter for ``query`` within the budget (see the module doc)."""
        started = time.perf_counter()
        if not isinstance(query, str):
            raise InputError(f"{self._name()} compressor: the query must be a string, got {type(query).__name__}")
        pieces = pieces_of(hits)
        counter = self.counter
        original = sum(counter.count([h.chunk.text for h in hits]))
        budget = resolve_budget(original, self.rate, self.target_tokens, budget_tokens)
        kept = self.fit(query, pieces, budget, counter) if pieces and budget > 0 else []
        passages = tuple(
            CompressedPassage(chunk=p.chunk, text=p.text(), score=p.score, spans=p.spans) for p in kept if p.spans
        )
        kept_tokens = sum(counter.count([p.text for p in passages]))
        return CompressedContext(
            passages=passages, original_tokens=original, kept_tokens=kept_tokens,
            seconds=time.perf_counter() - started, budget_tokens=budget, compressor=self._name(),
        )

    def select(self, query: str, pieces: list[Piece], budget: int, counter: TokenCounter) -> list[Piece]:
        """The pieces with only the spans kept, aiming at ``budget`` tokens of ``counter``."""
        raise NotImplementedError

    def fit(self, query: str, pieces: list[Piece], budget: int, counter: TokenCounter) -> list[Piece]:
        """:meth:`select`, re-aimed lower until the joined spans are within ``budget`` (then trimmed)."""
        aim = budget
        for _ in range(self.MAX_RETRIES + 1):
            kept = self.select(query, pieces, aim, counter)
            total = sum(counter.count([p.text() for p in kept]))
            if total <= budget:
                return kept
            aim -= total - budget  # joining spans made more tokens than the units' sum; aim lower
            if aim <= 0:
                break
        return _trim(kept, budget, counter)

    def _name(self) -> str:
        try:
            return self.to_config()["type"]
        except Exception:  # an unregistered subclass (tests, notebooks) still compresses
            return type(self).__name__


def pieces_of(hits: Sequence[Hit]) -> list[Piece]:
    pieces = []
    for hit in hits:
        if not isinstance(hit, Hit):
            raise InputError(f"compressor: expected Hit objects, got {type(hit).__name__}")
        a, b = strip_span(hit.chunk.text, 0, len(hit.chunk.text))
        if b > a:
            pieces.append(Piece(hit.chunk, hit.score, ((a, b),)))
    return pieces


def _trim(pieces: list[Piece], budget: int, counter: TokenCounter) -> list[Piece]:
    """Last resort: drop words from the end until the joined texts fit (rarely needed)."""
    pieces = list(pieces)
    while pieces and sum(counter.count([p.text() for p in pieces])) > budget:
        last = pieces[-1]
        kept = words(last.chunk.text, last.spans)[:-1]
        if kept:
            pieces[-1] = Piece(last.chunk, last.score, merge_spans(last.chunk.text, kept))
        else:
            pieces.pop()
    return pieces


def units_in(
    pieces: Sequence[Piece], spans_of: Any, counter: TokenCounter
) -> tuple[list[tuple[int, int, int]], list[int]]:
    """``(piece, start, end)`` for every unit that ``spans_of(text, spans)`` finds in each piece, and its tokens."""
    texts = [p.chunk.text for p in pieces]
    starts = counter.starts(texts)
    found, tokens = [], []
    for number, (piece, text_starts) in enumerate(zip(pieces, starts)):
        for a, b in spans_of(piece.chunk.text, piece.spans):
            a, b = strip_span(piece.chunk.text, a, b)
            if b > a:
                found.append((number, a, b))
                tokens.append(max(count_in(text_starts, a, b), 1))
    return found, tokens
