"""Lucene's English analysis in Python: the terms a BM25 index (and anything that scores term overlap, such
as the extractive compressor) reads from a text, without a JVM.

    >>> from rag.analysis import tokenize
    >>> tokenize("The cells' biology of Alzheimer's disease, e.g. 1,000 vs. 2.5")
    ['cell', 'biologi', 'alzheim', 'diseas', 'e.g', '1,000', 'vs', '2.5']

:func:`tokenize` follows Anserini's default English analyzer step by step:

1. words by Unicode word-break rules as Lucene's ``StandardTokenizer`` applies them to ordinary text
   (letters and digits join; ``.``, ``'`` and ``’`` join letters to letters and digits to digits, ``,``
   and ``;`` join digits, ``:`` joins letters; super- and subscript digits split words; a few emoji
   symbols such as ``©``, ``®`` and ``™`` are tokens of their own);
2. a trailing ``'s`` removed (``EnglishPossessiveFilter``), then lower-casing;
3. Lucene's 33 English stop words removed;
4. Porter stemming as Lucene's ``PorterStemFilter`` does it: PyStemmer's ``porter`` algorithm plus the
   reference C implementation's departures that Lucene keeps (words of one or two letters are not
   stemmed; ``-bli`` becomes ``-ble`` and ``-logi`` becomes ``-log`` when the stem has a consonant-vowel
   sequence).

On SciFact's 5,183 documents and 1,109 queries this gives Lucene's token stream for every text (849,043
tokens; the tests compare with the Java analyzer).

It lives in the core because several stages share it (the ``bm25s`` index, the extractive compressor's
query overlap); the stemmer comes from PyStemmer, in the ``bm25s`` extra.
"""

from __future__ import annotations

import re
from functools import lru_cache
from itertools import chain
from typing import Any, Callable

from rag.errors import InputError
from rag.lazy import require

# The extra that installs PyStemmer (with bm25s).
EXTRA = "bm25s"

# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET (also bm25s's "en" list).
LUCENE_STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these "
    "they this to was will with".split()
)

_LETTER = r"[^\W\d_]"
# Word characters, less the "other number" characters (superscripts, subscripts, fractions, circled
# digits) that Lucene's tokenizer does not treat as letters or digits.
_WORD = r"[^\W\u00b2\u00b3\u00b9\u00bc-\u00be\u2070-\u209f\u2150-\u218f\u2460-\u24ff\u2776-\u2793]"
_FORMAT = r"[\u00ad\u200b-\u200d\u2060\ufeff]"  # soft hyphen, zero-width joiners: kept inside a word
_RUN = rf"{_WORD}(?:{_WORD}|{_FORMAT})*"
_EMOJI = (
    "[\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u2199\u21a9\u21aa\u231a\u231b\u2328\u23cf\u23e9-\u23f3"
    "\u23f8-\u23fa\u24c2\u2934\u2935\u2b05-\u2b07\u2b1b\u2b1c\u2b50\u2b55\u3030\u303d\u3297\u3299"
    "\U0001f000-\U0001faff]"
)
TOKEN = re.compile(
    rf"{_RUN}(?:(?:(?<={_LETTER})[.'\u2019:\u00b7](?={_LETTER})|(?<=\d)[.,;'\u2019](?=\d)){_RUN})*|{_EMOJI}"
)
_POSSESSIVE = ("'s", "'S", "\u2019s", "\u2019S")


# -- tokenization ------------------------------------------------------------------------------------


def _consonant(word: str, i: int) -> bool:
    c = word[i]
    if c in "aeiou":
        return False
    if c == "y":
        return i == 0 or not _consonant(word, i - 1)
    return True


def _measure(word: str) -> int:
    """Porter's m: the number of vowel-consonant sequences in ``word``."""
    m, i, n = 0, 0, len(word)
    while i < n and _consonant(word, i):
        i += 1
    while i < n:
        while i < n and not _consonant(word, i):
            i += 1
        if i >= n:
            break
        m += 1
        while i < n and _consonant(word, i):
            i += 1
    return m


def _cvc(word: str) -> bool:
    n = len(word)
    return (
        n >= 3 and _consonant(word, n - 3) and not _consonant(word, n - 2) and _consonant(word, n - 1)
        and word[-1] not in "wxy"
    )


@lru_cache(maxsize=1)
def _porter() -> Any:
    return require("Stemmer", EXTRA, "PyStemmer").Stemmer("porter")


@lru_cache(maxsize=1 << 20)
def lucene_porter(word: str) -> str:
    """Stem a lower-cased word as Lucene's ``PorterStemFilter`` does (see the module doc)."""
    if len(word) <= 2:
        return word
    stem = _porter().stemWord(word)
    # Snowball's "porter" is the published algorithm; Lucene's is the reference C code, which maps
    # -bli to -ble (then step 4 may drop -ible and step 5 a final e) and -logi to -log, if m > 0.
    if stem.endswith("logi") and _measure(stem[:-4]) > 0:
        return stem[:-1]
    if stem.endswith("bli") and not stem.endswith("abli") and _measure(stem[:-3]) > 0:
        stem = stem[:-1] + "e"
        if stem.endswith("ible") and _measure(stem[:-4]) > 1:
            stem = stem[:-4]
        if stem.endswith("e"):
            m = _measure(stem[:-1])
            if m > 1 or (m == 1 and not _cvc(stem[:-1])):
                stem = stem[:-1]
        if stem.endswith("ll") and _measure(stem) > 1:
            stem = stem[:-1]
    return stem


@lru_cache(maxsize=64)
def stemmer_for(name: str) -> Callable[[str], str]:
    """The stemmer called ``name``: ``lucene-porter`` (Lucene's Porter), ``none``, or a PyStemmer algorithm."""
    if name == "lucene-porter":
        return lucene_porter
    if name == "none":
        return lambda word: word
    module = require("Stemmer", EXTRA, "PyStemmer")
    if name not in module.algorithms():
        raise InputError(
            f"unknown stemmer {name!r}; use 'lucene-porter', 'none' or a PyStemmer algorithm "
            f"({', '.join(module.algorithms())})"
        )
    return lru_cache(maxsize=1 << 20)(module.Stemmer(name).stemWord)


def tokenize(text: str, stemmer: str = "lucene-porter", stopwords: str = "lucene") -> list[str]:
    """The index terms of ``text`` (see the module doc): ``stemmer`` as :func:`stemmer_for` names them,
    ``stopwords`` ``"lucene"`` (Lucene's English list) or anything else for none."""
    return _analyzer(stemmer, stopwords)(text)


# Spans that exact tokens never cross: runs of word characters joined by any joiner, and emoji.
_SPAN = re.compile(rf"[\w{_FORMAT[1:-1]}]+(?:[.,;:'\u2019\u00b7][\w{_FORMAT[1:-1]}]+)*|{_EMOJI}")
_CACHE_LIMIT = 1 << 20


class _Analyzer(dict):
    """Text to terms for one stemmer and stop-word choice; as a dict it caches the terms of each distinct span."""

    def __init__(self, stemmer: str, stopwords: str) -> None:
        super().__init__()
        self.stem = stemmer_for(stemmer)  # an unknown stemmer fails here, naming the known ones
        self.stop = LUCENE_STOPWORDS if stopwords == "lucene" else frozenset()

    def __call__(self, text: str) -> list[str]:
        # A cheap pattern finds the spans; each distinct span is split exactly, filtered and stemmed once
        # (``__missing__``), as most spans are plain words seen many times.
        if len(self) > _CACHE_LIMIT:
            self.clear()
        return list(chain.from_iterable(map(self.__getitem__, _SPAN.findall(text.lower()))))

    def __missing__(self, span: str) -> tuple[str, ...]:
        terms = self[span] = self.terms(span)
        return terms

    def terms(self, span: str) -> tuple[str, ...]:
        terms = []
        for token in TOKEN.findall(span):
            if token.endswith(_POSSESSIVE):
                token = token[:-2]
            if token.strip("_") and token not in self.stop:
                terms.append(self.stem(token))
        return tuple(terms)


@lru_cache(maxsize=16)
def _analyzer(stemmer: str, stopwords: str) -> _Analyzer:
    return _Analyzer(stemmer, stopwords)
