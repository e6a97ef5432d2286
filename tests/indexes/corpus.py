"""The small corpus and helpers the index tests share (one copy, imported by each index's test file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rag.types import Chunk, Hit

ROOT = Path(__file__).resolve().parents[2]

DOCS = {
    "aspirin": ("Aspirin", "Aspirin reduces the risk of blood clots by inhibiting platelets."),
    "paris": ("France", "Paris is the capital and largest city of France."),
    "python": ("Programming", "Python is a programming language that emphasises readability."),
    "ocean": ("", "The Pacific is the largest and deepest ocean on Earth."),
    "insulin": ("Diabetes", "Insulin lowers blood glucose by helping cells absorb sugar."),
    "violin": ("Music", "A violin has four strings and is played with a bow."),
    "clots": ("Blood clots", "Clotting of blood stops bleeding; platelets and fibrin form the clot."),
    "glucose": ("Glucose", "Glucose is a sugar; cells burn glucose for energy."),
}
# The first six documents: the dense tests' corpus (no two near-paraphrases among them).
SENTENCES = {key: DOCS[key] for key in ("aspirin", "paris", "python", "ocean", "insulin", "violin")}
QUERIES = ["blood clots and platelets", "capital of France", "deepest ocean", "glucose for energy", "music"]


def make_chunks(keys: list[str]) -> list[Chunk]:
    """One whole-text chunk per document key (``key#0``), with its title and ``{"k": key}`` as metadata."""
    return [
        Chunk(id=f"{key}#0", doc_id=key, text=text, start=0, end=len(text), title=title, metadata={"k": key})
        for key, (title, text) in ((k, DOCS[k]) for k in keys)
    ]


def ranked(results: list[list[Hit]]) -> list[list[tuple[str, float]]]:
    """For results of the same code path run twice (the same files searched again): ids and exact scores."""
    return [[(h.chunk.id, h.score) for h in hits] for hits in results]


def check_scores_chunks(index: Any, queries: list[str], k: int) -> None:
    """``index.score_chunks`` gives each hit of ``index.search(query, k)`` its score (within float rounding),
    in the order of the ids asked for, so that ranking the ids by it gives search's order (ties aside)."""
    for query in queries:
        hits = index.search(query, k)[0]
        assert hits, query
        ids = [h.chunk.id for h in hits]
        scores = index.score_chunks(query, ids)
        assert isinstance(scores, list) and all(type(s) is float for s in scores)
        assert scores == pytest.approx([h.score for h in hits], rel=1e-4, abs=1e-5), query
        assert all(a >= b - max(1e-4 * abs(b), 1e-5) for a, b in zip(scores, scores[1:])), (query, scores)
        assert index.score_chunks(query, ids[::-1]) == pytest.approx(scores[::-1], rel=1e-4, abs=1e-5)
