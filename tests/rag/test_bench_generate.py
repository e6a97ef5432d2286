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
