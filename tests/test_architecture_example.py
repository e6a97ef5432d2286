"""The worked example of ``docs/architecture.md`` works as written: the filter in its first code block,
saved as a module of its own and registered with the one line the page gives, passes the contract suite's
checks for every component and for filters, and behaves as the page says."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from rag import registry
from rag.errors import InputError
from rag.types import Chunk, Hit
from tests import test_contracts

PAGE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def example_blocks() -> list[str]:
    section = PAGE.read_text(encoding="utf-8").split("## Worked example", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture()
def shared_word(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    module, registration = example_blocks()
    (tmp_path / "my_filters.py").write_text(module, encoding="utf-8")  # the one new file
    monkeypatch.syspath_prepend(str(tmp_path))
    exec(registration, {"rag": sys.modules["rag"]})  # the one registration, as the page writes it
    yield "shared-word"
    registry._REGISTRY["filter"].pop("shared-word", None)
    sys.modules.pop("my_filters", None)


def test_the_page_has_the_module_and_the_registration():
    module, registration = example_blocks()
    assert "class SharedWordFilter(BaseFilter)" in module and "register(" in registration


def test_the_contract_suite_passes_the_example(shared_word):
    test_contracts.test_every_component_builds_cheaply_and_round_trips_its_config("filter", shared_word)
    test_contracts.test_filters_return_hits_from_their_input(shared_word)


def test_the_example_does_what_the_page_says(shared_word):
    component = registry.build("filter", {"type": shared_word, "params": {"min_shared": 2}})
    assert component.to_config() == {"type": "shared-word", "params": {"min_shared": 2}}
    text = "Insulin lowers blood glucose."
    hits = [Hit(chunk=Chunk(id="c", doc_id="d", text=text, start=0, end=len(text)), score=1.0, source="t")]
    assert component.filter("what lowers blood sugar?", hits) == hits
    assert component.filter("what thins blood?", hits) == []
    with pytest.raises(InputError, match="min_shared must be at least 1"):
        registry.build("filter", {"type": shared_word, "params": {"min_shared": 0}})
