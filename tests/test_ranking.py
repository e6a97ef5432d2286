"""The comparison used between code paths (tests/same_ranking.py) tolerates float noise and nothing more."""

from __future__ import annotations

import pytest

from tests.same_ranking import assert_same_ranking

EXPECTED = [[("a", 5.2579145), ("b", 5.1587849), ("c", 1.2081914)]]


def test_noise_within_the_tolerance_passes() -> None:
    assert_same_ranking([[("a", 5.2579155), ("b", 5.1587840), ("c", 1.2081914)]], EXPECTED, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(
    "got",
    [
        [("b", 5.1587849), ("a", 5.2579145), ("c", 1.2081914)],  # a swap of hits that are not tied
        [("a", 5.2579145), ("b", 5.1587849), ("d", 1.2081914)],  # another id
        [("a", 5.2579145), ("b", 5.1587849)],  # a hit missing
        [("a", 5.2579145), ("b", 5.1587849), ("c", 1.2091914)],  # a score off by 1e-3
    ],
)
def test_other_ids_orders_or_scores_fail(got: list[tuple[str, float]]) -> None:
    with pytest.raises(AssertionError):
        assert_same_ranking([got], EXPECTED, rel=1e-5, abs=1e-6)


def test_hits_tied_within_the_tolerance_may_trade_places() -> None:
    tied = [[("a", 2.2030), ("b", 2.2030), ("c", 1.8100)]]
    assert_same_ranking([[("b", 2.2031), ("a", 2.2030), ("c", 1.8100)]], tied, rel=0.0, abs=1.5e-4)
    with pytest.raises(AssertionError):  # but not with a hit outside their tie
        assert_same_ranking([[("a", 2.2030), ("c", 2.2030), ("b", 1.8100)]], tied, rel=0.0, abs=1.5e-4)
