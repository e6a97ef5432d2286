"""Comparing rankings that two different code paths computed (issue 20, point 1).

Two paths that compute the same scores (an exhaustive and a candidate search, a batch and a single query,
an index built in steps and in one go, our reranker and the library's own) may add the same terms in
another order, so their floats can differ in the last bits. What they must agree on is the same ids in the
same order and scores within a stated tolerance; the one order float noise may change is that of hits whose
scores are tied within that tolerance. A result that the same code path computes twice is compared with
``==``.
"""

from __future__ import annotations

from typing import Sequence

import pytest

from rag.types import Hit

Ranking = Sequence["Hit | tuple[str, float]"]


def pairs(ranking: Ranking) -> list[tuple[str, float]]:
    """``(chunk id, score)`` for each hit, best first."""
    return [(h.chunk.id, h.score) if isinstance(h, Hit) else (str(h[0]), float(h[1])) for h in ranking]


def assert_same_ranking(got: Sequence[Ranking], expected: Sequence[Ranking], *, rel: float, abs: float) -> None:
    """One ranking per query: equal ids in equal order (up to ties within the tolerance) and each id's score
    within ``pytest.approx(rel=rel, abs=abs)`` of its expected score."""
    assert len(got) == len(expected), f"{len(got)} rankings, expected {len(expected)}"
    for number, (mine, theirs) in enumerate(zip(got, expected)):
        mine, theirs = pairs(mine), pairs(theirs)
        where = f"query {number}: got {mine}, expected {theirs}"
        assert [i for i, _ in mine] == [i for i, _ in theirs] or _equal_up_to_ties(mine, theirs, rel, abs), where
        scores = dict(theirs)
        for chunk_id, score in mine:
            assert score == pytest.approx(scores[chunk_id], rel=rel, abs=abs), f"{chunk_id}: {where}"


def _equal_up_to_ties(mine: list[tuple[str, float]], theirs: list[tuple[str, float]], rel: float, abs: float) -> bool:
    """Whether the ids agree position by position, except inside runs of expected scores that are tied
    within the tolerance (each run must hold the same ids in both)."""
    if len(mine) != len(theirs):
        return False
    start = 0
    while start < len(theirs):
        end = start + 1
        while end < len(theirs) and theirs[end][1] == pytest.approx(theirs[end - 1][1], rel=rel, abs=abs):
            end += 1
        if sorted(i for i, _ in mine[start:end]) != sorted(i for i, _ in theirs[start:end]):
            return False
        start = end
    return True
