"""Fuzzing saved index directories (issue 21): edited or truncated manifests and data files.

Every index kind is saved twice (two different corpora) into template directories. Each example copies one
template, damages one file in it (the manifest's JSON edited field by field or its bytes cut or changed;
a data file truncated, a byte flipped, deleted, or swapped for the same file of the other index) and opens
it. The outcome must be a :class:`rag.errors.SpecragError` whose message names the directory, or an index
that answers exactly as the undamaged one did; never an exception from inside a dependency. ``make test``
runs a bounded number of examples, ``SPECRAG_FUZZ_EXAMPLES`` (``make test-slow``: 1000) more; the counts
per kind are printed at the end of the module (``-s`` shows them).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag.errors import InputError, SpecragError
from rag.manifest import MANIFEST, read_manifest, verify_files
from rag.registry import build, resolve
from tests.indexes.corpus import DOCS, make_chunks

EXAMPLES = int(os.environ.get("SPECRAG_FUZZ_EXAMPLES", "60"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
KINDS = {
    "bm25s": "bm25s",
    "dense": {"type": "dense", "params": {"model": "minilm"}},
    "splade": {"type": "splade", "params": {"model": "splade-tiny"}},
    "late": {"type": "late", "params": {"model": "minilm", "nlist": 4, "nprobe": 2, "candidates": 4}},
    "hybrid": {"type": "hybrid", "params": {"members": ["bm25s", {"type": "dense", "params": {"model": "minilm"}}]}},
    "bm25": "bm25",
}
QUERIES = ["blood clots platelets", "capital of France", "sugar energy"]
KEYS = sorted(DOCS)
OUTCOMES: dict[str, dict[str, int]] = {}


def ranked(results: list) -> list[list[str]]:
    return [[hit.chunk.id for hit in hits] for hits in results]


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """Per kind: the saved directory of each of two indexes, and the ranking the first one gives."""
    saved = {}
    for kind, spec in KINDS.items():
        root = tmp_path_factory.mktemp(f"saved-{kind}")
        index = build("index", spec)
        index.add(make_chunks(KEYS[:6]))
        index.save(root / "a")
        expected = ranked(index.search(QUERIES, 3))
        other = build("index", spec)
        other.add(make_chunks(KEYS[3:]))
        other.save(root / "b")
        saved[kind] = (root / "a", root / "b", expected)
    yield saved
    for kind, counts in sorted(OUTCOMES.items()):
        print(f"fuzz: saved {kind} index, {sum(counts.values())} damaged copies: {counts}")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)
outside_names = st.sampled_from(["../b/manifest.json", "/etc/hostname", "..", "", "a/../../x", "./" + MANIFEST])


def edit_manifest(data: st.DataObject, manifest: dict) -> dict:
    """One edit of the parsed manifest: a key removed or given another value, or a file entry changed."""
    action = data.draw(st.sampled_from(["drop", "set", "set-param", "file-entry", "file-name"]))
    if action == "drop":
        manifest.pop(data.draw(st.sampled_from(sorted(manifest))), None)
    elif action == "set":
        manifest[data.draw(st.sampled_from(sorted(manifest)))] = data.draw(json_values)
    elif action == "set-param":
        params = manifest.get("component", {}).get("params", {})
        if params:
            params[data.draw(st.sampled_from(sorted(params)))] = data.draw(json_values)
    elif action == "file-entry" and manifest.get("files"):
        name = data.draw(st.sampled_from(sorted(manifest["files"])))
        manifest["files"][name] = data.draw(json_values | st.fixed_dictionaries(
            {"sha256": st.sampled_from(["", "0" * 64]), "bytes": st.integers(-1, 10**6)}))
    elif action == "file-name" and manifest.get("files"):
        name = data.draw(st.sampled_from(sorted(manifest["files"])))
        manifest["files"][data.draw(outside_names)] = manifest["files"].pop(name)
    return manifest


def damage(data: st.DataObject, directory: Path, other: Path) -> str:
    """Damage one file under ``directory``; returns what was done (for the failure message)."""
    files = sorted(p.relative_to(directory) for p in directory.rglob("*") if p.is_file())
    manifests = [name for name in files if name.name == MANIFEST]
    # Half the cases edit a manifest (a hybrid index has one per member too), half damage a data file.
    target = data.draw(st.sampled_from(manifests if data.draw(st.booleans()) else sorted(set(files) - set(manifests))))
    path = directory / target
    raw = path.read_bytes()
    if target.name == MANIFEST:
        how = data.draw(st.sampled_from(["edit", "truncate", "byte"]))
        if how == "edit":
            path.write_text(json.dumps(edit_manifest(data, json.loads(raw))))
        elif how == "truncate":
            path.write_bytes(raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))])
        else:
            at = data.draw(st.integers(0, len(raw) - 1))
            path.write_bytes(raw[:at] + bytes([data.draw(st.integers(0, 255))]) + raw[at + 1:])
        return f"{how} {target}"
    how = data.draw(st.sampled_from(["truncate", "byte", "delete", "swap"]))
    if how == "truncate":
        path.write_bytes(raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))])
    elif how == "byte" and raw:
        at = data.draw(st.integers(0, len(raw) - 1))
        path.write_bytes(raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1:])
    elif how == "delete":
        path.unlink()
    elif how == "swap" and (other / target).is_file():
        shutil.copyfile(other / target, path)
    return f"{how} {target}"


@fuzz
@given(kind=st.sampled_from(sorted(KINDS)), data=st.data())
def test_a_damaged_index_directory_is_refused_clearly_or_answers_as_before(templates, tmp_path_factory, kind, data):
    original, other, expected = templates[kind]
    directory = tmp_path_factory.mktemp("damaged") / "index"
    shutil.copytree(original, directory)
    what = damage(data, directory, other)
    counts = OUTCOMES.setdefault(kind, {})
    try:
        index = resolve("index", KINDS[kind] if isinstance(KINDS[kind], str) else KINDS[kind]["type"]).open(directory)
        results = ranked(index.search(QUERIES, 3))
    except SpecragError as exc:
        assert str(directory) in str(exc), f"{what}: {exc}"
        if os.environ.get("SPECRAG_FUZZ_SHOW"):  # print each refusal, to read what was refused and why
            print(f"{kind}: {what}: {str(exc).replace(str(directory), 'DIR')[:150]}")
        counts["refused"] = counts.get("refused", 0) + 1
        return
    assert results == expected, f"{what}: opened, but answers differently"
    counts["answered as before"] = counts.get("answered as before", 0) + 1


# -- the checks themselves, one case each ----------------------------------------------------------------


def test_a_manifest_naming_a_file_outside_its_directory_is_refused(tmp_path):
    (tmp_path / "ix").mkdir()
    (tmp_path / "secret").write_text("x")
    for name in ("../secret", str(tmp_path / "secret"), "sub/../../secret", "./manifest.json", ""):
        with pytest.raises(InputError, match="not a data file inside"):
            verify_files(tmp_path / "ix", {"files": {name: {"sha256": "0" * 64, "bytes": 1}}})


@pytest.mark.parametrize("files, message", [
    ([], "'files' must be"),
    ({"a": "b"}, "'a'"),
    ({"a": {"bytes": 1}}, "sha256"),
])
def test_a_malformed_file_list_names_the_entry(tmp_path, files, message):
    (tmp_path / MANIFEST).write_text(json.dumps({"format_version": 1, "kind": "x", "files": files}))
    with pytest.raises(InputError, match=message):
        verify_files(tmp_path, read_manifest(tmp_path, kind="x", format_version=1))
