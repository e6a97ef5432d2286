"""``specrag bench generate`` end to end on real data with the smallest real model (plumbing, not speed)."""

import json

import pytest

from rag.cli import main


def test_bench_generate_names_its_headline_and_gives_every_method_its_own_ratio(data_dir, capsys):
    code = main(["--threads", "1", "bench", "generate", "--model", "smollm2-135m", "--data",
                 str(data_dir / "squad-v1.1-dev"), "--n", "2", "--max-new-tokens", "6", "--threads", "1",
                 "--engines", "transformers:float32", "--width-costs", "default",
                 "--methods", "hf_generate,hf_prompt_lookup,ours_combined_fresh"])
    assert code == 0
    out = capsys.readouterr().out
    assert "headline method (named before the run): ours_combined" in out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["model"] == "smollm2-135m" and result["prompts"] == 2 and result["headline"] == "ours_combined"
    methods = result["engines"]["transformers:float32"]["methods"]
    assert set(methods) == {"plain", "ours_combined", "hf_generate", "hf_prompt_lookup", "ours_combined_fresh"}
    for name, method in methods.items():  # like for like: each ratio is against the same engine's plain loop
        assert method["decode_tps"] > 0 and method["speedup_vs_plain"] > 0, name
        assert method["ttft_s"] > 0 and method["ttft_later_s"] > 0, name
    assert methods["plain"]["speedup_vs_plain"] == pytest.approx(1.0)
    # greedy speculation and transformers' own greedy generate reproduce our plain greedy loop
    assert all(m["identical"] for m in methods.values())
    assert result["prefix_tokens"] > 0


def test_bench_generate_runs_every_drafter_and_assisted_generation_with_a_draft_model(data_dir, capsys):
    # SmolLM2 drafts for itself: the same tokenizer, so assisted generation and our draft-model drafter run.
    methods = {"plain", "ours_combined", "hf_assisted", "ours_ngram", "ours_sam", "ours_model", "ours_combined_model"}
    code = main(["--threads", "1", "bench", "generate", "--model", "smollm2-135m", "--draft", "smollm2-135m",
                 "--data", str(data_dir / "squad-v1.1-dev"), "--n", "1", "--max-new-tokens", "6", "--threads", "1",
                 "--engines", "transformers:float32", "--width-costs", "default",
                 "--methods", ",".join(sorted(methods - {"plain", "ours_combined"}))])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    found = result["engines"]["transformers:float32"]["methods"]
    assert result["draft"] == "smollm2-135m" and set(found) == methods
    assert all(m["identical"] for m in found.values())
    assert found["ours_model"]["drafted"].get("model", 0) > 0  # the draft model did draft


def test_bench_generate_checks_speculative_context_aware_decoding_against_its_own_greedy(data_dir, capsys):
    code = main(["--threads", "1", "bench", "generate", "--model", "smollm2-135m", "--data",
                 str(data_dir / "squad-v1.1-dev"), "--n", "2", "--max-new-tokens", "8", "--threads", "1",
                 "--engines", "transformers:float32", "--width-costs", "default", "--methods", "cad_combined",
                 "--alpha", "1.0"])
    assert code == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    methods = result["engines"]["transformers:float32"]["methods"]
    assert set(methods) == {"plain", "ours_combined", "cad", "cad_combined"}  # cad added as the reference
    assert methods["cad"]["reference"] == "plain" and methods["cad_combined"]["reference"] == "cad"
    assert methods["cad_combined"]["identical"], "speculation must not change CAD's greedy answer"
    assert methods["cad_combined"]["answer_speedup_vs_reference"] > 0
    assert "cad_combined: identical to cad on 2 of 2 prompts" in out
    assert "divergences" not in methods["cad"]  # CAD differs from plain decoding on purpose


def test_bench_generate_refuses_a_method_that_needs_a_draft_model(data_dir, capsys):
    code = main(["bench", "generate", "--model", "smollm2-135m", "--data", str(data_dir / "squad-v1.1-dev"),
                 "--methods", "ours_model"])
    assert code == 2
    assert "need --draft" in capsys.readouterr().err


def test_bench_engines_prints_each_engines_calibration_then_answer_times(data_dir, capsys):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by `make install`")
    code = main(["--threads", "1", "bench", "engines", "--model", "smollm2-135m", "--data",
                 str(data_dir / "squad-v1.1-dev"), "--n", "1", "--max-new-tokens", "6", "--threads", "1",
                 "--engines", "transformers:float32,llama.cpp"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["calibration"]) == set(result["engines"]) == {"transformers:float32", "llama.cpp"}
    for row in result["calibration"].values():
        assert row["prompt_tokens_per_second"] > 0 and row["decode_ms"] > 0
        assert set(row["width_costs"]) == {"1", "2", "4", "8", "16", "32"}
    for engine in result["engines"].values():
        assert set(engine["methods"]) == {"plain", "ours_combined"}
        assert engine["methods"]["ours_combined"]["answer_s"] > 0
    assert "greedy_vs_float32" in result["engines"]["llama.cpp"]


def test_a_divergence_is_diagnosed_with_the_reference_methods_own_logits():
    from bench.generate import divergence
    from rag.generation.contrast import ContrastSession
    from rag.generation.decode import decode
    from rag.generation.engine import load_engine

    lm = load_engine("smollm2-135m", "transformers:float32")
    prompt = lm.encode_chat([{"role": "user", "content": "Passages: [1] The Rhine is long.\n\nQuestion: What is long?"}])
    without = lm.encode_chat([{"role": "user", "content": "Question: What is long?"}])
    session = ContrastSession(lm.new_session(), lm.new_session(), without, 1.0)
    reference = list(decode(lm, prompt, max_new_tokens=4, session=session))
    other = reference[:2] + [reference[2] + 1]
    plain_view = divergence(lm, prompt, reference, other)
    cad_view = divergence(lm, prompt, reference, other, contrast=(without, 1.0))
    assert plain_view["position"] == cad_view["position"] == 2
    contrasted = ContrastSession(lm.new_session(), lm.new_session(), without, 1.0)
    contrasted.prefill(prompt)
    top = contrasted.prefill(prompt + reference[:2]).topk(2).values
    assert cad_view["gap"] == pytest.approx(float(top[0] - top[1]), abs=1e-3)
    assert cad_view["top2_logits"] != plain_view["top2_logits"]
