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
from rag.io import atomic_write_json, recover_directory, sha256_file
from rag.registry import Component, build, name_of

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
    """Base of the indexes saved with a manifest: ``open(directory)`` rebuilds the index recorded there.

    Subclasses set ``manifest_kind`` and ``manifest_version`` and implement ``load``.
    """

    role = "index"
    manifest_kind: str = ""
    manifest_version: int = 0

    def load(self, directory: str | Path) -> None:
        raise NotImplementedError

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
