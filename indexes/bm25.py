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
:mod:`indexes.manifest`; BM25 adds ``fields``, ``k1``, ``b``, ``analyzer``, ``anserini`` and
``lucene_documents``), ``chunks.jsonl`` (one ``Chunk.to_dict()`` per line, in insertion order) and
``lucene/`` (the Lucene index files, each checksummed in the manifest).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Iterable, Sequence

from indexes.manifest import SavedIndex, read_manifest, verify_files, write_manifest
from rag.errors import InputError
from rag.io import atomic_directory, read_jsonl
from rag.protocols import text_batch
from rag.types import Chunk, Hit

FORMAT_VERSION = 1
KIND = "bm25"
CHUNKS = "chunks.jsonl"
LUCENE = "lucene"
FIELDS = ("flat", "multifield")
ANALYZER = "anserini-default-english (standard tokenizer, lowercase, lucene english stopwords, porter)"
LOCK = "write.lock"
_JAVA_TRIM = "".join(map(chr, range(33)))  # what Java's String.trim() removes: code points up to U+0020


class BM25Index(SavedIndex):
    """BM25 over Lucene with Anserini (pyserini's jar); ``fields`` is ``"flat"`` or ``"multifield"`` (see the module doc).

    ``k1`` and ``b`` are search-time parameters (a saved index can be loaded with others); ``fields``
    fixes the index layout. ``threads`` is used by Anserini's indexer and by batched search; ``name`` is
    the ``source`` of the hits. Constructing starts no Java: that happens on the first ``add``, ``search``
    or ``load``.
    """

    manifest_kind = KIND
    manifest_version = FORMAT_VERSION

    def __init__(
        self,
        k1: float = 0.9,
        b: float = 0.4,
        fields: str = "flat",
        title_weight: float = 1.0,
        threads: int = 1,
        name: str = "bm25",
    ) -> None:
        if fields not in FIELDS:
            raise InputError(f"bm25 index {name!r}: fields must be one of {', '.join(FIELDS)}, got {fields!r}")
        if k1 < 0 or not 0 <= b <= 1:
            raise InputError(f"bm25 index {name!r}: need k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        if title_weight < 0:
            raise InputError(f"bm25 index {name!r}: title_weight must be >= 0, got {title_weight}")
        if threads < 1:
            raise InputError(f"bm25 index {name!r}: threads must be at least 1, got {threads}")
        self.k1 = k1
        self.b = b
        self.fields = fields
        self.title_weight = title_weight
        self.threads = threads
        self.name = name
        self._chunks: dict[str, Chunk] = {}  # chunk id -> chunk, in insertion order
        self._lucene: _LuceneDir | None = None  # the working Lucene index; None while nothing is indexed

    # -- the Index protocol ------------------------------------------------------------------------

    def add(self, chunks: Iterable[Chunk]) -> None:
        """Index ``chunks`` (added as new Lucene segments). A chunk id already present is an error.

        Nothing changes unless Lucene commits the whole batch.
        """
        chunks = list(chunks)
        if not chunks:
            return
        _check_new_ids(self.name, self._chunks, chunks)
        records = [r for r in (self._record(c) for c in chunks) if r is not None]
        if records:
            self._lucene = _LuceneDir.with_added(self._lucene, records, text_collection_args(self.fields), self.threads)
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
        boosts = _field_boosts(self.title_weight) if self.fields == "multifield" else None
        chunks, name = self._chunks, self.name
        try:
            if len(queries) == 1:
                found = searcher.search(queries[0], k) if boosts is None else searcher.search_fields(queries[0], boosts, k)
                rows = [found]
            else:
                # One call for the batch: Anserini searches it with ``threads`` threads and returns a map.
                texts, qids = _java_list(queries), _java_list(str(i) for i in range(len(queries)))
                if boosts is None:
                    by_qid = searcher.batch_search(texts, qids, k, self.threads)
                else:
                    by_qid = searcher.batch_search_fields(texts, qids, k, self.threads, boosts)
                found_by_qid = {entry.getKey(): entry.getValue() for entry in by_qid.entrySet().toArray()}
                rows = [found_by_qid.get(str(i)) or () for i in range(len(queries))]
        except _java_exception() as exc:
            raise InputError(f"bm25 index {self.name!r}: Lucene failed on the queries: {_java_message(exc)}") from None
        return [[Hit(chunk=chunks[hit.docid], score=float(hit.score), source=name) for hit in row] for row in rows]

    def delete(self, chunk_ids: Iterable[str]) -> int:
        """Remove the chunks with these ids; returns how many were removed (unknown ids are skipped)."""
        found = list(dict.fromkeys(c for c in chunk_ids if c in self._chunks))
        if not found:
            return 0
        in_lucene = [c for c in found if self._record(self._chunks[c]) is not None]
        if in_lucene and self._lucene is not None:
            self._lucene = self._lucene.with_deleted(in_lucene)
        for chunk_id in found:
            del self._chunks[chunk_id]
        return len(found)

    def __len__(self) -> int:
        return len(self._chunks)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._chunks

    # -- persistence -------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write the index to ``directory`` atomically: a failed or killed save leaves what was there intact."""
        with atomic_directory(directory) as staging:
            write_chunks(staging / CHUNKS, self._chunks.values(), self.name)
            lucene_files = self._lucene.copy_to(staging / LUCENE) if self._lucene is not None else []
            write_manifest(
                staging,
                kind=KIND,
                format_version=FORMAT_VERSION,
                component=self.to_config(),
                count=len(self),
                files=[CHUNKS, *(f"{LUCENE}/{name}" for name in lucene_files)],
                fields=self.fields,
                k1=self.k1,
                b=self.b,
                analyzer=ANALYZER,
                anserini=_anserini_version(),
                lucene_documents=self._lucene.documents() if self._lucene is not None else 0,
            )

    def load(self, directory: str | Path) -> None:
        """Replace this index's contents with a saved one, after checking version, checksums and layout.

        The saved index must have this index's ``fields``; ``k1``, ``b`` and ``title_weight`` are this
        index's own (they act at search time). :meth:`open` adopts the saved configuration instead.
        """
        directory = Path(directory)
        manifest = read_manifest(directory, kind=KIND, format_version=FORMAT_VERSION)
        saved = manifest.get("fields", manifest.get("component", {}).get("params", {}).get("fields"))
        if saved != self.fields:
            raise InputError(
                f"{directory}: saved with fields={saved!r}, but this index has fields={self.fields!r}; "
                f"configure it the same way, or use BM25Index.open({str(directory)!r}) to adopt the saved config"
            )
        verify_files(directory, manifest)
        chunks = read_chunks(directory / CHUNKS)
        expected = sum(1 for c in chunks.values() if self._record(c) is not None)
        if manifest.get("count", len(chunks)) != len(chunks) or manifest.get("lucene_documents", expected) != expected:
            raise InputError(
                f"{directory}: {CHUNKS} holds {len(chunks)} chunks ({expected} indexable), the manifest counts "
                f"{manifest.get('count')} chunks and {manifest.get('lucene_documents')} Lucene documents; they must agree"
            )
        lucene = _LuceneDir.from_saved(directory / LUCENE) if expected else None
        if lucene is not None and lucene.documents() != expected:
            found = lucene.documents()
            lucene.close()
            raise InputError(f"{directory}/{LUCENE}: holds {found} documents, but {CHUNKS} has {expected} indexable chunks")
        if self._lucene is not None:
            self._lucene.close()
        self._chunks, self._lucene = chunks, lucene


    # -- helpers -----------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Start Java and load Anserini's searcher now, so that the first ``add`` or ``search`` does not pay for it."""
        _searcher_class()

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


# -- the working Lucene directory --------------------------------------------------------------------


def text_collection_args(fields: str) -> list[str]:
    """Anserini's arguments for indexing chunk text: one ``contents`` field, or title apart (multifield)."""
    args = ["-collection", "JsonCollection", "-generator", "DefaultLuceneDocumentGenerator"]
    return args + ["-fields", "title"] if fields == "multifield" else args


class _LuceneDir:
    """A private Lucene index directory, replaced (never edited in place) on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._searcher: Any = None
        self._searcher_params: tuple[float, float] | None = None
        self._count: int | None = None
        self._open: list[Any] = []  # the Java searcher, once opened, for the finalizer to close
        # Close the searcher and remove the directory when this object goes away or is closed.
        self._finalizer = weakref.finalize(self, _release, self._open, path.parent)

    @classmethod
    def _fresh(cls) -> Path:
        root = Path(tempfile.mkdtemp(prefix="specrag-bm25-"))
        return root / LUCENE

    @classmethod
    def with_added(
        cls, current: "_LuceneDir | None", records: list[dict[str, Any]], collection_args: list[str], threads: int
    ) -> "_LuceneDir":
        """A new directory holding ``current``'s documents and ``records``.

        The records are indexed into a fresh Lucene index by Anserini (whose ``-append`` flag does not
        append in 1.7.1), whose segments are then added to a clone of ``current`` with
        ``IndexWriter.addIndexes`` (no re-analysis; BM25 statistics are read across segments).
        ``collection_args`` are the Anserini arguments that say what the records are (collection class,
        fields, impact settings): :func:`text_collection_args` for text, SPLADE passes its own.
        """
        target = cls._fresh()
        try:
            work = target.parent
            collection, batch = work / "collection", (work / "batch" if current is not None else target)
            collection.mkdir()
            with (collection / "docs.jsonl").open("w", encoding="utf-8") as handle:
                for record in records:
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            args = [*collection_args, "-input", str(collection), "-index", str(batch), "-threads", str(threads), "-quiet"]
            _run_java(lambda: _index_collection().main(args), f"indexing {len(records)} chunks into {batch}")
            shutil.rmtree(collection)
            if current is not None:
                _clone(current.path, target)
                _run_java(lambda: _add_indexes(target, batch), f"adding {len(records)} chunks to {target}")
                shutil.rmtree(batch)
        except BaseException:
            shutil.rmtree(target.parent, ignore_errors=True)
            raise
        new = cls(target)
        expected = (current.documents() if current is not None else 0) + len(records)
        if new.documents() != expected:
            found = new.documents()
            new.close()
            raise InputError(f"Lucene indexed {found} documents, expected {expected}; some chunks were rejected")
        if current is not None:
            current.close()
        return new

    def with_deleted(self, chunk_ids: list[str]) -> "_LuceneDir":
        target = self._fresh()
        try:
            _clone(self.path, target)
            _run_java(lambda: _delete_documents(target, chunk_ids), f"deleting {len(chunk_ids)} chunks from {target}")
        except BaseException:
            shutil.rmtree(target.parent, ignore_errors=True)
            raise
        new = _LuceneDir(target)
        self.close()
        return new

    @classmethod
    def from_saved(cls, saved: Path) -> "_LuceneDir":
        target = cls._fresh()
        try:
            _clone(saved, target)
        except BaseException:
            shutil.rmtree(target.parent, ignore_errors=True)
            raise
        return cls(target)

    def copy_to(self, destination: Path) -> list[str]:
        """Copy the committed index files (not the lock) into ``destination``; returns their names."""
        destination.mkdir(parents=True)
        names = sorted(p.name for p in self.path.iterdir() if p.is_file() and p.name != LOCK)
        for name in names:
            shutil.copyfile(self.path / name, destination / name)
        return names

    def searcher(self, k1: float, b: float) -> Any:
        if self._searcher is None:
            self._searcher = _run_java(lambda: _searcher_class()(str(self.path)), f"opening {self.path}")
            self._open.append(self._searcher)
        if self._searcher_params != (k1, b):
            self._searcher.set_bm25(float(k1), float(b))  # Anserini's setter, as LuceneSearcher.set_bm25
            self._searcher_params = (k1, b)
        return self._searcher

    def documents(self) -> int:
        """Live documents in the index (read with Lucene directly: no need to import pyserini for this)."""
        if self._count is None:
            self._count = int(_run_java(lambda: _count_documents(self.path), f"reading {self.path}"))
        return self._count

    def close(self) -> None:
        self._searcher = None
        self._finalizer()


def _release(opened: list[Any], root: Path) -> None:
    for searcher in opened:
        try:
            searcher.close()
        except Exception:  # best effort: the directory is removed next anyway
            pass
    opened.clear()
    shutil.rmtree(root, ignore_errors=True)


def _clone(source: Path, target: Path) -> None:
    """Hard-link (or copy, across devices) a Lucene directory's files into ``target``, without the lock."""
    target.mkdir(parents=True, exist_ok=False)
    for path in source.iterdir():
        if not path.is_file() or path.name == LOCK:
            continue
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copyfile(path, target / path.name)


def _open_writer(path: Path) -> tuple[Any, Any]:
    """An ``IndexWriter`` appending to the Lucene index at ``path``, and its directory."""
    from indexes.lucene import java_class

    directory = java_class("org.apache.lucene.store.FSDirectory").open(java_class("java.io.File")(str(path)).toPath())
    config = java_class("org.apache.lucene.index.IndexWriterConfig")(
        java_class("org.apache.lucene.analysis.core.WhitespaceAnalyzer")()  # never analyses: no text is added
    )
    config.setOpenMode(java_class("org.apache.lucene.index.IndexWriterConfig$OpenMode").APPEND)
    policy = java_class("org.apache.lucene.index.TieredMergePolicy")()
    # Rewrite every segment holding a deleted document, so that BM25's statistics count live ones only.
    policy.setForceMergeDeletesPctAllowed(0.0)
    config.setMergePolicy(policy)
    try:
        return java_class("org.apache.lucene.index.IndexWriter")(directory, config), directory
    except BaseException:
        directory.close()
        raise


def _commit(path: Path, change: Any) -> None:
    """Apply ``change(writer)`` to the index at ``path`` and commit; roll back on any failure."""
    writer, directory = _open_writer(path)
    try:
        try:
            change(writer)
            writer.commit()
        except BaseException:
            writer.rollback()
            raise
        writer.close()
    finally:
        directory.close()


def _count_documents(path: Path) -> int:
    from indexes.lucene import java_class

    directory = java_class("org.apache.lucene.store.FSDirectory").open(java_class("java.io.File")(str(path)).toPath())
    try:
        reader = java_class("org.apache.lucene.index.DirectoryReader").open(directory)
        try:
            return int(reader.numDocs())
        finally:
            reader.close()
    finally:
        directory.close()


def _add_indexes(path: Path, batch: Path) -> None:
    from indexes.lucene import java_class

    source = java_class("org.apache.lucene.store.FSDirectory").open(java_class("java.io.File")(str(batch)).toPath())
    try:
        as_directory = importlib.import_module("jnius").cast("org.apache.lucene.store.Directory", source)
        _commit(path, lambda writer: writer.addIndexes(as_directory))  # varargs, spread
    finally:
        source.close()


def _delete_documents(path: Path, chunk_ids: list[str]) -> None:
    from indexes.lucene import java_class

    term, term_query = java_class("org.apache.lucene.index.Term"), java_class("org.apache.lucene.search.TermQuery")

    def change(writer: Any) -> None:
        for chunk_id in chunk_ids:
            # pyjnius takes varargs spread (not as a list) and resolves this overload (Query...) reliably.
            writer.deleteDocuments(term_query(term("id", chunk_id)))
        writer.forceMergeDeletes(True)

    _commit(path, change)


def _index_collection() -> Any:
    from indexes.lucene import java_class

    return java_class("io.anserini.index.IndexCollection")


def _searcher_class() -> Any:
    """Anserini's ``SimpleSearcher``: the Java class pyserini's ``LuceneSearcher`` wraps.

    Called directly, with the calls ``LuceneSearcher.search`` / ``batch_search`` make, because importing
    ``pyserini.search.lucene`` also imports pyserini's neural encoders (torch, transformers, scikit-learn:
    6 s on an idle machine) that BM25 never uses. Results are identical (tests compare them).
    """
    from indexes.lucene import java_class

    return java_class("io.anserini.search.SimpleSearcher")


def _field_boosts(title_weight: float) -> Any:
    from indexes.lucene import java_class

    boosts = java_class("java.util.HashMap")()
    boosts.put("contents", java_class("java.lang.Float")(1.0))
    boosts.put("title", java_class("java.lang.Float")(float(title_weight)))
    return boosts


def _java_list(items: Iterable[str]) -> Any:
    from indexes.lucene import java_class

    result = java_class("java.util.ArrayList")()
    for item in items:
        result.add(item)
    return result


def _java_exception() -> type[BaseException]:
    from indexes.lucene import java_exception

    return java_exception()


def _run_java(call: Any, what: str) -> Any:
    try:
        return call()
    except _java_exception() as exc:
        from indexes.lucene import JavaError

        raise JavaError(f"Lucene failed {what}: {_java_message(exc)}") from None


def _java_message(exc: BaseException) -> str:
    return str(getattr(exc, "innermessage", None) or getattr(exc, "classname", None) or exc)


def _anserini_version() -> str:
    from indexes.lucene import anserini_jar

    return anserini_jar().name.removeprefix("anserini-").removesuffix("-fatjar.jar")


# -- chunks on disk (shared with the bm25s backend) ----------------------------------------------------


def _check_new_ids(name: str, present: Any, chunks: list[Chunk]) -> None:
    batch: set[str] = set()
    for chunk in chunks:
        if not isinstance(chunk, Chunk):
            raise InputError(f"index {name!r}: expected Chunk objects, got {type(chunk).__name__}")
        if chunk.id in present:
            raise InputError(f"index {name!r}: chunk id {chunk.id!r} is already in the index")
        if chunk.id in batch:
            raise InputError(f"index {name!r}: chunk id {chunk.id!r} appears twice in the added chunks")
        batch.add(chunk.id)


def write_chunks(path: Path, chunks: Iterable[Chunk], name: str) -> None:
    """One ``Chunk.to_dict()`` JSON object per line."""
    with path.open("w", encoding="utf-8") as handle:
        for chunk in chunks:
            try:
                line = json.dumps(chunk.to_dict(), ensure_ascii=False)
            except TypeError as exc:
                raise InputError(f"index {name!r}: chunk {chunk.id!r} has metadata that is not JSON ({exc})") from None
            handle.write(line + "\n")


def read_chunks(path: Path) -> dict[str, Chunk]:
    """Chunk id -> chunk from a file written by :func:`write_chunks`, in file order."""
    chunks: dict[str, Chunk] = {}
    for number, record in read_jsonl(path):
        try:
            chunk = Chunk.from_dict(record)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{path}, line {number}: not a saved chunk ({exc})") from None
        if chunk.id in chunks:
            raise InputError(f"{path}, line {number}: chunk id {chunk.id!r} appears twice")
        chunks[chunk.id] = chunk
    return chunks

