"""The grounded generator and the decoding loop, on the real SmolLM2 and Qwen2.5-0.5B packs."""

import pytest

from rag.errors import InputError
from rag.generation.decode import decode
from rag.generation.generator import GroundedGenerator, format_passages, parse_citations
from rag.generation.hf import load_causal_lm
from rag.types import Chunk, Context, Hit

PASSAGES = [
    ("os.path.join", "Join one or more path segments intelligently, inserting the separator as needed."),
    ("functools.lru_cache", "Least-recently-used cache decorator. Wraps a function and memoizes its results, "
     "so repeated calls with the same arguments return the cached result instead of recomputing it."),
    ("json.dumps", "Serialize an object to a JSON formatted string."),
]


def make_context(passages=PASSAGES) -> Context:
    hits = []
    for i, (title, text) in enumerate(passages):
        hits.append(Hit(chunk=Chunk(id=f"{title}#0", doc_id=title, text=text, start=0, end=len(text), title=title),
                        score=1.0, source="test"))
    return Context.from_hits(hits)


def test_passages_are_numbered_from_one():
    rendered = format_passages(make_context())
    assert rendered.startswith("[1] os.path.join: Join") and "\n\n[2] functools.lru_cache: " in rendered


def test_citations_resolve_to_context_chunks():
    context = make_context()
    citations = parse_citations("Use lru_cache [2]. See also [1, 2] and [9].", context)
    assert [(c.marker, c.chunk_id, c.doc_id) for c in citations] == [
        (2, "functools.lru_cache#0", "functools.lru_cache"), (1, "os.path.join#0", "os.path.join")]


def test_own_greedy_loop_matches_transformers_generate():
    import torch

    lm = load_causal_lm("smollm2-135m")
    prompt = lm.encode_chat([{"role": "user", "content": "Name three colours."}])
    ours = list(decode(lm, prompt, max_new_tokens=24))
    with torch.inference_mode():
        reference = lm.model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)[0, len(prompt):]
    reference = [t for t in reference.tolist() if t not in lm.eos_token_ids]
    assert ours == reference[: len(ours)] and len(ours) == len(reference)


def test_sampling_is_seeded():
    lm = load_causal_lm("smollm2-135m")
    prompt = lm.encode_chat([{"role": "user", "content": "Say something."}])
    first = list(decode(lm, prompt, max_new_tokens=12, temperature=1.0, seed=3))
    again = list(decode(lm, prompt, max_new_tokens=12, temperature=1.0, seed=3))
    assert first == again


def test_stream_matches_generate_and_respects_limits():
    generator = GroundedGenerator(model="smollm2-135m", max_new_tokens=20)
    context = make_context()
    answer = generator.generate("What does json.dumps do?", context)
    streamed = "".join(generator.stream("What does json.dumps do?", context)).strip()
    assert streamed == answer.text and answer.text
    record = answer.trace.stages[0]
    assert record.stage == "generate" and 0 < record.tokens_out <= 20 and record.tokens_in > 50
    assert record.extra["prefill_seconds"] > 0


def test_stop_strings_end_the_answer():
    full = GroundedGenerator(model="smollm2-135m", max_new_tokens=30).generate("What does json.dumps do?", make_context())
    word = full.text.split()[2]
    stopped = GroundedGenerator(model="smollm2-135m", max_new_tokens=30, stop=[word]).generate(
        "What does json.dumps do?", make_context())
    assert word not in stopped.text and full.text.startswith(stopped.text)


def test_qwen_answers_with_a_citation_of_the_right_passage():
    generator = GroundedGenerator(model="qwen2.5-0.5b", max_new_tokens=60)
    answer = generator.generate("How do I cache the results of an expensive function?", make_context())
    assert "lru_cache" in answer.text
    assert "functools.lru_cache" in [c.doc_id for c in answer.citations], answer.text


def test_generator_loads_a_model_from_a_local_path(tmp_path):
    """A tiny randomly initialised Qwen2 saved to disk loads through the same loader as the packs."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from rag.models import resolve_model

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "tiny")
    AutoTokenizer.from_pretrained(resolve_model("qwen2.5-0.5b")).save_pretrained(tmp_path / "tiny")
    answer = GroundedGenerator(model=str(tmp_path / "tiny"), max_new_tokens=5).generate("q?", make_context())
    assert answer.trace.stages[0].tokens_out <= 5


def test_bad_parameters_are_clear():
    from rag.errors import InputError

    with pytest.raises(InputError, match="max_new_tokens"):
        GroundedGenerator(max_new_tokens=0)
    with pytest.raises(InputError, match="temperature"):
        GroundedGenerator(temperature=-1)


def test_citation_completion_adds_a_marker_only_when_missing():
    context = make_context()
    plain = GroundedGenerator(model="smollm2-135m", max_new_tokens=24, complete_citations=False).generate(
        "What does json.dumps do?", context)
    assert plain.trace.stages[0].extra["citation_completed"] is False
    completed = GroundedGenerator(model="smollm2-135m", max_new_tokens=24).generate("What does json.dumps do?", context)
    if parse_citations(plain.text, context):  # the model cited by itself: nothing is added
        assert completed.text == plain.text and not completed.trace.stages[0].extra["citation_completed"]
    elif completed.trace.stages[0].extra["citation_completed"]:
        assert completed.text.startswith(plain.text) and completed.text.endswith(f"[{completed.citations[0].marker}]")
    else:  # the model declined to name a passage
        assert completed.text == plain.text and completed.citations == []


def test_speculation_is_on_when_lossless_and_changes_no_token():
    context = make_context()
    question = "What does functools.lru_cache do?"
    # One engine pinned: identity is judged against the same engine's plain greedy (every engine, with the
    # near-tie rule for batched passes, is covered in test_engines.py).
    fast = GroundedGenerator(model="smollm2-135m", engine="transformers:float32", max_new_tokens=32)
    plain = GroundedGenerator(model="smollm2-135m", engine="transformers:float32", max_new_tokens=32, speculative=False)
    assert fast.uses_speculation() and not plain.uses_speculation()
    answer, reference = fast.generate(question, context), plain.generate(question, context)
    assert answer.text == reference.text
    extra = answer.trace.stages[0].extra
    assert extra["engine"] == extra["engine_asked"] == "transformers:float32"
    assert extra["speculative"] is True and extra["drafters"] == ["sam", "ngram"]
    for key in ("drafted", "accepted", "forward_passes", "mean_accepted_length", "first_token_seconds",
                "tokens_per_second"):
        assert key in extra
    assert extra["forward_passes"] <= reference.trace.stages[0].extra["forward_passes"]


def test_speculation_settings():
    assert not GroundedGenerator(temperature=0.7).uses_speculation()  # sampling: not token-identical, so opt-in
    assert GroundedGenerator(temperature=0.7, speculative=True).uses_speculation()
    assert not GroundedGenerator(drafters=[]).uses_speculation()
    config = GroundedGenerator(drafters=["ngram"], draft_model="qwen2.5-0.5b").to_config()
    assert config["params"]["drafters"] == ["ngram"] and config["params"]["draft_model"] == "qwen2.5-0.5b"
    from rag.errors import InputError

    with pytest.raises(InputError, match="known: ngram, sam"):
        GroundedGenerator(drafters=["suffix"])
    with pytest.raises(InputError, match="quantize"):
        GroundedGenerator(quantize="int4")


def test_system_prompt_prefix_is_reused_across_questions():
    import torch
    from rag.generation.engine import load_engine

    context = make_context()
    generator = GroundedGenerator(model="smollm2-135m", engine="transformers:float32", max_new_tokens=12)
    generator.generate("What does json.dumps do?", context)
    second = generator.generate("What does os.path.join do?", context)
    assert second.trace.stages[0].extra["reused_prompt_tokens"] >= len(generator.instructions.split())
    fresh = GroundedGenerator(model="smollm2-135m", engine="transformers:float32", max_new_tokens=12,
                              reuse_prefix=False).generate("What does os.path.join do?", context)
    assert fresh.trace.stages[0].extra["reused_prompt_tokens"] == 0
    # Reuse must not change what the model reads: after the whole prompt, the session copied from the cached
    # prefix gives the logits of a fresh prefill up to rounding. (Comparing the decoded texts would compare
    # floats summed in a different order: at a near tie a greedy answer may take the other token.)
    lm = load_engine("smollm2-135m", "transformers:float32")
    prompt = lm.encode_chat(generator.messages("What does os.path.join do?", context))
    reused_session = generator.session(lm)
    assert 0 < reused_session.length < len(prompt)
    torch.testing.assert_close(reused_session.prefill(prompt).float(), lm.new_session().prefill(prompt).float(),
                               atol=1e-3, rtol=1e-3)


def test_int8_is_an_explicit_option():
    answer = GroundedGenerator(model="smollm2-135m", max_new_tokens=8, quantize="int8").generate(
        "What does json.dumps do?", make_context())
    assert answer.trace.stages[0].extra["quantize"] == "int8" and answer.trace.stages[0].tokens_out <= 8
    assert GroundedGenerator().quantize is None


def test_the_engine_is_a_round_tripped_parameter_and_auto_reports_what_it_chose():
    generator = GroundedGenerator(model="smollm2-135m", engine="transformers", max_new_tokens=4)
    assert generator.engine == "transformers:float32"
    assert GroundedGenerator(**generator.to_config()["params"]) == generator
    with pytest.raises(InputError, match="unknown engine"):
        GroundedGenerator(engine="onnx")
    answer = GroundedGenerator(model="smollm2-135m", max_new_tokens=4).generate("What does json.dumps do?", make_context())
    extra = answer.trace.stages[0].extra
    assert extra["engine_asked"] == "auto" and extra["engine"] in ("transformers:float32", "transformers:bfloat16",
                                                                    "llama.cpp")
    assert extra["engine_reason"].startswith(extra["engine"])


def test_a_short_answer_is_a_phrase_without_citations():
    """Real model: the short style answers with the span and cites nothing; cited answers cite."""
    context = make_context()
    short = GroundedGenerator(model="qwen2.5-0.5b", answer_style="short")
    answer = short.generate("Which decorator memoizes the results of a function?", context)
    assert "lru_cache" in answer.text and "\n" not in answer.text and answer.citations == []
    extra = answer.trace.stages[0].extra
    assert extra["answer_style"] == "short" and extra["citation_completed"] is False
    assert answer.trace.stages[0].tokens_out <= 32 and len(answer.text.split()) <= 6, answer.text


def test_answer_styles_supply_prompt_stops_and_length_unless_given():
    from rag.generation.generator import DEFAULT_SYSTEM_PROMPT, SHORT_SYSTEM_PROMPT
    from rag.registry import build

    cited, short = GroundedGenerator(), GroundedGenerator(answer_style="short")
    assert (cited.instructions, cited.stops, cited.new_tokens) == (DEFAULT_SYSTEM_PROMPT, [], 256)
    assert (short.instructions, short.stops, short.new_tokens) == (SHORT_SYSTEM_PROMPT, ["\n"], 32)
    mine = GroundedGenerator(answer_style="short", system_prompt="Be brief.", stop=[], max_new_tokens=5)
    assert (mine.instructions, mine.stops, mine.new_tokens) == ("Be brief.", [], 5)
    assert build("generator", mine.to_config()) == mine and mine.to_config()["params"]["answer_style"] == "short"
    with pytest.raises(InputError, match="answer_style must be one of \\['cited', 'short'\\]"):
        GroundedGenerator(answer_style="long")
