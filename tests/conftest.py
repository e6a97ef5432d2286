"""Shared test set-up: explicit thread counts, the shared data folder, and models loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Ray's failure signal handler would replace the JVM's SIGSEGV handler in this process, and Lucene (which
# the BM25 and SPLADE tests run here too) then crashes on its first implicit null check: see
# indexes.ray_workers.keep_jvm_signal_handlers.
os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SPECRAG_DATA", ROOT.parent / "shared" / "data"))


def pytest_configure(config: pytest.Config) -> None:
    import torch

    # Two torch threads unless SPECRAG_THREADS says otherwise (as for the CLI), e.g. on a shared machine.
    torch.set_num_threads(int(os.environ.get("SPECRAG_THREADS") or 2))
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        pass


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared evaluation data not found at {DATA} (set SPECRAG_DATA)")
    return DATA


@pytest.fixture(scope="session")
def scifact_dir(data_dir: Path) -> Path:
    return data_dir / "scifact"


@pytest.fixture(scope="session", autouse=True)
def _engine_choices_in_a_session_folder(tmp_path_factory: pytest.TempPathFactory):
    """``engine="auto"`` and ``dtype="auto"`` measure once per session into a temporary folder: the suite
    neither reads a choice an earlier run (or older code) left in the user's cache nor leaves files for its
    temporary models there. The model packs stay in the real cache."""
    from rag import encoders
    from rag.generation import calibrate
    from rag.models import cache_dir

    folder = tmp_path_factory.mktemp("engine-choices")
    with pytest.MonkeyPatch.context() as patch:
        original = calibrate._choice_file
        patch.setattr(calibrate, "_choice_file",
                      lambda model, facts: folder / original(model, facts).relative_to(cache_dir()))
        original_dtype = encoders._dtype_choice_file
        patch.setattr(encoders, "_dtype_choice_file",
                      lambda kind, model, facts: folder / original_dtype(kind, model, facts).relative_to(cache_dir()))
        yield
