"""The notebooks run: both are executed with nbclient on small inputs (a tiny QA folder, a tiny generator)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.eval.test_rag_eval import SQUAD, make_tiny_lm, make_tiny_qa

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def small_inputs(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from rag.models import cache_dir

    root = tmp_path_factory.mktemp("notebooks")
    # The kernel's own cache: the packs are the real ones (linked), but the engine and dtype choices it
    # measures for the temporary tiny model stay here instead of piling up in the user's cache.
    cache = root / "cache"
    cache.mkdir()
    (cache / "packs").symlink_to(cache_dir() / "packs", target_is_directory=True)
    return {
        "SPECRAG_CACHE": str(cache),
        "SPECRAG_NB_DATA": str(make_tiny_qa(data_dir / SQUAD, root / "tiny-squad", paragraphs=12, questions=4)),
        "SPECRAG_NB_MODEL": str(make_tiny_lm(root / "tiny-lm")),
        "SPECRAG_NB_MAX_NEW_TOKENS": "6",
        "SPECRAG_NB_LIMIT": "4",
        "SPECRAG_NB_RUNS": str(root / "runs"),
        "SPECRAG_THREADS": "2",
    }


@pytest.mark.parametrize("name", ["quickstart", "evaluation"])
def test_notebook_executes(name: str, small_inputs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat", reason="pip install 'specrag[test]' (nbformat)")
    nbclient = pytest.importorskip("nbclient", reason="pip install 'specrag[test]' (nbclient, ipykernel)")
    for key, value in small_inputs.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError, naming the cell, on any failure
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    if name == "evaluation":
        assert any("image/png" in o.get("data", {}) for o in outputs)  # the plots were shown
        assert (Path(small_inputs["SPECRAG_NB_RUNS"]) / "top5" / "summary.json").is_file()
