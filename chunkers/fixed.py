"""Fixed-size baselines: windows of N tokens, and whole sentences packed up to N tokens.

Both size chunks in tokens of ``tokenizer`` (a model pack name, local path or hub id; by default the dense
encoder's, so that chunks fit its window) and never exceed ``max_tokens``.

    >>> from chunkers.fixed import SentenceChunker, TokenChunker
    >>> TokenChunker(max_tokens=128, overlap_tokens=16).chunk(doc)        # doctest: +SKIP
    >>> SentenceChunker(max_tokens=128, overlap_sentences=1).chunk(doc)   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Sequence

from chunkers.text import SpanChunker, check_sizes
from rag.errors import InputError
from rag.registry import declared_params
from rag.text import Span, count_tokens, sentence_units


@declared_params
class TokenChunker(SpanChunker):
    """Consecutive windows of ``max_tokens`` tokens; each window repeats the last ``overlap_tokens`` of
    the previous one. Cuts fall between tokens, wherever they are (inside a word for sub-word tokenizers):
    this is the fixed-size baseline, blind to the text's structure."""

    max_tokens: int = 200
    overlap_tokens: int = 0
    tokenizer: str = "minilm"

    def __post_init__(self) -> None:
        check_sizes("fixed", self.max_tokens)
        if not 0 <= self.overlap_tokens < self.max_tokens:
            raise InputError(f"fixed chunker: overlap_tokens must be in [0, max_tokens), got {self.overlap_tokens} "
                             f"with max_tokens={self.max_tokens}")

    def _spans_many(self, texts: list[str], starts: list[Sequence[int]]) -> list[list[Span]]:
        return [self._spans(text, s) for text, s in zip(texts, starts)]

    def _spans(self, text: str, starts: Sequence[int]) -> list[Span]:
        n, size, step = len(starts), self.max_tokens, self.max_tokens - self.overlap_tokens
        if n == 0:
            return [(0, len(text))]  # characters the tokenizer drops entirely: one token-less chunk
        spans: list[Span] = []
        for first in range(0, n, step):
            # A window runs from its first token's start to the next window-end token's start, so the
            # characters between tokens (spaces, dropped characters) stay covered.
            a = 0 if first == 0 else starts[first]
            b = len(text) if first + size >= n else starts[first + size]
            spans.append((a, b))
            if first + size >= n:
                break
        return spans


@declared_params
class SentenceChunker(SpanChunker):
    """Whole sentences packed greedily up to ``max_tokens``; the next chunk starts with the last
    ``overlap_sentences`` sentences of the previous one (fewer when they would not fit with a new one).

    Sentences end at terminal punctuation or paragraph breaks; a sentence longer than ``max_tokens`` (or
    text without punctuation, such as code) is cut at line breaks, then words, then tokens.
    """

    max_tokens: int = 200
    overlap_sentences: int = 0
    tokenizer: str = "minilm"

    def __post_init__(self) -> None:
        check_sizes("sentence", self.max_tokens)
        if self.overlap_sentences < 0:
            raise InputError(f"sentence chunker: overlap_sentences must be at least 0, got {self.overlap_sentences}")

    def _spans_many(self, texts: list[str], starts: list[Sequence[int]]) -> list[list[Span]]:
        return [self._spans(text, s) for text, s in zip(texts, starts)]

    def _spans(self, text: str, starts: Sequence[int]) -> list[Span]:
        units = sentence_units(text, starts, self.max_tokens)

        def size(i: int, j: int) -> int:
            return count_tokens(starts, units[i][0], units[j - 1][1])

        spans: list[Span] = []
        i, n = 0, len(units)
        while i < n:
            j = i + 1
            while j < n and size(i, j + 1) <= self.max_tokens:
                j += 1
            spans.append((units[i][0], units[j - 1][1]))
            if j >= n:
                break
            # Repeat up to overlap_sentences sentences, always moving forward and always fitting sentence j.
            k = max(j - self.overlap_sentences, i + 1)
            while k < j and size(k, j + 1) > self.max_tokens:
                k += 1
            i = k
        return spans
