"""The draft-acceptance measurement behind the tracker's priors, on real prompts with the smallest model."""

from bench.draft_acceptance import measure
from rag.generation.speculative import AcceptanceTracker


def test_measure_counts_drafts_by_match_length(data_dir):
    result = measure(str(data_dir / "squad-v1.1-dev"), n=1, drafter_name="sam", model="smollm2-135m",
                     max_new_tokens=12)
    assert result["prompts"] == 1 and result["buckets"]
    assert set(result["buckets"]) <= set(AcceptanceTracker.bucket_labels())
    for row in result["buckets"].values():
        assert row["drafts"] > 0 and 0.0 <= row["first_rate"] <= 1.0
        assert row["later_rate"] is None or 0.0 <= row["later_rate"] <= 1.0
