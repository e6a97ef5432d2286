"""Reading documents from disk and writing artefacts atomically.

Readers fail on the first bad record with the file and line at fault; writers build into a temporary
sibling and swap it into place in one atomic step, so a crash never leaves a half-written artefact where a
good one was, nor no artefact at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from rag.errors import InputError, SaveError
from rag.types import Document

logger = logging.getLogger(__name__)


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
                # a byte-order mark opens files from some Windows tools; it is no part of the first record
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
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
        raw_id = record.get("_id", record.get("id", ""))
        raw_id = "" if raw_id is None else raw_id  # null, like a missing id: one is made from the text
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            raise InputError(f"{path}, line {number}: a document id must be a string or an integer, "
                             f"got {type(raw_id).__name__} {raw_id!r:.60}")
        doc_id = str(raw_id)
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
        if not isinstance(metadata, dict):
            raise InputError(f"{where}: 'metadata' must be a JSON object, got {type(metadata).__name__}")
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


# Saving a directory (an index, a pipeline, a model pack, a run) is a commit: after a kill at any instant the
# path holds either the complete old version or the complete new one. The new version is built in a hidden
# staging sibling, its files and folders fsynced, then swapped with the old one in a single renameat2
# RENAME_EXCHANGE (Linux 3.15+, glibc 2.28+), so the path never stops existing; the swapped-out old version is
# removed afterwards. Where the exchange is unsupported (another OS, a filesystem without it) the old version
# is renamed aside and the new one renamed in; a kill between the two renames leaves no directory at the path,
# and recover_directory (run by every later save and by index loads) renames the old version back. A lock
# file beside the target serialises writers; everything a killed save left (staging and old folders) is
# removed by the next save or load, which are the only ones that could find it.

AT_FDCWD = -100
RENAME_EXCHANGE = 2


def _leftovers(target: Path, tag: str) -> list[Path]:
    """Folders a save of ``target`` made beside it (``tag``: ``tmp`` for staging, ``old`` for swapped out)."""
    prefix = f".{target.name}.{tag}-"
    if not target.parent.is_dir():
        return []

    def age(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:  # removed by a writer since the listing (a reader looks without the lock)
            return 0.0

    return sorted((p for p in target.parent.iterdir() if p.name.startswith(prefix)), key=age)


def _sync_directory(path: Path) -> None:
    """fsync a directory, so that the renames and creations inside it survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (a commit must not point at data still in the page cache)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _sync_directory(Path(folder))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the system cannot.

    Python's ``os`` has no renameat2 and no maintained package wraps it, so this calls glibc's through ctypes.
    """
    import ctypes
    import errno

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc, or a glibc older than 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


_HELD = threading.local()  # lock files this thread holds, with their nesting depth


@contextmanager
def writer_lock(target: str | Path, *, wait: bool = True, notify: Callable[[str], None] | None = None) -> Iterator[bool]:
    """Hold the exclusive writer lock of ``target`` (the file ``.NAME.lock`` beside it) for the block.

    Yields True once held. If another process holds it, ``notify`` (default: a logged warning) is told which
    process, and the call waits (``wait=True``) or yields False at once (``wait=False``). The operating system
    drops the lock when its holder exits, even by SIGKILL, so a killed writer never blocks later ones. A
    thread that already holds the lock enters again at once (a pack fetch holds it while it saves the pack).
    """
    target = Path(target)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): writers are not serialised there
        yield True
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = str((target.parent / f".{target.name}.lock").resolve())
    held = _HELD.__dict__.setdefault("paths", {})
    if held.get(lock_path):
        held[lock_path] += 1
        try:
            yield True
        finally:
            held[lock_path] -= 1
        return
    try:
        fd, writable = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644), True
    except PermissionError:  # a lock file another user created: flock needs only read access
        fd, writable = os.open(lock_path, os.O_RDONLY), False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("utf-8", "replace").strip() or "unknown"
            if not wait:
                yield False
                return
            message = f"{target} is being written by process {holder}; waiting for it to finish"
            (notify or logger.warning)(message)
            fcntl.flock(fd, fcntl.LOCK_EX)
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        held[lock_path] = 1
        try:
            yield True
        finally:
            held.pop(lock_path, None)
    finally:
        os.close(fd)  # releases the lock


def _recover(target: Path) -> None:
    """With the writer lock held: put back an old version a killed save left aside, remove the leftovers."""
    if not target.exists():
        olds = _leftovers(target, "old")
        if olds:  # an old folder exists only between the two renames of the fallback: it is complete
            os.replace(olds[-1], target)
            logger.warning("%s: restored the version that an interrupted save had moved aside", target)
            _sync_directory(target.parent)
    for leftover in _leftovers(target, "tmp") + _leftovers(target, "old"):
        shutil.rmtree(leftover, ignore_errors=True)


def recover_directory(target: str | Path) -> None:
    """Make ``target`` loadable after a killed save and remove what that save left beside it.

    Called by loaders before they read. If a writer is busy with ``target`` right now, nothing is touched.
    """
    target = Path(target)
    if not target.parent.is_dir() or not (_leftovers(target, "tmp") or _leftovers(target, "old")):
        return
    with writer_lock(target, wait=False) as held:
        if held:
            _recover(target)


def _inside_staging(target: Path) -> bool:
    """Whether ``target`` lies in the staging directory of a save in progress (a nested save)."""
    return any(re.match(r"^\..+\.tmp-", part.name) for part in target.resolve().parents)


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a staging directory beside ``target``; on success it becomes ``target`` in one atomic commit.

    If the block raises, the staging directory is removed and ``target`` is left exactly as it was. A kill
    at any instant leaves the complete old or the complete new version at ``target`` (see the comment above).
    Writers of one ``target`` take turns (:func:`writer_lock`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if _inside_staging(target):
        # A part of a save in progress (a hybrid's member, a pipeline's index): the staging directory belongs
        # to the writer that holds the outer lock and is committed, fsync included, as a whole.
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        return
    with writer_lock(target):
        _recover(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            yield staging
            _sync_tree(staging)
            swapped_out = _commit(staging, target)
        except OSError as exc:  # disk full, permissions, I/O: the old version is still there, say so
            shutil.rmtree(staging, ignore_errors=True)
            where = f"{os.fsdecode(exc.filename)}: " if exc.filename is not None else ""
            raise SaveError(f"{target}: saving failed ({where}{exc.strerror or exc}); "
                            f"the version that was there is unchanged", errno=exc.errno) from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        # Committed: an error from here on is not "unchanged", so it is not reported as a failed save.
        _sync_directory(target.parent)
        if swapped_out is not None:
            shutil.rmtree(swapped_out, ignore_errors=True)


def _commit(staging: Path, target: Path) -> Path | None:
    """Make the complete, synced ``staging`` directory ``target``; returns where the old version now is.

    See the comment above :func:`atomic_directory`. If this raises, ``target`` holds the old version.
    """
    if target.exists() and _exchange(staging, target):
        return staging  # the exchange left the old version in the staging folder
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
    try:
        os.replace(staging, target)
    except OSError:
        if old is not None:
            os.replace(old, target)  # put the old version back before reporting
        raise
    return old


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
