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
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]
    with atomic_directory(target) as staging:
        (staging / "f").write_text("new")
    assert (target / "f").read_text() == "new"
    assert json.dumps(sorted(p.name for p in tmp_path.iterdir())) == '["idx"]'
