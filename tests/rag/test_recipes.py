"""Named pipelines shipped with the package: each builds, round-trips through YAML, and a wrong name is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rag.config import dump_config
from rag.errors import InputError
from rag.pipeline import Pipeline, recipe_names, recipe_path


def test_the_shipped_recipes_are_fast_balanced_accurate_and_multihop() -> None:
    assert recipe_names() == ["accurate", "balanced", "fast", "multihop"]


@pytest.mark.parametrize("name", recipe_names())
def test_a_recipe_round_trips_through_yaml(name: str, tmp_path: Path) -> None:
    pipeline = Pipeline.recipe(name)
    assert pipeline == Pipeline.from_config(recipe_path(name))
    dump_config(pipeline.to_config(), tmp_path / "copy.yaml")
    assert Pipeline.from_config(tmp_path / "copy.yaml") == pipeline
    # The shipped file is short and says what it chooses: a comment at the top, only the choices below.
    text = recipe_path(name).read_text()
    assert text.startswith(f"# {name}:")
    assert set(yaml.safe_load(text)) <= {"version", "chunker", "index", "reranker", "filters", "compressor",
                                          "generator", "retrieve_k", "budget_tokens", "loop"}


def test_recipes_differ_in_what_they_say() -> None:
    configs = {name: Pipeline.recipe(name).to_config() for name in recipe_names()}
    assert configs["fast"]["reranker"] is None and configs["balanced"]["reranker"]["type"] == "maxsim"
    assert configs["balanced"]["index"]["type"] == "hybrid"
    assert configs["accurate"]["generator"]["params"]["model"] == "qwen2.5-1.5b"
    assert configs["multihop"]["loop"]["type"] in {"ircot", "ralm"} and all(
        "loop" not in configs[name] for name in ("fast", "balanced", "accurate"))
    # multihop's loop builds its own prompts from each search (no compressor to apply to a moving context).
    assert {c["compressor"]["type"] for name, c in configs.items() if name != "multihop"} == {"extractive"}
    # People asking get cited answers; `eval rag --answer-style short` switches them for QA scoring.
    assert {c["generator"]["params"]["answer_style"] for c in configs.values()} == {"cited"}


def test_the_default_pipeline_is_the_fast_recipe() -> None:
    # The rule of eval/results/recipes.md chose `fast`; a change to either must be a change to both.
    assert Pipeline() == Pipeline.recipe("fast")
    assert Pipeline(compressor=None).compressor is None


@pytest.mark.parametrize("name", ["acurate", "", "../rag/recipes/fast", "fast.yaml"])
def test_an_unknown_recipe_names_the_recipes(name: str) -> None:
    with pytest.raises(InputError, match="recipes: accurate, balanced, fast, multihop"):
        Pipeline.recipe(name)
    if name == "acurate":
        with pytest.raises(InputError, match="did you mean 'accurate'"):
            Pipeline.recipe(name)


def test_index_from_a_recipe_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rag.cli import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "a", "title": "Cats", "text": "Cats sleep most of the day."}\n'
                      '{"_id": "b", "title": "Dogs", "text": "Dogs bark at the postman."}\n')
    assert main(["--threads", "1", "index", "--corpus", str(corpus), "--out", str(tmp_path / "fast"),
                 "--recipe", "fast"]) == 0
    assert Pipeline.load(tmp_path / "fast") == Pipeline.recipe("fast")
    assert main(["index", "--corpus", str(corpus), "--out", str(tmp_path / "x"), "--recipe", "fsat"]) == 2
    assert "did you mean 'fast'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --config and --recipe exclude each other (argparse's usage error)
        main(["index", "--corpus", str(corpus), "--out", str(tmp_path / "x"), "--recipe", "fast",
              "--config", str(recipe_path("fast"))])
