"""The manifest every saved index carries, and the checks run before an index is loaded.

A saved index is a directory of plain files plus ``manifest.json``::

    {
      "format_version": 1,              # of this index kind's on-disk layout
      "kind": "dense",                  # which index wrote it
      "component": {"type": ..., "params": ...},   # the config that rebuilds the component
      "count": 5183,                    # items in the index
      "files": {"vectors.faiss": {"sha256": "...", "bytes": 123}, ...},
      "created_at": "2025-01-01T12:00:00+00:00",
      "specrag_version": "0.1.0",
      ...                               # kind-specific fields (model, dimension, metric, ...)
    }

Write the data files first, then :func:`write_manifest` (it checksums them), all inside
:func:`rag.io.atomic_directory`; load with :func:`read_manifest` (layout, kind, version) and
:func:`verify_files` (checksums) before reading anything else.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from rag import __version__
from rag.errors import FormatVersionError, InputError, SpecragError
from rag.io import atomic_write_json, read_jsonl, recover_directory, sha256_file
from rag.registry import Component, build, name_of
from rag.types import Chunk

MANIFEST = "manifest.json"
RESERVED = frozenset({"format_version", "kind", "component", "count", "files", "created_at", "specrag_version"})


class ChecksumError(InputError):
    """A file of a saved index whose bytes differ from the checksum in its manifest."""


def write_manifest(
    directory: str | Path,
    *,
    kind: str,
    format_version: int,
    component: Mapping[str, Any],
    count: int,
    files: Iterable[str],
    **fields: Any,
) -> dict[str, Any]:
    """Checksum ``files`` (names inside ``directory``) and write ``manifest.json``; returns the manifest."""
    directory = Path(directory)
    clash = RESERVED & set(fields)
    if clash:
        raise ValueError(f"manifest fields {sorted(clash)} are reserved; use other names for kind-specific data")
    manifest: dict[str, Any] = {
        "format_version": format_version,
        "kind": kind,
        "component": dict(component),
        "count": count,
        "files": {name: _describe(directory / name) for name in files},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "specrag_version": __version__,
        **fields,
    }
    atomic_write_json(directory / MANIFEST, manifest)
    return manifest


def read_manifest(directory: str | Path, *, kind: str, format_version: int) -> dict[str, Any]:
    """The manifest of a saved ``kind`` index, after checking that it is one, in ``format_version``."""
    directory = Path(directory)
    recover_directory(directory)  # a save killed mid-commit: put the old version back, clear its leftovers
    path = directory / MANIFEST
    if not directory.is_dir():
        raise InputError(f"{directory}: no such directory (expected a saved {kind} index)")
    if not path.is_file():
        raise InputError(f"{directory}: no {MANIFEST}; not a saved specrag index (save one with index.save(dir))")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a valid JSON manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    missing = sorted({"format_version", "kind", "files"} - set(manifest))
    if missing:
        raise InputError(f"{path}: manifest lacks {missing}")
    if manifest["kind"] != kind:
        raise InputError(f"{directory}: holds a {manifest['kind']!r} index, not a {kind!r} index")
    if manifest["format_version"] != format_version:
        raise FormatVersionError(
            f"{directory}: {kind} index format version {manifest['format_version']!r}, "
            f"but this specrag reads version {format_version}; rebuild the index or use a matching specrag"
        )
    return manifest


def verify_files(directory: str | Path, manifest: Mapping[str, Any]) -> None:
    """Check that every file the manifest lists exists with its recorded size and sha256."""
    directory = Path(directory)
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise InputError(f"{directory / MANIFEST}: 'files' must be a mapping of file name to {{sha256, bytes}}")
    for name, expected in files.items():
        path = _inside(directory, name)
        if not isinstance(expected, dict) or not isinstance(expected.get("sha256"), str):
            raise InputError(f"{directory / MANIFEST}: the entry of file {name!r} must be {{sha256, bytes}}, got {expected!r:.80}")
        if not path.is_file():
            raise InputError(f"{path}: missing; the manifest of {directory} lists it")
        size = path.stat().st_size
        if expected.get("bytes") is not None and size != expected["bytes"]:
            raise ChecksumError(
                f"{path}: {size} bytes, but the manifest records {expected['bytes']}; "
                "the file is damaged or was replaced"
            )
        digest = sha256_file(path)
        if digest != expected["sha256"]:
            raise ChecksumError(
                f"{path}: sha256 {digest} does not match the manifest's {expected['sha256']}; "
                "the file is damaged or was replaced"
            )


def _inside(directory: Path, name: str) -> Path:
    """``directory / name``, refused when the name would lead outside the directory (``..``, absolute)."""
    if not isinstance(name, str) or "\x00" in name or Path(name).is_absolute() or ".." in Path(name).parts \
            or Path(name) in (Path("."), Path(MANIFEST)):
        raise InputError(
            f"{directory / MANIFEST}: lists file {name!r}, which is not a data file inside {directory} "
            "(no '..', no absolute path, not the manifest itself); the manifest was edited or damaged"
        )
    return directory / name


def _describe(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


class SavedIndex(Component):
    """Base of the indexes saved with a manifest; it does the persistence that every index shares.

    :meth:`save` writes into a staging directory swapped in atomically (a failed or killed save leaves what
    was there), with ``manifest.json`` recording kind, format version, the component's config, the count and
    a checksum per file; :meth:`load` checks all of that and the params in ``saved_params`` before anything
    is read; ``open(directory)`` rebuilds the index recorded there. A subclass sets ``manifest_kind``,
    ``manifest_version`` and ``saved_params`` and writes and reads only its own files (:meth:`write_files`,
    :meth:`read_files`).
    """

    role = "index"
    manifest_kind: str = ""
    manifest_version: int = 0
    # Params baked into the saved files: load() refuses a saved index whose recorded value of one differs
    # from this index's (the others, such as BM25's k1 and b in Lucene, act at search time: this index's own).
    saved_params: tuple[str, ...] = ()

    def save(self, directory: str | Path) -> None:
        """Write the index to ``directory`` atomically: a failed or killed save leaves what was there intact."""
        from rag.io import atomic_directory

        with atomic_directory(directory) as staging:
            files, fields = self.write_files(staging)
            write_manifest(staging, kind=self.manifest_kind, format_version=self.manifest_version,
                           component=self.to_config(), count=len(self), files=files, **fields)

    def load(self, directory: str | Path) -> None:
        """Replace this index's contents with a saved one, after checking its kind, format version, the
        params in ``saved_params`` and every file's checksum; :meth:`open` adopts the saved config instead."""
        directory = Path(directory)
        manifest = read_manifest(directory, kind=self.manifest_kind, format_version=self.manifest_version)
        self.check_saved_params(directory, manifest)
        verify_files(directory, manifest)
        self.read_files(directory, manifest)

    def delete(self, chunk_ids: Iterable[str]) -> int:
        """Remove the chunks with these ids; returns how many were removed. Unknown ids and repeats are
        skipped, and one str is one id; the index kind removes what it holds in :meth:`remove`."""
        present = [chunk_id for chunk_id in distinct_ids(chunk_ids) if chunk_id in self]
        if present:
            self.remove(present)
        return len(present)

    def remove(self, chunk_ids: list[str]) -> None:
        """Remove these chunks, every one of them held by this index and none repeated (see :meth:`delete`)."""
        raise NotImplementedError

    def write_files(self, staging: Path) -> tuple[list[str], dict[str, Any]]:
        """Write this index's own files into ``staging``: their names (relative to it), and the fields the
        manifest records besides the common ones."""
        raise NotImplementedError

    def read_files(self, directory: Path, manifest: dict[str, Any]) -> None:
        """Replace this index's contents with the files of a saved index (kind, version, params and checksums
        already checked); check that they agree with each other before changing anything."""
        raise NotImplementedError

    def check_saved_params(self, directory: Path, manifest: Mapping[str, Any]) -> None:
        """Refuse a saved index whose value of a param in ``saved_params`` differs from this index's."""
        component = manifest.get("component")
        saved = component.get("params", {}) if isinstance(component, Mapping) else {}
        for key in self.saved_params:
            if key in saved and saved[key] != getattr(self, key):
                raise InputError(
                    f"{directory}: saved with {key}={saved[key]!r}, but this index has {key}={getattr(self, key)!r}; "
                    f"configure it the same way, or use {type(self).__name__}.open({str(directory)!r}) to adopt "
                    "the saved config"
                )

    @classmethod
    def open(cls, directory: str | Path) -> "SavedIndex":
        """An index configured as recorded in ``directory``'s manifest, with its contents loaded."""
        manifest = read_manifest(directory, kind=cls.manifest_kind, format_version=cls.manifest_version)
        component = manifest.get("component")
        params = component.get("params", {}) if isinstance(component, dict) else None
        if not isinstance(params, dict):  # defaults in its place would search differently from the saved index
            raise InputError(
                f"{Path(directory) / MANIFEST}: 'component' must be a mapping {{type, params}} (the config the index "
                f"was saved with), got {component!r:.80}; build the index as it was saved and call its load() instead"
            )
        try:  # through the registry, so that an edited param is refused by name like one in a config file
            index = build("index", {"type": name_of("index", cls), "params": params})
        except SpecragError as exc:
            raise InputError(f"{Path(directory) / MANIFEST}: {exc}") from None
        index.load(directory)
        return index


def distinct_ids(chunk_ids: "str | Iterable[str]") -> list[str]:
    """The ids a delete names, in order, each once; one str is one id (not its characters)."""
    return list(dict.fromkeys([chunk_ids] if isinstance(chunk_ids, str) else chunk_ids))


# -- chunks on disk (every index kind that keeps its chunks) ------------------------------------------


def check_new_ids(name: str, present: Any, chunks: list[Chunk]) -> None:
    """Refuse added chunks that are not Chunks, whose id ``present`` holds, or that repeat an id in the batch."""
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
