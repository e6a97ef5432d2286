"""Every failure a user can cause is one ``specrag: error:`` line on stderr and exit code 2; ``--debug``
shows the traceback instead; a bug in specrag keeps its traceback and exits 1.

Run in-process through :func:`rag.cli.main` (one real subprocess checks the console exit code)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rag.cli import main
from rag.errors import InputError

ROOT = Path(__file__).resolve().parents[3]


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The only line on stderr, which must be a ``specrag: error:`` line (no traceback)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("specrag: error: ") and "Traceback" not in err
    return lines[0]


def deny(monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
    """Opening ``target`` fails as an unreadable file does (tests often run as root, who may read anything)."""
    original = Path.open

    def guarded(self: Path, *args, **kwargs):
        if Path(self) == target:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", guarded)


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "a", "title": "A", "text": "Some text."}\n', encoding="utf-8")
    return path


# -- bad paths ---------------------------------------------------------------------------------------


def test_missing_corpus_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-corpus.jsonl"
    assert main(["index", "--corpus", str(missing), "--out", str(tmp_path / "out")]) == 2
    assert f"{missing}: no such file" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_a_directory_given_as_the_corpus_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", "--corpus", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert f"{tmp_path}: is a directory; expected a JSONL file" in one_error_line(capsys)


def test_a_directory_given_as_the_config_file(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["index", "--corpus", str(corpus), "--out", str(tmp_path / "out"), "--config", str(tmp_path)]) == 2
    assert f"{tmp_path}: is a directory; expected a YAML or JSON config file" in one_error_line(capsys)


def test_missing_index_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-index"
    assert main(["ask", "What is it?", "--index", str(missing)]) == 2
    assert f"{missing}: no such directory" in one_error_line(capsys)


def test_eval_retrieval_missing_data_and_bad_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "retrieval", "--data", str(tmp_path / "nowhere"), "--index", "bm25s"]) == 2
    assert f"{tmp_path / 'nowhere'}: no such directory" in one_error_line(capsys)
    assert main(["eval", "retrieval", "--data", str(tmp_path), "--index", "bm25s", "--set", "threshold.min_score=[1"]) == 2
    assert "--set 'threshold.min_score=[1': VALUE is not valid YAML" in one_error_line(capsys)


# -- unreadable files --------------------------------------------------------------------------------


def test_unreadable_corpus_file(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    deny(monkeypatch, corpus)
    assert main(["index", "--corpus", str(corpus), "--out", str(tmp_path / "out")]) == 2
    assert one_error_line(capsys) == f"specrag: error: {corpus}: Permission denied"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_corpus_file_for_real(tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus.chmod(0)
    try:
        assert main(["index", "--corpus", str(corpus), "--out", str(tmp_path / "out")]) == 2
    finally:
        corpus.chmod(0o644)
    assert one_error_line(capsys) == f"specrag: error: {corpus}: Permission denied"


def test_unreadable_index_config_in_eval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "index.yaml"
    config.write_text("type: bm25s\n", encoding="utf-8")
    deny(monkeypatch, config)
    assert main(["eval", "retrieval", "--data", str(tmp_path), "--index", str(config)]) == 2
    assert one_error_line(capsys) == f"specrag: error: {config}: Permission denied"


# -- SPECRAG_THREADS and --threads -------------------------------------------------------------------


@pytest.mark.parametrize("value", ["two", "-1", "0", "1.5"])
def test_bad_specrag_threads(value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SPECRAG_THREADS", value)
    assert main(["models", "list"]) == 2
    line = one_error_line(capsys)
    assert f"SPECRAG_THREADS={value!r}" in line and "e.g. SPECRAG_THREADS=4" in line


def test_good_or_empty_specrag_threads(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        for value in ("", " ", "1"):
            monkeypatch.setenv("SPECRAG_THREADS", value)
            assert main(["models", "list"]) == 0
    finally:
        torch.set_num_threads(before)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("value", ["two", "-1", "0"])
def test_bad_threads_option_is_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([f"--threads={value}", "models", "list"])
    assert exit_info.value.code == 2
    assert "argument --threads: expected" in capsys.readouterr().err


def test_console_exit_code_and_stderr_in_a_real_process(tmp_path: Path) -> None:
    env = {**os.environ, "SPECRAG_THREADS": "two", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "rag.cli", "models", "list"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "specrag: error: SPECRAG_THREADS='two': expected a whole number of threads, got 'two' (e.g. SPECRAG_THREADS=4)"
    ]


# -- errors raised by dependencies on user input, --debug, and bugs ------------------------------------


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (OSError(errno.EACCES, "Permission denied", "/cache/packs"), "/cache/packs: Permission denied"),
        (OSError(errno.EXDEV, "Invalid cross-device link", "a.bin", None, "b.bin"),
         "a.bin: Invalid cross-device link (and b.bin)"),
        (ValueError("could not convert string to float: 'x'\n  in field 'score'"),
         "ValueError: could not convert string to float: 'x'; in field 'score'"),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
         "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
        (InputError("first line\nsecond line"), "first line; second line"),
    ],
)
def test_dependency_errors_are_one_line(
    error: Exception, line: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail() -> None:
        raise error

    monkeypatch.setattr("rag.cli.models.list_packs", fail)
    assert main(["models", "list"]) == 2
    assert one_error_line(capsys) == f"specrag: error: {line}"


def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match="no such file"):
        main(["--debug", "index", "--corpus", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "out")])
    monkeypatch.setenv("SPECRAG_THREADS", "two")
    with pytest.raises(InputError, match="SPECRAG_THREADS='two'"):
        main(["--debug", "models", "list"])


def test_a_bug_keeps_its_traceback_and_exits_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def bug() -> None:
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr("rag.cli.models.list_packs", bug)
    assert main(["models", "list"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "TypeError: unsupported operand" in err
    assert err.strip().splitlines()[-1].startswith("specrag: internal error (TypeError); this is a bug")
    with pytest.raises(TypeError):
        main(["--debug", "models", "list"])


def test_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("rag.cli.models.list_packs", interrupted)
    try:
        code = main(["models", "list"])
    except KeyboardInterrupt:  # would stop the whole pytest session
        pytest.fail("KeyboardInterrupt escaped main")
    assert code == 130
    assert capsys.readouterr().err.strip() == "specrag: interrupted"
