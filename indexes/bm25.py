"""BM25 over a real Lucene index, built by Anserini's indexer and searched by Anserini's ``SimpleSearcher``.

    >>> from indexes.bm25 import BM25Index
    >>> from rag.types import Chunk
    >>> index = BM25Index()                                                    # cheap: no Java yet
    >>> index.add([Chunk("c1", "d1", "Aspirin thins the blood.", 0, 24)])     # doctest: +SKIP
    >>> index.search(["what thins blood?"], k=1)[0][0].chunk.id                # doctest: +SKIP
    'c1'
    >>> index.save("my-bm25"); BM25Index.open("my-bm25")                       # doctest: +SKIP

It reproduces pyserini's BEIR runs: documents go through Anserini's ``IndexCollection``
(``JsonCollection``, ``DefaultLuceneDocumentGenerator``: Anserini's default English analyzer, i.e.
Lucene's standard tokenizer, possessive removal, lower-casing, Lucene's 33 English stop words and the
Porter stemmer), and queries through ``io.anserini.search.SimpleSearcher`` with BM25 ``k1``/``b``
(0.9/0.4, pyserini's BEIR values). ``SimpleSearcher`` is the Java object inside pyserini's
``LuceneSearcher``; calling it directly gives identical hits and scores without importing
``pyserini.search.lucene``, which also loads pyserini's neural encoders (torch, transformers,
scikit-learn; 6 s or more). A batch of queries is one ``batch_search`` call, a single query one ``search``.

``fields``:

- ``"flat"``: title and text in one ``contents`` field, ``title + "\\n" + text`` (Anserini's
  ``BeirFlatCollection``); pyserini's ``beir-v1.0.0-*.flat`` indexes.
- ``"multifield"``: text in ``contents``, the title in its own ``title`` field (Anserini's
  ``BeirMultifieldCollection`` with ``-fields title``), searched as ``--fields contents=1.0 title=1.0``:
  a sum of per-field BM25 scores, the title's multiplied by ``title_weight``.

Java stays inside: :mod:`indexes.lucene` starts it, and results are :class:`~rag.types.Hit` objects
(scores are Anserini's, rounded to four decimals, ties broken by chunk id). A chunk whose indexed text is
blank (what Java's ``String.trim`` empties) is kept but not put into Lucene (Anserini's generator
skips empty documents), so it never matches; in ``"multifield"`` mode that means a chunk with a title and a
blank text.

Updates are exact, as if the index had been built in one go from the chunks it holds:

- ``add`` indexes only the new chunks (``IndexCollection`` into a fresh index; its ``-append`` flag does
  not append in Anserini 1.7.1) and adds that index's segments with ``IndexWriter.addIndexes``, without
  re-analysis; BM25's collection statistics are read across segments at search time;
- ``delete`` deletes by id with a Lucene ``IndexWriter`` and then rewrites every segment that held a deleted
  document (``forceMergeDeletes`` with no slack), so document frequencies and lengths count live chunks only.

Both work on a hard-linked clone of the working Lucene directory (Lucene never rewrites a file in place) and
swap it in only once Lucene has committed, so a failure leaves the index as it was.

On disk (format version 1) a saved index is a directory holding ``manifest.json`` (see
:mod:`rag.manifest`; BM25 adds ``fields``, ``k1``, ``b``, ``analyzer``, ``anserini`` and
``lucene_documents``), ``chunks.jsonl`` (one ``Chunk.to_dict()`` per line, in insertion order) and
``lucene/`` (the Lucene index files, each checksummed in the manifest).
"""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Any, Iterable, Sequence

from indexes.lucene import anserini_version, java_exception, java_message
from indexes.lucene_dir import LuceneDir, field_boosts, java_list, save_lucene, searcher_class, text_collection_args
from rag.errors import InputError
from rag.manifest import SavedIndex, check_new_ids, read_chunks, write_chunks
from rag.protocols import chunks_to_score, text_batch
from rag.registry import declared_params
from rag.types import Chunk, Hit

FORMAT_VERSION = 1
KIND = "bm25"
CHUNKS = "chunks.jsonl"
LUCENE = "lucene"
FIELDS = ("flat", "multifield")
ANALYZER = "anserini-default-english (standard tokenizer, lowercase, lucene english stopwords, porter)"
_JAVA_TRIM = "".join(map(chr, range(33)))  # what Java's String.trim() removes: code points up to U+0020


@declared_params
class BM25Index(SavedIndex):
    """BM25 over Lucene with Anserini (pyserini's jar); ``fields`` is ``"flat"`` or ``"multifield"`` (see the module doc).

    ``k1`` and ``b`` are search-time parameters (a saved index can be loaded with others); ``fields``
    fixes the index layout. ``threads`` is used by Anserini's indexer and by batched search; ``name`` is
    the ``source`` of the hits. Constructing starts no Java: that happens on the first ``add``, ``search``
    or ``load``.
    """

    manifest_kind = KIND
    manifest_version = FORMAT_VERSION
    saved_params = ("fields",)  # k1, b and title_weight act at search time: the loading index's own

    k1: float = 0.9
    b: float = 0.4
    fields: str = "flat"
    title_weight: float = 1.0
    threads: int = 1
    name: str = "bm25"
    _chunks: dict[str, Chunk] = field(default_factory=dict, init=False)  # chunk id -> chunk, in insertion order
    # the working Lucene index; None while nothing is indexed
    _lucene: LuceneDir | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.fields not in FIELDS:
            raise InputError(f"bm25 index {self.name!r}: fields must be one of {', '.join(FIELDS)}, got {self.fields!r}")
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise InputError(f"bm25 index {self.name!r}: need k1 >= 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}")
        if self.title_weight < 0:
            raise InputError(f"bm25 index {self.name!r}: title_weight must be >= 0, got {self.title_weight}")
        if self.threads < 1:
            raise InputError(f"bm25 index {self.name!r}: threads must be at least 1, got {self.threads}")

    # -- the Index protocol ------------------------------------------------------------------------

    def add(self, chunks: Iterable[Chunk]) -> None:
        """Index ``chunks`` (added as new Lucene segments). A chunk id already present is an error.

        Nothing changes unless Lucene commits the whole batch.
        """
        chunks = list(chunks)
        if not chunks:
            return
        check_new_ids(self.name, self._chunks, chunks)
        records = [r for r in (self._record(c) for c in chunks) if r is not None]
        if records:
            self._lucene = LuceneDir.with_added(self._lucene, records, text_collection_args(self.fields), self.threads)
        for chunk in chunks:
            self._chunks[chunk.id] = chunk

    def search(self, queries: str | Sequence[str], k: int = 10) -> list[list[Hit]]:
        """The ``k`` best chunks for each query, best first (ties by chunk id); scores are Lucene's BM25.

        One str is one query (a batch of one), not one query per character.
        """
        if k < 1:
            raise InputError(f"bm25 index {self.name!r}: k must be at least 1, got {k}")
        queries = text_batch(queries, f"bm25 index {self.name!r}")
        if not queries or self._lucene is None:
            return [[] for _ in queries]
        searcher = self._lucene.searcher(self.k1, self.b)
        boosts = field_boosts(self.title_weight) if self.fields == "multifield" else None
        chunks, name = self._chunks, self.name
        try:
            if len(queries) == 1:
                found = searcher.search(queries[0], k) if boosts is None else searcher.search_fields(queries[0], boosts, k)
                rows = [found]
            else:
                # One call for the batch: Anserini searches it with ``threads`` threads and returns a map.
                texts, qids = java_list(queries), java_list(str(i) for i in range(len(queries)))
                if boosts is None:
                    by_qid = searcher.batch_search(texts, qids, k, self.threads)
                else:
                    by_qid = searcher.batch_search_fields(texts, qids, k, self.threads, boosts)
                found_by_qid = {entry.getKey(): entry.getValue() for entry in by_qid.entrySet().toArray()}
                rows = [found_by_qid.get(str(i)) or () for i in range(len(queries))]
        except java_exception() as exc:
            raise InputError(f"bm25 index {self.name!r}: Lucene failed on the queries: {java_message(exc)}") from None
        return [[Hit(chunk=chunks[hit.docid], score=float(hit.score), source=name) for hit in row] for row in rows]

    def score_chunks(self, query: str, chunk_ids: str | Sequence[str]) -> list[float]:
        """The score :meth:`search` gives each of ``chunk_ids`` for ``query`` when it returns it, in their order.

        Lucene scores only these chunks: the query :meth:`search` sends (the same analysis, fields and
        ``title_weight``), required to hold one of their ids (a filter, which adds nothing to the score), goes
        through the same Anserini call, so the scores are Anserini's, rounded to four decimals as search
        rounds them. Anserini also lowers each of a run of equal scores by 1e-6 per place in the run, so a
        tied chunk's score can differ by that much depending on which other chunks are asked. A chunk that
        search can never return scores 0.0: one with none of the query's terms, or one that is not in Lucene
        at all (a blank text, see the module doc). An id the index does not hold is an error; one str is one id.
        """
        chunk_ids = chunks_to_score(f"bm25 index {self.name!r}", query, chunk_ids, self)
        wanted = sorted(set(chunk_ids))
        if not wanted or self._lucene is None:
            return [0.0] * len(chunk_ids)
        searcher = self._lucene.searcher(self.k1, self.b)
        try:
            boosts = field_boosts(self.title_weight) if self.fields == "multifield" else None
            text_query = bag_of_words(searcher, query, boosts)
            found = searcher.search(only_ids(text_query, wanted), len(wanted))
            scores = {hit.docid: float(hit.score) for hit in found}
        except java_exception() as exc:
            raise InputError(f"bm25 index {self.name!r}: Lucene failed on the query: {java_message(exc)}") from None
        return [scores.get(chunk_id, 0.0) for chunk_id in chunk_ids]

    def remove(self, chunk_ids: list[str]) -> None:
        """Remove these chunks (:meth:`delete` is the public call) from a clone of the Lucene index."""
        in_lucene = [c for c in chunk_ids if self._record(self._chunks[c]) is not None]
        if in_lucene and self._lucene is not None:
            self._lucene = self._lucene.with_deleted(in_lucene)
        for chunk_id in chunk_ids:
            del self._chunks[chunk_id]

    def __len__(self) -> int:
        return len(self._chunks)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._chunks

    # -- persistence -------------------------------------------------------------------------------

    def write_files(self, staging: Path) -> tuple[list[str], dict[str, Any]]:
        write_chunks(staging / CHUNKS, self._chunks.values(), self.name)
        return [CHUNKS, *save_lucene(self._lucene, staging, LUCENE)], dict(
            fields=self.fields,
            k1=self.k1,
            b=self.b,
            analyzer=ANALYZER,
            anserini=anserini_version(),
            lucene_documents=self._lucene.documents() if self._lucene is not None else 0,
        )

    def read_files(self, directory: Path, manifest: dict[str, Any]) -> None:
        chunks = read_chunks(directory / CHUNKS)
        expected = sum(1 for c in chunks.values() if self._record(c) is not None)
        if manifest.get("count", len(chunks)) != len(chunks) or manifest.get("lucene_documents", expected) != expected:
            raise InputError(
                f"{directory}: {CHUNKS} holds {len(chunks)} chunks ({expected} indexable), the manifest counts "
                f"{manifest.get('count')} chunks and {manifest.get('lucene_documents')} Lucene documents; they must agree"
            )
        lucene = LuceneDir.open_saved(directory / LUCENE, expected, f"{CHUNKS} has {expected} indexable chunks")
        if self._lucene is not None:
            self._lucene.close()
        self._chunks, self._lucene = chunks, lucene


    # -- helpers -----------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Start Java and load Anserini's searcher now, so that the first ``add`` or ``search`` does not pay for it."""
        searcher_class()

    def text_of(self, chunk: Chunk) -> str:
        """The text put into the ``contents`` field for ``chunk``."""
        if self.fields == "multifield":
            return chunk.text
        return f"{chunk.title}\n{chunk.text}" if chunk.title else chunk.text

    def _record(self, chunk: Chunk) -> dict[str, str] | None:
        contents = self.text_of(chunk)
        if not contents.strip(_JAVA_TRIM):  # Anserini skips a document whose contents String.trim() empties
            return None
        if self.fields == "multifield":
            return {"id": chunk.id, "contents": contents, "title": chunk.title}
        return {"id": chunk.id, "contents": contents}

    def lucene_directory(self) -> Path | None:
        """The working Lucene index directory (read-only for callers: benchmarks open it with pyserini)."""
        return self._lucene.path if self._lucene is not None else None


def bag_of_words(searcher: Any, query: str, boosts: Any = None) -> Any:
    """The Lucene query Anserini's ``SimpleSearcher.search`` (``boosts`` None) or ``search_fields`` builds for
    ``query``: its analyzer's terms as SHOULD clauses over ``contents``, or over each field of ``boosts``."""
    from indexes.lucene import java_class

    generator = java_class("io.anserini.search.query.BagOfWordsQueryGenerator")()
    if boosts is None:
        return generator.buildQuery("contents", searcher.get_analyzer(), query)
    return generator.buildQuery(boosts, searcher.get_analyzer(), query)


def only_ids(query: Any, chunk_ids: Sequence[str]) -> Any:
    """``query`` restricted to the documents with these ids (Anserini's ``id`` field) by a FILTER clause:
    Lucene then scores only those documents, and the filter adds nothing to their scores."""
    from indexes.lucene import java_class

    occur, bytes_ref = java_class("org.apache.lucene.search.BooleanClause$Occur"), java_class("org.apache.lucene.util.BytesRef")
    terms = java_class("java.util.ArrayList")()
    for chunk_id in chunk_ids:
        # UTF-8, as Lucene stores a string field; naming the constructor saves pyjnius trying all five (half the time)
        terms.add(bytes_ref(chunk_id.encode("utf-8"), signature="([B)V"))
    builder = java_class("org.apache.lucene.search.BooleanQuery$Builder")()
    builder.add(query, occur.MUST)
    builder.add(java_class("org.apache.lucene.search.TermInSetQuery")("id", terms), occur.FILTER)
    return builder.build()
