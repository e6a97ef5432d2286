"""``specrag bench generate`` end to end on real data with the smallest real model (plumbing, not speed)."""

import json

from rag.cli import main


def test_bench_generate_compares_methods_and_ends_with_one_json_line(data_dir, capsys):
    code = main(["--threads", "1", "bench", "generate", "--model", "smollm2-135m", "--data",
                 str(data_dir / "squad-v1.1-dev"), "--n", "2", "--max-new-tokens", "6", "--threads", "1",
                 "--width-costs", "default", "--methods", "plain,prompt_lookup,ours_combined,ours_combined_fresh"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["model"] == "smollm2-135m" and result["prompts"] == 2
    assert set(result["methods"]) == {"plain", "prompt_lookup", "ours_combined", "ours_combined_fresh"}
    assert result["identical"] is True  # greedy speculation reproduces plain greedy generate
    assert result["plain_decode_tps"] > 0 and result["speedup_vs_plain"] > 0
    assert result["prefix_tokens"] > 0 and result["ttft_later_no_reuse_s"] > 0


def test_bench_generate_runs_every_drafter_and_assisted_generation_with_a_draft_model(data_dir, capsys):
    # SmolLM2 drafts for itself: the same tokenizer, so assisted generation and our draft-model drafter run.
    methods = {"plain", "assisted", "ours_ngram", "ours_sam", "ours_model", "ours_combined_model"}
    code = main(["--threads", "1", "bench", "generate", "--model", "smollm2-135m", "--draft", "smollm2-135m",
                 "--data", str(data_dir / "squad-v1.1-dev"), "--n", "1", "--max-new-tokens", "6", "--threads", "1",
                 "--width-costs", "default", "--methods", ",".join(sorted(methods))])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["draft"] == "smollm2-135m" and set(result["methods"]) == methods
    assert result["identical"] is True and all(m["identical"] for m in result["methods"].values())
    assert result["methods"]["ours_model"]["drafted"].get("model", 0) > 0  # the draft model did draft
