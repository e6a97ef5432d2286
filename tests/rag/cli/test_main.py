"""The command line (demo, index, ask and the command list), run in-process through rag.cli.main with real components."""

import json

import pytest

from rag.cli import main
from rag.stdlib_corpus import stdlib_documents


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "index", "ask", "eval", "models"):
        assert command in out


def test_stdlib_corpus_documents_functools_caching():
    docs = {d.id: d for d in stdlib_documents(("functools", "json"))}
    assert "functools.lru_cache" in docs and "cache" in docs["functools.lru_cache"].text.lower()
    assert docs["functools.lru_cache"].title.startswith("functools.lru_cache(")
    assert all(d.text.strip() for d in docs.values())


def test_index_reports_bad_corpus_with_file_and_line(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "a", "text": "fine"}\n{"_id": "b", "text": 3}\n')
    assert main(["index", "--corpus", str(corpus), "--out", str(tmp_path / "out")]) == 2  # a user error
    err = capsys.readouterr().err
    assert "corpus.jsonl, line 2 (document 'b')" in err
    assert not (tmp_path / "out").exists()


def test_index_then_ask_as_json(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(r) for r in [
        {"_id": "lru", "title": "functools.lru_cache", "text": "Least-recently-used cache decorator for expensive functions."},
        {"_id": "join", "title": "os.path.join", "text": "Join two or more pathname components."},
    ]))
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "chunker: {type: recursive}\nindex: {type: dense}\nfilters: [{type: top-k, params: {k: 1}}]\n"
        "generator: {type: grounded, params: {model: smollm2-135m, max_new_tokens: 12}}\n")
    assert main(["index", "--corpus", str(corpus), "--out", str(tmp_path / "ix"), "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["ask", "How do I memoize a function?", "--index", str(tmp_path / "ix"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["hits"][0]["chunk_id"] == "lru#0"
    assert [r["stage"] for r in result["trace"]] == ["retrieve", "filter", "generate"]


def test_models_list_shows_pack_states(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("minilm", "splade-tiny", "smollm2-135m", "qwen2.5-0.5b", "qwen2.5-1.5b"):
        assert name in out
