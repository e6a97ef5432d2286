import json

import pytest

from rag.errors import InputError
from rag.io import atomic_directory, read_documents


def write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_reads_beir_layout(tmp_path):
    corpus = write(tmp_path / "c.jsonl", '{"_id": "a", "title": "T", "text": "alpha"}\n\n{"id": "b", "text": "beta"}\n')
    docs = read_documents(corpus)
    assert [(d.id, d.title, d.text) for d in docs] == [("a", "T", "alpha"), ("b", "", "beta")]


def test_malformed_line_names_file_and_line(tmp_path):
    corpus = write(tmp_path / "c.jsonl", '{"_id": "a", "text": "ok"}\n{"_id": "b", "text": \n')
    with pytest.raises(InputError, match=r"c\.jsonl, line 2: malformed JSON"):
        read_documents(corpus)


def test_non_utf8_names_file_and_line(tmp_path):
    corpus = write(tmp_path / "c.jsonl", b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"line 2: not UTF-8"):
        read_documents(corpus)


def test_document_without_text_names_document(tmp_path):
    corpus = write(tmp_path / "c.jsonl", '{"_id": "a", "text": "ok"}\n{"_id": "b7", "title": "x"}\n')
    with pytest.raises(InputError, match=r"line 2 \(document 'b7'\): document has no 'text'"):
        read_documents(corpus)
    corpus = write(tmp_path / "d.jsonl", '{"_id": "e1", "text": "   "}\n')
    with pytest.raises(InputError, match=r"document 'e1'.*empty text"):
        read_documents(corpus)


def test_empty_corpus_and_duplicates(tmp_path):
    with pytest.raises(InputError, match="corpus is empty"):
        read_documents(write(tmp_path / "e.jsonl", "\n\n"))
    dup = write(tmp_path / "d.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n')
    with pytest.raises(InputError, match="duplicate document id 'a' \\(first on line 1\\)"):
        read_documents(dup)


def test_atomic_directory_keeps_old_on_failure(tmp_path):
    target = tmp_path / "idx"
    with atomic_directory(target) as staging:
        (staging / "f").write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            (staging / "f").write_text("half")
            raise RuntimeError("crash mid-write")
    assert (target / "f").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.lock", "idx"]
    with atomic_directory(target) as staging:
        (staging / "f").write_text("new")
    assert (target / "f").read_text() == "new"
    assert json.dumps(sorted(p.name for p in tmp_path.iterdir())) == '[".idx.lock", "idx"]'


def test_commit_swaps_in_one_step_on_this_system(tmp_path):
    from rag.io import _exchange

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("A")
    (b / "f").write_text("B")
    assert _exchange(a, b), "renameat2 RENAME_EXCHANGE is expected on Linux with glibc >= 2.28"
    assert (a / "f").read_text() == "B" and (b / "f").read_text() == "A"


def test_fallback_commit_without_exchange_and_recovery_of_a_kill_between_its_renames(tmp_path, monkeypatch):
    import rag.io
    from rag.io import recover_directory

    monkeypatch.setattr(rag.io, "_exchange", lambda a, b: False)
    target = tmp_path / "idx"
    for text in ("old", "new"):
        with atomic_directory(target) as staging:
            (staging / "f").write_text(text)
    assert (target / "f").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.lock", "idx"]
    # A kill after the old version was renamed aside and before the new one was renamed in: no idx at all,
    # the old version in .idx.old-PID, the staged new one in .idx.tmp-XXXX.
    target.rename(tmp_path / ".idx.old-4242")
    (tmp_path / ".idx.tmp-abc").mkdir()
    (tmp_path / ".idx.tmp-abc" / "f").write_text("half")
    recover_directory(target)
    assert (target / "f").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.lock", "idx"]


def test_a_save_removes_what_killed_saves_left_and_loads_restore_a_missing_index(tmp_path):
    from rag.manifest import read_manifest
    from rag.errors import InputError

    target = tmp_path / "idx"
    (tmp_path / ".idx.tmp-dead1").mkdir()
    (tmp_path / ".idx.old-999").mkdir()
    (tmp_path / ".idx.old-999" / "manifest.json").write_text('{"format_version": 1, "kind": "k", "files": {}}')
    # nothing at idx: a load finds the version the killed save had moved aside
    assert read_manifest(target, kind="k", format_version=1)["kind"] == "k"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.lock", "idx"]
    (tmp_path / ".idx.tmp-dead2").mkdir()
    with atomic_directory(target) as staging:
        (staging / "f").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.lock", "idx"]
    with pytest.raises(InputError, match="no such directory"):
        read_manifest(tmp_path / "absent", kind="k", format_version=1)


def test_a_second_writer_waits_for_the_first_and_the_result_is_one_complete_version(tmp_path):
    import subprocess
    import sys
    import time

    target = tmp_path / "idx"
    # The child holds the writer lock while it writes slowly; the parent's save must wait, then commit.
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from rag.io import atomic_directory\n"
        f"with atomic_directory({str(target)!r}) as staging:\n"
        "    print('holding', flush=True)\n"
        "    for i in range(5):\n"
        "        (staging / f'f{i}').write_text('child')\n"
        "        time.sleep(0.2)\n"
    )], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "holding"
        started = time.monotonic()
        with atomic_directory(target) as staging:
            waited = time.monotonic() - started
            # the lock came only after the child's commit: its complete version is at the path
            assert sorted(p.read_text() for p in target.iterdir()) == ["child"] * 5
            for i in range(5):
                (staging / f"f{i}").write_text("parent")
    finally:
        child.wait(timeout=60)
    assert child.returncode == 0 and waited > 0.5
    assert {p.read_text() for p in target.iterdir()} == {"parent"} and len(list(target.iterdir())) == 5
    from rag.io import writer_lock

    with writer_lock(target, wait=False) as held:
        assert held  # nobody holds it now


def test_disk_full_during_a_save_keeps_the_old_index_and_says_so(tmp_path, monkeypatch):
    import errno
    import os

    from rag.cli import error_line
    from rag.errors import SaveError
    from rag.registry import build
    from tests.indexes.corpus import DOCS, make_chunks

    keys = list(DOCS)
    index = build("index", "bm25s")
    index.add(make_chunks(keys[:3]))
    target = tmp_path / "ix"
    index.save(target)
    index.add(make_chunks(keys[3:]))

    def full(fd):  # a full disk often shows first when dirty pages are flushed
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(SaveError, match=r"ix: saving failed \(No space left on device\); the version that was"):
        index.save(target)
    monkeypatch.undo()
    index.save(tmp_path / "other" / "ix")  # with room again, saving works
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ix.lock", "ix", "other"]
    reopened = build("index", "bm25s")
    reopened.load(target)
    assert len(reopened) == 3
    assert error_line(SaveError("ix: saving failed (No space left on device)", errno=errno.ENOSPC)) == (
        "ix: saving failed (No space left on device)")


@pytest.mark.parametrize("spec", [
    "bm25s",
    "bm25",  # Lucene reads its segment files through handles opened at load
    {"type": "dense", "params": {"model": "minilm", "mmap": True}},  # faiss maps the vectors file
], ids=["bm25s", "bm25", "dense-mmap"])
def test_a_reader_of_the_old_version_keeps_working_while_a_writer_commits(tmp_path, spec):
    from rag.registry import build
    from tests.indexes.corpus import DOCS, make_chunks

    keys = list(DOCS)
    writer = build("index", spec)
    writer.add(make_chunks(keys[:4]))
    target = tmp_path / "ix"
    writer.save(target)
    reader = build("index", spec)
    reader.load(target)
    before = [[h.chunk.id for h in hits] for hits in reader.search(["blood clots", "aspirin"], 3)]
    writer.add(make_chunks(keys[4:]))
    writer.save(target)  # swaps the new version in and removes the old folder the reader opened
    writer.save(target)  # twice: the old folder is long gone
    assert [[h.chunk.id for h in hits] for hits in reader.search(["blood clots", "aspirin"], 3)] == before
    fresh = build("index", spec)
    fresh.load(target)
    assert len(fresh) == len(keys) and len(reader) == 4


def test_a_thread_holding_the_writer_lock_saves_inside_it(tmp_path):
    from rag.io import writer_lock

    target = tmp_path / "pack"
    with writer_lock(target):  # as a pack fetch does around the save of its pack
        with atomic_directory(target) as staging:
            (staging / "f").write_text("x")
        with writer_lock(target, wait=False) as again:
            assert again
    assert (target / "f").read_text() == "x"
