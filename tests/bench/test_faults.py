"""The fault-injection harness, quick subset: writers SIGKILLed mid-save leave the old or the new version.

The full run (every index kind, 20 trials each, both commit paths) is `python -m bench.faults --fallback`;
its table is in eval/results/faults.md.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bench.faults import SPECS, load_chunks, run_kind


@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "two-renames"])
def test_killed_bm25s_saves_leave_the_old_or_the_new_version(scifact_dir: Path, tmp_path: Path,
                                                             fallback: bool) -> None:
    chunks = load_chunks(scifact_dir, 50)
    row = run_kind("bm25s", SPECS["bm25s"], chunks[:40], chunks[40:], 6, tmp_path, random.Random(1), 1, fallback)
    assert row["torn"] == 0, row
    assert row["old"] + row["new"] == 6
    assert row["killed_in_commit"] >= 3  # the even trials aim inside the commit step
    assert row["leftovers_found"] == row["leftovers_cleaned"]
