"""Reading documents from disk and writing artefacts atomically.

Readers fail on the first bad record with the file and line at fault; writers build into a temporary
sibling and rename it into place, so a crash never leaves a half-written artefact where a good one was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from rag.errors import InputError
from rag.types import Document


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; bad JSON or bytes name file and line."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; expected a JSONL file")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{path}, line {number}: not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}, line {number}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def read_documents(path: str | Path, *, allow_empty: bool = False) -> list[Document]:
    """Documents from a JSONL file with ``text`` and optional ``_id``/``id``, ``title``, ``metadata``.

    This is the BEIR ``corpus.jsonl`` layout. A record without text, a duplicate id or an empty file is
    an error that names the file, the line and the document id.
    """
    documents: list[Document] = []
    seen: dict[str, int] = {}
    for number, record in read_jsonl(path):
        doc_id = str(record.get("_id", record.get("id", "")) or "")
        text = record.get("text")
        where = f"{path}, line {number}" + (f" (document {doc_id!r})" if doc_id else "")
        if not isinstance(text, str):
            raise InputError(f"{where}: document has no 'text' string")
        title = record.get("title") or ""
        if not isinstance(title, str):
            raise InputError(f"{where}: 'title' must be a string")
        if not text.strip() and not title.strip():
            raise InputError(f"{where}: document has empty text")
        metadata = record.get("metadata") or {}
        doc = Document(text=text, id=doc_id, title=title, metadata=metadata)
        if doc.id in seen:
            raise InputError(f"{where}: duplicate document id {doc.id!r} (first on line {seen[doc.id]})")
        seen[doc.id] = number
        documents.append(doc)
    if not documents and not allow_empty:
        raise InputError(f"{path}: the corpus is empty (no documents)")
    return documents


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it replaces ``target`` in one rename.

    If the block raises, the temporary directory is removed and ``target`` is left exactly as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))
