"""Dependencies point one way (``docs/architecture.md``): the core never imports components or the evaluation
at module level, and stages (chunkers, indexes, ranking, compressors) never import each other; what several stages
share (token offsets and sentence units in :mod:`rag.text`, Lucene's analysis in :mod:`rag.analysis`) lives
in the core. Read from the source with ``ast``, so a violation fails here before it tangles the house."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("chunkers", "indexes", "ranking", "compressors")
OUTSIDE_THE_CORE = (*STAGES, "eval", "bench", "tests")


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(module, line, at module level)`` for every import in a file (relative imports resolved to the
    package they name)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    top = {id(node) for node in tree.body}
    for node in tree.body:  # imports under a module-level ``if``/``try`` run at import time too
        if isinstance(node, (ast.If, ast.Try)):
            top.update(id(child) for child in ast.walk(node))
    found = []
    package = path.relative_to(ROOT).parts[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            found.append((package if node.level else module, node.lineno, id(node) in top))
    return found


def files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def first_part(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("path", files("rag"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_imports_no_component_or_evaluation_at_module_level(path):
    wrong = [f"line {line}: {module}" for module, line, at_top in imports(path)
             if at_top and first_part(module) in OUTSIDE_THE_CORE]
    assert not wrong, f"{path.relative_to(ROOT)} imports outside the core at module level: {wrong}"


@pytest.mark.parametrize("path", [p for stage in STAGES for p in files(stage)], ids=lambda p: str(p.relative_to(ROOT)))
def test_stages_import_only_the_core_and_themselves(path):
    own = path.relative_to(ROOT).parts[0]
    wrong = [f"line {line}: {module}" for module, line, _ in imports(path)
             if first_part(module) in (*STAGES, "eval", "bench", "tests") and first_part(module) != own]
    assert not wrong, f"{path.relative_to(ROOT)} imports another stage or the evaluation: {wrong}"


@pytest.mark.parametrize("path", files("eval"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_evaluation_imports_no_benchmark(path):
    """Benchmarks and research scripts (``bench/``) may use the harness, not the other way round."""
    wrong = [f"line {line}: {module}" for module, line, _ in imports(path) if first_part(module) == "bench"]
    assert not wrong, f"{path.relative_to(ROOT)} imports a benchmark: {wrong}"


def test_the_rule_finds_a_violation(tmp_path, monkeypatch):
    """The check itself can fail: a stage module importing another stage is reported."""
    stage = tmp_path / "compressors"
    stage.mkdir()
    bad = stage / "bad.py"
    bad.write_text("import os\n\ndef f():\n    from chunkers.text import segment\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    with pytest.raises(AssertionError, match="line 4: chunkers.text"):
        test_stages_import_only_the_core_and_themselves(bad)
