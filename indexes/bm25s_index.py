"""BM25 on ``bm25s`` (numpy sparse matrices, no JVM), with a tokenizer that mimics Lucene's English analyzer.

    >>> from indexes.bm25s_index import BM25sIndex
    >>> from rag.types import Chunk
    >>> index = BM25sIndex()
    >>> index.add([Chunk("c1", "d1", "Aspirin thins the blood.", 0, 24)])
    >>> index.search(["what thins blood?"], k=1)[0][0].chunk.id
    'c1'
    >>> index.tokenize("The cells' biology of Alzheimer's disease, e.g. 1,000 vs. 2.5")
    ['cell', 'biologi', 'alzheim', 'diseas', 'e.g', '1,000', 'vs', '2.5']

The same contract as :class:`indexes.bm25.BM25Index` (``"flat"`` text, ``k1``/``b`` defaulting to
pyserini's BEIR values 0.9/0.4) for users without Java, and by default the same scores: on SciFact it
gives nDCG@10 0.6789, recall@100 0.9253 and MRR@10 0.6457, Lucene's numbers to four decimals.

Tokenization is Lucene's English analysis as :mod:`rag.analysis` implements it (:func:`rag.analysis.tokenize`:
Unicode word breaks, possessives, lower case, Lucene's stop words, Porter stemming as Lucene applies it).

Scoring is bm25s's ``"lucene"`` formula. With ``lucene_lengths=True`` (the default) the score matrix is
computed as Lucene computes it (:func:`lucene_score_matrix`): document lengths pass through Lucene's
one-byte norm encoding (exact below 24 terms, about three significant bits above) and ``N``/``avgdl``
count documents with at least one term. With ``lucene_lengths=False`` bm25s's exact lengths are used
(SciFact nDCG@10 0.6777); that is also the setting for bm25s's other ``method`` values.

``add`` and ``delete`` rebuild the score matrix from each chunk's cached terms (linear in the corpus, about
0.5 s for SciFact), so scores are always those of a fresh index over the chunks held; after a ``load``
the chunks are tokenized again on the first change. The cache holds a chunk's terms as an array of 4-byte
ids into the index's own vocabulary, and with ``lucene_lengths`` the matrix is built here in NumPy from
those arrays rather than by bm25s from lists of Python ints: indexing a 50 MB document (5.4 million
terms) takes about 120 MB above its chunks instead of about 420 MB (``python -m bench.memory``). Search scores every
chunk with bm25s and keeps the ``k`` best with a score above zero, ties broken by chunk id (as Anserini
breaks them).

On disk (format version 1) a saved index is a directory holding ``manifest.json`` (see
:mod:`rag.manifest`; it adds ``k1``, ``b``, ``method``, ``stemmer``, ``stopwords``,
``lucene_lengths`` and the ``bm25s`` version),
``chunks.jsonl`` (one ``Chunk.to_dict()`` per line, in index order) and ``bm25s/`` (bm25s's own plain files:
``params.index.json``, ``vocab.index.json`` and the ``*.csc.index.npy`` arrays, saved without pickle).
"""

from __future__ import annotations

import logging
import re
from dataclasses import field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from rag.analysis import stemmer_for, tokenize
from rag.errors import InputError
from rag.lazy import require
from rag.manifest import SavedIndex, check_new_ids, read_chunks, write_chunks
from rag.protocols import chunks_to_score, text_batch
from rag.registry import declared_params
from rag.types import Chunk, Hit

FORMAT_VERSION = 1
KIND = "bm25s"
CHUNKS = "chunks.jsonl"
MODEL = "bm25s"
EXTRA = "bm25s"
METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")

# -- the index -----------------------------------------------------------------------------------------


@declared_params
class BM25sIndex(SavedIndex):
    """BM25 with ``bm25s``; see the module doc. Cheap to construct; bm25s is imported on first use.

    ``method`` is bm25s's scoring variant (``"lucene"`` by default, the formula Lucene uses); ``stemmer``
    is ``"lucene-porter"``, ``"none"`` or a PyStemmer algorithm name (``"english"`` is Snowball's
    Porter2); ``stopwords`` is ``"lucene"`` or ``"none"``; ``include_title`` indexes
    ``title + "\\n" + text`` (the flat layout); ``lucene_lengths`` uses Lucene's document statistics
    (see the module doc; needs ``method="lucene"``); ``name`` is the ``source`` of the hits.
    """

    manifest_kind = KIND
    manifest_version = FORMAT_VERSION
    # bm25s bakes these into its score matrix
    saved_params = ("k1", "b", "method", "stemmer", "stopwords", "include_title", "lucene_lengths")

    k1: float = 0.9
    b: float = 0.4
    method: str = "lucene"
    stemmer: str = "lucene-porter"
    stopwords: str = "lucene"
    include_title: bool = True
    lucene_lengths: bool = True
    name: str = "bm25s"
    _chunks: dict[str, Chunk] = field(default_factory=dict, init=False)  # chunk id -> chunk, in index (row) order
    _rows: list[Chunk] = field(default_factory=list, init=False)  # row of the bm25s matrix -> chunk
    # row -> rank of its chunk id in sorted order (tie-breaks)
    _id_rank: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), init=False)
    # The term cache: chunk id -> its terms as int32 ids into self._vocab (filled on demand after a load).
    # self._vocab only grows while chunks come and go (a deleted chunk's terms keep their ids) and is
    # compacted when most of its ids are no longer used; the model's own vocabulary holds the used terms.
    _vocab: dict[str, int] = field(default_factory=dict, init=False)
    _term_ids: dict[str, np.ndarray] = field(default_factory=dict, init=False)
    _model: Any = field(default=None, init=False)  # bm25s.BM25 over self._rows, or None while empty
    # chunk id -> row, built by the first score_chunks after a change (only its callers pay for the dict)
    _row_of: dict[str, int] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        name, method = self.name, self.method
        if method not in METHODS:
            raise InputError(f"bm25s index {name!r}: method must be one of {', '.join(METHODS)}, got {method!r}")
        if self.lucene_lengths and method != "lucene":
            raise InputError(
                f"bm25s index {name!r}: lucene_lengths=True reproduces Lucene's BM25 and needs method='lucene'; "
                f"set lucene_lengths=False to use method={method!r}"
            )
        if self.stopwords not in ("lucene", "none"):
            raise InputError(f"bm25s index {name!r}: stopwords must be 'lucene' or 'none', got {self.stopwords!r}")
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise InputError(f"bm25s index {name!r}: need k1 >= 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}")
        if self.stemmer not in ("lucene-porter", "none") and not re.fullmatch(r"[a-z_]+", self.stemmer):
            raise InputError(f"bm25s index {name!r}: unknown stemmer {self.stemmer!r}")

    # -- the Index protocol ------------------------------------------------------------------------

    def add(self, chunks: Iterable[Chunk]) -> None:
        """Add ``chunks`` and rebuild the score matrix. A chunk id already present is an error."""
        chunks = list(chunks)
        if not chunks:
            return
        check_new_ids(self.name, self._chunks, chunks)
        # Only the vocabulary changes before the rebuild succeeds: ids a failed add gave to new terms are
        # never used by a chunk, and the model leaves unused ids out.
        new_terms = {chunk.id: self._term_array(self.text_of(chunk)) for chunk in chunks}
        merged = {**self._chunks, **{chunk.id: chunk for chunk in chunks}}
        self._rebuild(merged, new_terms)

    def search(self, queries: str | Sequence[str], k: int = 10) -> list[list[Hit]]:
        """The ``k`` best chunks for each query, best first (ties by chunk id); chunks with no query term are never returned.

        One str is one query (a batch of one), not one query per character.
        """
        if k < 1:
            raise InputError(f"bm25s index {self.name!r}: k must be at least 1, got {k}")
        queries = text_batch(queries, f"bm25s index {self.name!r}")
        if self._model is None:
            return [[] for _ in queries]
        vocab, chunks, name = self._model.vocab_dict, self._rows, self.name
        results: list[list[Hit]] = []
        for query in queries:
            token_ids = [vocab[t] for t in self.tokenize(query) if t in vocab]
            if not token_ids:
                results.append([])
                continue
            scores = self._model.get_scores_from_ids(token_ids)
            rows = _top_rows(scores, k, self._id_rank)
            results.append(
                [Hit(chunk=chunks[row], score=score, source=name) for row, score in zip(rows.tolist(), scores[rows].tolist())]
            )
        return results

    def score_chunks(self, query: str, chunk_ids: str | Sequence[str]) -> list[float]:
        """The score :meth:`search` gives each of ``chunk_ids`` for ``query`` when it returns it, in their order.

        Only these chunks are scored: for each query term (in the query's order, repeats included, as bm25s
        sums them) the chunks' entries are looked up in the term's column of the score matrix, and added in
        the matrix's float type, so the scores are bm25s's own. A chunk without any of the query's terms
        scores 0.0 (or, for ``bm25l`` and ``bm25+``, the non-occurrence score every chunk gets); search returns
        only chunks scoring above 0. An id the index does not hold is an error; one str is one id.
        """
        chunk_ids = chunks_to_score(f"bm25s index {self.name!r}", query, chunk_ids, self)
        if not chunk_ids:
            return []
        model = self._model
        if model is None:
            return [0.0] * len(chunk_ids)
        vocab = model.vocab_dict
        token_ids = [vocab[t] for t in self.tokenize(query) if t in vocab]
        if not token_ids:
            return [0.0] * len(chunk_ids)  # search scores nothing for such a query
        if self._row_of is None:
            _sort_columns(model.scores)
            self._row_of = {chunk_id: row for row, chunk_id in enumerate(self._chunks)}
        rows = np.fromiter((self._row_of[c] for c in chunk_ids), dtype=np.int64, count=len(chunk_ids))
        return _row_scores(model, token_ids, rows).tolist()

    def remove(self, chunk_ids: list[str]) -> None:
        """Remove these chunks and rebuild (:meth:`delete` is the public call)."""
        found = set(chunk_ids)
        self._rebuild({cid: chunk for cid, chunk in self._chunks.items() if cid not in found}, {})

    def __len__(self) -> int:
        return len(self._chunks)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._chunks

    # -- persistence -------------------------------------------------------------------------------

    def write_files(self, staging: Path) -> tuple[list[str], dict[str, Any]]:
        bm25s = _bm25s()
        write_chunks(staging / CHUNKS, self._chunks.values(), self.name)
        files = [CHUNKS]
        if self._model is not None:
            self._model.save(str(staging / MODEL), show_progress=False, allow_pickle=False)
            files += sorted(f"{MODEL}/{p.name}" for p in (staging / MODEL).iterdir())
        return files, dict(
            k1=self.k1,
            b=self.b,
            method=self.method,
            stemmer=self.stemmer,
            stopwords=self.stopwords,
            lucene_lengths=self.lucene_lengths,
            bm25s=bm25s.__version__,
        )

    def read_files(self, directory: Path, manifest: dict[str, Any]) -> None:
        chunks = read_chunks(directory / CHUNKS)
        model = None
        if chunks:
            bm25s = _bm25s()
            model = bm25s.BM25.load(str(directory / MODEL), mmap=False, allow_pickle=False, show_progress=False)
            rows = int(model.scores["num_docs"])
            if rows != len(chunks):
                raise InputError(f"{directory}/{MODEL}: holds {rows} documents, but {CHUNKS} has {len(chunks)} chunks")
        if manifest.get("count", len(chunks)) != len(chunks):
            raise InputError(f"{directory}: the manifest counts {manifest.get('count')} chunks, {CHUNKS} holds {len(chunks)}")
        self._set_rows(chunks, model)
        self._vocab, self._term_ids = {}, {}

    # -- helpers -----------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Import bm25s and PyStemmer now."""
        _bm25s()
        stemmer_for(self.stemmer)

    def tokenize(self, text: str) -> list[str]:
        """The terms this index uses for ``text``."""
        return tokenize(text, self.stemmer, self.stopwords)

    def text_of(self, chunk: Chunk) -> str:
        """The text that is indexed for ``chunk``."""
        if self.include_title and chunk.title:
            return f"{chunk.title}\n{chunk.text}"
        return chunk.text

    def _term_array(self, text: str) -> np.ndarray:
        """The terms of ``text`` as int32 ids into ``self._vocab`` (new terms get new ids)."""
        vocab = self._vocab
        return np.fromiter((vocab.setdefault(term, len(vocab)) for term in self.tokenize(text)), dtype=np.int32)

    def _rebuild(self, chunks: dict[str, Chunk], new_terms: dict[str, np.ndarray]) -> None:
        """Build a bm25s model over ``chunks`` (all work done before any state changes but the vocabulary's growth)."""
        terms = {**self._term_ids, **new_terms}
        for chunk_id, chunk in chunks.items():
            if chunk_id not in terms:  # after a load, terms are recomputed when first needed
                terms[chunk_id] = self._term_array(self.text_of(chunk))
        ids = list(chunks)
        rows = [terms[chunk_id] for chunk_id in ids]
        model = self._model_of(rows) if ids else None
        self._set_rows(chunks, model)
        self._term_ids = {chunk_id: terms[chunk_id] for chunk_id in ids}
        if len(self._vocab) > 2 * len(model.vocab_dict if model else ()) + _VOCAB_SLACK:
            self._compact_vocabulary()

    def _model_of(self, rows: list[np.ndarray]) -> Any:
        """A bm25s model over ``rows`` (term id arrays), its vocabulary the terms that occur plus bm25s's empty token."""
        bm25s = _bm25s()
        used = self._used_terms(rows)
        column = np.cumsum(used) - 1  # vocabulary id -> the model's column
        vocab = {term: int(column[i]) for term, i in self._vocab.items() if used[i]}
        vocab[""] = len(vocab)  # bm25s's empty token: keeps the vocabulary non-empty
        model = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        if not self.lucene_lengths:
            model.index(([column[row].tolist() for row in rows], vocab), show_progress=False)
            return model
        # bm25s's own index() wants lists of Python ints (about 40 bytes a term) and builds a matrix this
        # index would replace anyway; the Lucene matrix comes straight from the arrays, and the model gets
        # the attributes index() would set.
        scores = lucene_score_matrix(rows, len(self._vocab), self.k1, self.b, model.dtype)
        ends = scores["indptr"][1:]
        scores["indptr"] = np.concatenate(([0], ends[used], ends[-1:]))  # drop unused columns, add the empty token's
        model.scores = scores
        model.vocab_dict = vocab
        model.unique_token_ids_set = set(vocab.values())
        model.nonoccurrence_array = None
        return model

    def _used_terms(self, rows: Iterable[np.ndarray]) -> np.ndarray:
        """A mask over ``self._vocab``: which ids occur in ``rows``."""
        used = np.zeros(len(self._vocab), dtype=bool)
        for row in rows:
            used[row] = True
        return used

    def _compact_vocabulary(self) -> None:
        """Renumber the term cache so that ``self._vocab`` holds only terms some chunk has."""
        used = self._used_terms(self._term_ids.values())
        new_id = (np.cumsum(used) - 1).astype(np.int32)
        self._vocab = {term: int(new_id[i]) for term, i in self._vocab.items() if used[i]}
        self._term_ids = {chunk_id: new_id[row] for chunk_id, row in self._term_ids.items()}

    def _set_rows(self, chunks: dict[str, Chunk], model: Any) -> None:
        ids = list(chunks)
        rank = np.empty(len(ids), dtype=np.int64)
        rank[sorted(range(len(ids)), key=ids.__getitem__)] = np.arange(len(ids))
        self._chunks, self._rows, self._id_rank, self._model = chunks, list(chunks.values()), rank, model
        self._row_of = None


def lucene_length(length: int) -> int:
    """A document length as Lucene's BM25 sees it: stored in one byte (``SmallFloat.intToByte4``) and
    decoded again (``byte4ToInt``); exact below 24, then about three significant bits."""
    if length < _FREE_NORMS:
        return length
    value = length - _FREE_NORMS
    if value.bit_length() < 4:  # small values are kept exactly ("subnormal" int4)
        return length
    shift = value.bit_length() - 4  # keep the top four bits (the leading one and three more)
    return _FREE_NORMS + ((value >> shift) << shift)


_FREE_NORMS = 24  # 255 - SmallFloat.longToInt4(Integer.MAX_VALUE): byte values that encode a length exactly


def lucene_score_matrix(rows: Sequence[np.ndarray], vocab_size: int, k1: float, b: float, dtype: Any) -> dict[str, Any]:
    """bm25s's score matrix (CSC: a column of document scores per term) computed as Lucene scores.

    ``rows`` holds each document's term ids (below ``vocab_size``). ``idf = ln(1 + (N - df + 0.5) / (df +
    0.5))`` and ``tf / (tf + k1 * (1 - b + b * L / avgdl))`` as in bm25s's "lucene" method, but with
    Lucene's statistics: ``L`` is :func:`lucene_length` of the document's term count, and ``N`` and
    ``avgdl`` count only documents with at least one term (Lucene's ``docCount``). On SciFact this turns
    nDCG@10 0.6777 (exact lengths) into Lucene's 0.6789. Memory: about 30 bytes per term occurrence at
    the peak, a few arrays of one entry per term occurrence or per distinct (term, document) pair.
    """
    n_docs = len(rows)
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=n_docs)
    term, doc, tf = _term_frequencies(rows, lengths)
    df = np.bincount(term, minlength=vocab_size)
    with_terms = int(np.count_nonzero(lengths))
    avgdl = lengths.sum() / with_terms if with_terms else 1.0
    unique_lengths, inverse = np.unique(lengths, return_inverse=True)
    quantised = np.array([lucene_length(int(n)) for n in unique_lengths], dtype=np.float64)[inverse]
    norm = k1 * (1 - b + b * quantised / avgdl)  # per document
    idf = np.log1p((with_terms - df + 0.5) / (df + 0.5))
    data = np.empty(term.size, dtype=dtype)
    for start in range(0, term.size, _BLOCK):  # in blocks: the float64 temporaries stay small
        part = slice(start, start + _BLOCK)
        data[part] = idf[term[part]] * tf[part] / (tf[part] + norm[doc[part]])
    indptr = np.zeros(vocab_size + 1, dtype=np.int64)
    np.cumsum(df, out=indptr[1:])
    return {"data": data, "indices": doc, "indptr": indptr, "num_docs": n_docs}


def _term_frequencies(rows: Sequence[np.ndarray], lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (term, document) pairs of ``rows``, sorted by term then document: term, document and count (int32)."""
    if not lengths.sum():
        return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32)
    tokens = np.concatenate(rows).astype(np.int32, copy=False)
    order = np.argsort(tokens, kind="stable")  # stable: documents stay in order within a term
    tokens = tokens[order]
    docs = np.repeat(np.arange(len(rows), dtype=np.int32), lengths)[order]
    del order
    boundary = np.ones(tokens.size, dtype=bool)
    boundary[1:] = (tokens[1:] != tokens[:-1]) | (docs[1:] != docs[:-1])
    starts = np.flatnonzero(boundary)
    del boundary
    term, doc, count = tokens[starts], docs[starts], np.empty(starts.size, dtype=np.int32)
    del tokens, docs  # each temporary goes as soon as it is used: this step sets the peak of a build
    np.subtract(starts[1:], starts[:-1], out=count[:-1], casting="unsafe")
    count[-1] = int(lengths.sum()) - starts[-1]
    return term, doc, count


_BLOCK = 1 << 20
_VOCAB_SLACK = 1 << 16  # compact the term cache's vocabulary only when more than half of it, and this many terms, are unused


def _bm25s() -> Any:
    module = require("bm25s", EXTRA)
    # bm25s sets its logger to DEBUG on import, which prints "Building index from IDs" on every build as
    # soon as anything configures the root logger; put it back to the default threshold.
    if logging.getLogger("bm25s").level == logging.DEBUG:
        logging.getLogger("bm25s").setLevel(logging.WARNING)
    return module


def _sort_columns(scores: dict[str, Any]) -> None:
    """Sort each column of bm25s's CSC score matrix by row, in place, unless it already is.

    Both ways this index builds a matrix (bm25s's ``index`` and :func:`lucene_score_matrix`) leave the rows
    of a column in order, and :func:`_row_scores` relies on it to find a row by bisection; a matrix from
    elsewhere is sorted once. A column holds a row at most once, so the order changes no score.
    """
    indptr, indices = scores["indptr"], scores["indices"]
    if np.isin(np.flatnonzero(np.diff(indices) <= 0) + 1, indptr).all():  # rows fall only where a column starts
        return
    column = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
    order = np.lexsort((indices, column))
    scores["indices"], scores["data"] = indices[order], scores["data"][order]


def _row_scores(model: Any, token_ids: list[int], rows: np.ndarray) -> np.ndarray:
    """What ``model.get_scores_from_ids(token_ids)[rows]`` holds, computed for those rows only.

    bm25s adds each query term's column into a zeroed array of its ``dtype``, term by term (``np.add.at``),
    then the non-occurrence scores; the same additions in the same order and type give the same floats.
    """
    scores = model.scores
    data, indices, indptr = scores["data"], scores["indices"], scores["indptr"]
    dtype = np.dtype(model.dtype)
    query = np.asarray(token_ids, dtype=np.dtype(model.int_dtype))
    result = np.zeros(len(rows), dtype=dtype)
    for token in query.tolist():
        start, end = int(indptr[token]), int(indptr[token + 1])
        if start == end:
            continue
        column = indices[start:end]
        at = np.minimum(np.searchsorted(column, rows), end - start - 1)
        found = column[at] == rows
        result[found] += data[start + at[found]]
    if model.nonoccurrence_array is not None:
        result += model.nonoccurrence_array[query].sum()
    return result


def _top_rows(scores: np.ndarray, k: int, id_rank: np.ndarray) -> np.ndarray:
    """Rows of the ``k`` highest positive scores, best first, ties by chunk id (all tied rows at the cut compete)."""
    rows = np.flatnonzero(scores > 0)
    if rows.size > k:
        values = scores[rows]
        threshold = np.partition(values, rows.size - k)[rows.size - k]
        rows = rows[values >= threshold]
    return rows[np.lexsort((id_rank[rows], -scores[rows]))[:k]]
