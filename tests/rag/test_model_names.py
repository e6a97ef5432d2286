"""Model references: a mistyped pack name or a missing path is named, with the packs, before any model loads.

Before, anything that was no pack and no existing path went on to transformers as a hub id and ended in a
long traceback about a repository that does not exist (offline: about the hub being unreachable).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.errors import PackError
from rag.models import PACKS, resolve_model


@pytest.mark.parametrize(
    ("typo", "meant"), [("qwen2.5-05b", "qwen2.5-0.5b"), ("minlm", "minilm"), ("MiniLM", "minilm"), ("splade", "splade-tiny")]
)
def test_a_mistyped_pack_name_is_named_with_a_suggestion_and_the_packs(typo: str, meant: str) -> None:
    with pytest.raises(PackError) as caught:
        resolve_model(typo)
    message = str(caught.value)
    assert f"model {typo!r} is not a model pack, an existing path or an owner/name hub id" in message
    assert f"did you mean {meant!r}?" in message
    assert all(pack in message for pack in PACKS)
    assert "\n" not in message


def test_a_name_like_nothing_known_lists_the_packs_without_a_guess() -> None:
    with pytest.raises(PackError, match=r"'gpt2' is not a model pack.*known packs: minilm") as caught:
        resolve_model("gpt2")
    assert "did you mean" not in str(caught.value)
    with pytest.raises(PackError, match="model reference is empty"):
        resolve_model("")


@pytest.mark.parametrize("missing", ["/no/such/model", "./no-such-model", "../no/such/model", "~/no-such-model-here"])
def test_a_path_that_does_not_exist_is_named(missing: str) -> None:
    with pytest.raises(PackError, match=rf"model {missing!r}: no such file or directory \(/"):
        resolve_model(missing)


def test_paths_and_hub_ids_still_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-model").mkdir()
    assert resolve_model("my-model") == "my-model"  # a bare folder name in the working directory
    assert resolve_model("./my-model") == "./my-model"
    for hub_id in ("org/model", "Qwen/Qwen2.5-0.5B-Instruct", "cross-encoder/ms-marco-MiniLM-L6-v2", "a_b/c.d-e"):
        assert resolve_model(hub_id) == hub_id


def test_components_refuse_a_mistyped_pack_before_loading_anything() -> None:
    from indexes.late import TokenEncoder
    from indexes.splade_encoder import SpladeEncoder
    from rag.encoders import SentenceEncoder

    with pytest.raises(PackError, match="did you mean 'minilm'"):
        SentenceEncoder("minlm").encode_queries(["a question"])
    with pytest.raises(PackError, match="did you mean 'minilm'"):
        TokenEncoder("minlm").encode_queries(["a question"])
    with pytest.raises(PackError, match="did you mean 'splade-tiny'"):
        SpladeEncoder("splade-tni").encode_queries(["a question"])


def test_models_fetch_suggests_the_pack_meant(capsys: pytest.CaptureFixture[str]) -> None:
    from rag.cli import main

    assert main(["models", "fetch", "qwen2.5-05b"]) == 2
    err = capsys.readouterr().err
    assert "unknown pack(s) qwen2.5-05b (did you mean 'qwen2.5-0.5b'?)" in err and "\n" not in err.strip()
