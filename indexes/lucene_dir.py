"""A Lucene index directory that is replaced, never edited in place: the working directory of the Lucene
indexes (BM25, SPLADE impact indexes).

Every change builds a hard-linked clone of the current directory (Lucene never rewrites a file in place),
applies the change with Anserini's indexer or Lucene's ``IndexWriter``, commits, and only then swaps the
clone in, so a failure leaves the index as it was. Searchers are opened lazily and closed when the
directory is replaced.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Iterable

from indexes.lucene import run_java
from rag.errors import InputError

LUCENE = "lucene"  # the directory's name inside its temporary root
LOCK = "write.lock"  # Lucene's lock file: never copied or checksummed

def text_collection_args(fields: str) -> list[str]:
    """Anserini's arguments for indexing chunk text: one ``contents`` field, or title apart (multifield)."""
    args = ["-collection", "JsonCollection", "-generator", "DefaultLuceneDocumentGenerator"]
    return args + ["-fields", "title"] if fields == "multifield" else args


class LuceneDir:
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
        cls, current: "LuceneDir | None", records: list[dict[str, Any]], collection_args: list[str], threads: int
    ) -> "LuceneDir":
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
            run_java(lambda: _index_collection().main(args), f"indexing {len(records)} chunks into {batch}")
            shutil.rmtree(collection)
            if current is not None:
                _clone(current.path, target)
                run_java(lambda: _add_indexes(target, batch), f"adding {len(records)} chunks to {target}")
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

    def with_deleted(self, chunk_ids: list[str]) -> "LuceneDir":
        target = self._fresh()
        try:
            _clone(self.path, target)
            run_java(lambda: _delete_documents(target, chunk_ids), f"deleting {len(chunk_ids)} chunks from {target}")
        except BaseException:
            shutil.rmtree(target.parent, ignore_errors=True)
            raise
        new = LuceneDir(target)
        self.close()
        return new

    @classmethod
    def from_saved(cls, saved: Path) -> "LuceneDir":
        target = cls._fresh()
        try:
            _clone(saved, target)
        except BaseException:
            shutil.rmtree(target.parent, ignore_errors=True)
            raise
        return cls(target)

    @classmethod
    def open_saved(cls, saved: Path, documents: int, expected: str) -> "LuceneDir | None":
        """A working copy of the saved index ``saved``, checked to hold ``documents`` documents (``None`` when
        that is 0: an index of no documents saves no Lucene folder); ``expected`` says in the error where the
        count came from (``"the manifest records 12"``)."""
        if not documents:
            return None
        lucene = cls.from_saved(saved)
        found = lucene.documents()
        if found != documents:
            lucene.close()
            raise InputError(f"{saved}: holds {found} documents, but {expected}")
        return lucene

    def copy_to(self, destination: Path) -> list[str]:
        """Copy the committed index files (not the lock) into ``destination``; returns their names."""
        destination.mkdir(parents=True)
        names = sorted(p.name for p in self.path.iterdir() if p.is_file() and p.name != LOCK)
        for name in names:
            shutil.copyfile(self.path / name, destination / name)
        return names

    def searcher(self, k1: float, b: float) -> Any:
        if self._searcher is None:
            self._searcher = run_java(lambda: searcher_class()(str(self.path)), f"opening {self.path}")
            self._open.append(self._searcher)
        if self._searcher_params != (k1, b):
            self._searcher.set_bm25(float(k1), float(b))  # Anserini's setter, as LuceneSearcher.set_bm25
            self._searcher_params = (k1, b)
        return self._searcher

    def documents(self) -> int:
        """Live documents in the index (read with Lucene directly: no need to import pyserini for this)."""
        if self._count is None:
            self._count = int(run_java(lambda: _count_documents(self.path), f"reading {self.path}"))
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


def searcher_class() -> Any:
    """Anserini's ``SimpleSearcher``: the Java class pyserini's ``LuceneSearcher`` wraps.

    Called directly, with the calls ``LuceneSearcher.search`` / ``batch_search`` make, because importing
    ``pyserini.search.lucene`` also imports pyserini's neural encoders (torch, transformers, scikit-learn:
    6 s on an idle machine) that BM25 never uses. Results are identical (tests compare them).
    """
    from indexes.lucene import java_class

    return java_class("io.anserini.search.SimpleSearcher")


def field_boosts(title_weight: float) -> Any:
    from indexes.lucene import java_class

    boosts = java_class("java.util.HashMap")()
    boosts.put("contents", java_class("java.lang.Float")(1.0))
    boosts.put("title", java_class("java.lang.Float")(float(title_weight)))
    return boosts


def java_list(items: Iterable[str]) -> Any:
    from indexes.lucene import java_class

    result = java_class("java.util.ArrayList")()
    for item in items:
        result.add(item)
    return result


def save_lucene(lucene: "LuceneDir | None", staging: Path, name: str) -> list[str]:
    """Copy a working directory (if any) to ``staging / name``; the manifest's names of its files."""
    files = lucene.copy_to(staging / name) if lucene is not None else []
    return [f"{name}/{file}" for file in files]
