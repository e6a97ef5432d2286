"""The engine layer on real small models: transformers in float32 and bfloat16, llama.cpp on the GGUF pack.

Each engine's sessions must agree with themselves (a cropped and re-read cache gives the logits of a fresh
read), and our speculative loop must reproduce each engine's own plain greedy decoding. Two code paths of
one engine (a wide verification pass against single-token passes) may round differently, so where outputs
differ, the first differing token must be a near-tie of plain decoding's two top logits; anything else is
a bug.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rag.errors import InputError
from rag.generation.decode import decode
from rag.generation.drafters import build_drafter
from rag.generation.engine import canonical_engine, first_divergence, load_engine
from rag.generation.speculative import SpecStats, WidthPolicy, speculative_decode
from rag.types import Chunk, Context, Hit

# Largest gap between plain decoding's two top logits at which a speculative output may take the other
# token: well under the gaps of confident tokens, above the rounding differences seen between pass widths.
# llama.cpp's sums also depend on where a sequence's cells lie in its shared cache (SIMD lane alignment,
# padding of the cells attended): the same tokens read beside 1-256 other cells changed a top-two gap by up
# to 0.74 and single logits by up to 2.2 (smollm2-135m, 2 prompts, 6 layouts; flips only at gaps under 0.1).
# bfloat16 keeps 8 bits of mantissa, so a logit of 16-32 moves in steps of 0.125: on a CPU without native
# BF16 (an AMD EPYC without AVX-512) the kernels round differently from one with AVX512-BF16, and a
# speculative output took the other token at a gap of 0.375 (3 steps), and two reads of the same tokens
# differed by up to 0.53 in one logit of 147,456, where the BF16 machine stayed within 0.3 and 0.5.
NEAR_TIE = {"transformers:float32": 0.3, "transformers:bfloat16": 0.5, "llama.cpp": 1.0}
# Largest difference of one logit between two reads of the same tokens (batch shapes, cache layouts).
SAME_READ_ATOL = {"transformers:float32": 0.05, "transformers:bfloat16": 0.75, "llama.cpp": 2.5}

ENGINES = ["transformers:float32", "transformers:bfloat16", "llama.cpp"]


def engine_or_skip(name: str, model: str = "smollm2-135m"):
    if name == "llama.cpp":
        pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by `make install`")
    return load_engine(model, name)


def rag_prompts(lm) -> list[list[int]]:
    passages = [
        ("functools", "functools.lru_cache(maxsize=128) is a decorator that wraps a function with a memoizing "
                      "callable that saves up to the maxsize most recent calls. It can save time when an expensive "
                      "or I/O bound function is periodically called with the same arguments."),
        ("json", "json.dumps(obj) serializes obj to a JSON formatted str. If sort_keys is true, the output of "
                 "dictionaries will be sorted by key. json.loads deserializes a str containing a JSON document."),
    ]
    context = Context.from_hits([Hit(Chunk(id=f"c{i}", doc_id=f"d{i}", text=t, start=0, end=len(t), title=title),
                                     1.0, "test") for i, (title, t) in enumerate(passages)])
    from rag.generation.generator import GroundedGenerator

    generator = GroundedGenerator(model=lm.spec)
    questions = ["How do I cache the results of an expensive function?", "What does json.dumps do with sort_keys?"]
    return [lm.encode_chat(generator.messages(q, context)) for q in questions]


def check_same_or_near_tie(lm, prompt: list[int], plain: list[int], other: list[int]) -> None:
    position = first_divergence(plain, other)
    if position is None:
        return
    logits = lm.new_session().prefill(prompt + plain[:position]).float()
    top = torch.topk(logits, 2).values
    gap = float(top[0] - top[1])
    assert gap <= NEAR_TIE[lm.name], f"{lm.name}: output differs from plain greedy at token {position} with a logit gap of {gap}"


def test_engine_names_are_canonical_and_unknown_ones_are_refused():
    assert canonical_engine("transformers") == "transformers:float32"
    assert canonical_engine("LLAMA.CPP") == "llama.cpp"
    with pytest.raises(InputError, match="known engines: auto"):
        canonical_engine("vllm")


@pytest.mark.parametrize("name", ENGINES)
def test_a_cropped_and_reread_session_gives_the_logits_of_a_fresh_read(name):
    lm = engine_or_skip(name)
    prompt = rag_prompts(lm)[0]
    fresh = lm.new_session().prefill(prompt).float()
    session = lm.new_session()
    session.feed_all(prompt[:-10])
    session.feed_all(prompt[-10:] + [prompt[0]] * 5)  # runs past the end, then rolls back
    session.crop(len(prompt) - 3)
    again = session.prefill(prompt).float()
    assert session.tokens == prompt
    assert int(again.argmax()) == int(fresh.argmax())
    torch.testing.assert_close(again, fresh, atol=SAME_READ_ATOL[name], rtol=0)
    twin = session.copy()  # a copy continues independently of its original
    twin.feed([prompt[0]])
    assert session.tokens == prompt and twin.tokens == prompt + [prompt[0]]


@pytest.mark.parametrize("name", ENGINES)
def test_speculative_decoding_reproduces_the_engines_own_plain_greedy(name):
    torch.set_num_threads(2)
    lm = engine_or_skip(name)
    drafted = 0
    for prompt in rag_prompts(lm):
        plain = list(decode(lm, prompt, max_new_tokens=40))
        stats = SpecStats()
        fast = list(speculative_decode(lm, prompt, build_drafter(["sam", "ngram"]), max_new_tokens=40, stats=stats,
                                       policy=WidthPolicy({1: 1.0, 4: 1.2, 8: 1.3})))
        drafted += sum(stats.drafted.values())
        check_same_or_near_tie(lm, prompt, plain, fast)
        # Token recycling, alone and as the passage drafters' fallback: drafts from the target's own passes.
        for names in (["recycling"], ["sam", "ngram", "recycling"], ["recycling-tree"],
                      ["sam", "ngram", "recycling-tree"]):
            stats = SpecStats()
            recycled = list(speculative_decode(lm, prompt, build_drafter(names), max_new_tokens=40, stats=stats,
                                               policy=WidthPolicy({1: 1.0, 4: 1.2, 8: 1.3})))
            check_same_or_near_tie(lm, prompt, plain, recycled)
            # Alone it must draft; beside the passage drafters it drafts only where they have nothing, which
            # depends on the output (on a CPU without BF16 the passages covered a whole bf16 answer).
            if names[0].startswith("recycling"):
                assert stats.drafted.get("recycling", 0) > 0
            else:
                assert sum(stats.drafted.values()) > 0
    assert drafted > 0  # the loop did speculate


@pytest.mark.parametrize("name", ENGINES)
def test_a_tree_fed_in_one_pass_gives_each_branchs_own_logits(name):
    lm = engine_or_skip(name)
    prompt = rag_prompts(lm)[0]
    session = lm.new_session()
    session.prefill(prompt)
    assert session.supports_tree  # transformers: a tree attention mask; llama.cpp: a sequence per leaf
    a, b, c, d, e = prompt[5:10]
    tree = session.copy()
    logits = tree.feed_tree([a, b, c, d, e], [-1, -1, 0, 1, 2]).float()  # branches a-c-e and b-d
    first, second = session.copy(), session.copy()
    atol = 1e-3 if name == "transformers:float32" else SAME_READ_ATOL[name]
    torch.testing.assert_close(logits[[0, 2, 4]], first.feed_all([a, c, e]).float(), atol=atol, rtol=0)
    torch.testing.assert_close(logits[[1, 3]], second.feed_all([b, d]).float(), atol=atol, rtol=0)
    tree.keep_path([1, 3])  # keep b-d: the session now holds the prompt and b, d, and goes on from there
    assert tree.tokens == prompt + [b, d]
    torch.testing.assert_close(tree.feed([e]).float(), second.feed([e]).float(), atol=atol, rtol=0)
    other = session.copy()  # keep a-c (llama.cpp: a branch read in a scratch sequence, not the session's own)
    other.feed_tree([a, b, c, d, e], [-1, -1, 0, 1, 2])
    other.keep_path([0, 2])
    assert other.tokens == prompt + [a, c]
    reference = session.copy()
    reference.feed_all([a, c])
    torch.testing.assert_close(other.feed([d]).float(), reference.feed([d]).float(), atol=atol, rtol=0)
    with pytest.raises(InputError, match="not a path"):
        again = session.copy()
        again.feed_tree([a, b, c], [-1, -1, 0])
        again.keep_path([1, 2])  # 2 hangs under 0, not under 1
    with pytest.raises(InputError, match="parent"):
        session.copy().feed_tree([a, b], [-1, 1])


@pytest.mark.parametrize("name", ENGINES)
def test_next_token_logits_of_a_batch_match_one_by_one_sessions(name):
    lm = engine_or_skip(name)
    prompts = rag_prompts(lm)
    batch = lm.next_token_logits(prompts)
    assert batch.shape[0] == len(prompts) and batch.dtype == torch.float32
    for row, prompt in enumerate(prompts):
        single = lm.new_session().prefill(prompt).float()
        if int(batch[row].argmax()) != int(single.argmax()):  # a batch sums in another order: only a near tie may part
            top = torch.topk(single, 2).values
            assert float(top[0] - top[1]) <= NEAR_TIE[name], f"{lm.name}: batch row {row} disagrees with its own session"


def test_llama_cpp_engine_reads_the_gguf_pack_and_refuses_other_models(tmp_path):
    lm = engine_or_skip("llama.cpp")
    assert lm.gguf.suffix == ".gguf" and lm.name == "llama.cpp"
    with pytest.raises(InputError, match="not a GGUF pack"):
        load_engine("minilm", "llama.cpp")
    with pytest.raises(InputError, match="reads GGUF files"):
        load_engine(str(tmp_path), "llama.cpp")


def test_llama_cpp_reads_a_gguf_pack_assembled_from_parts():
    """Packs shipped as split GGUF files (the Qwen packs) are GGUF packs too, not only single-file ones."""
    from rag.generation.llamacpp import gguf_file
    from rag.models import PACKS, pack_status

    assert PACKS["qwen2.5-0.5b"].kind == "gguf-parts"
    if pack_status("qwen2.5-0.5b").state != "converted":
        pytest.skip("the qwen2.5-0.5b pack is not fetched (`make packs`)")
    path = gguf_file("qwen2.5-0.5b")
    assert path.suffix == ".gguf" and path.is_file()


def test_llama_cpp_retain_drops_what_a_question_left_in_the_shared_context():
    """Sessions share one llama.cpp context, so a second session on the same prompt would read it for free;
    retain() keeps only the prefix asked for (what the benchmark gives every method), and the logits after
    it are those of a full read."""
    lm = engine_or_skip("llama.cpp")
    prompt = rag_prompts(lm)[0]
    full = lm.new_session().prefill(prompt).float()
    lm.retain(prompt[:10])
    assert max(lm._held, key=len) == prompt[:10]
    session = lm.new_session()
    again = session.prefill(prompt).float()
    assert int(again.argmax()) == int(full.argmax())
    torch.testing.assert_close(again, full, atol=SAME_READ_ATOL["llama.cpp"], rtol=0)
    lm.retain([])
    assert lm._held == [[]] * len(lm._held)


def test_llama_cpp_sessions_keep_their_own_sequences():
    """Sessions that alternate (context-aware decoding's prompts with and without passages) each keep their
    tokens in a sequence of their own: a pass reads only its new tokens, and a prefix one session read is
    shared (not re-read) by another that starts with it."""
    lm = engine_or_skip("llama.cpp")
    first, second = rag_prompts(lm)
    lm.retain([])
    a, b = lm.new_session(), lm.new_session()
    a.prefill(first)
    before = lm.tokens_read
    b.prefill(second)  # shares the system prompt with ``first``
    shared = first_divergence(first, second)
    assert lm.tokens_read - before == len(second) - shared
    before = lm.tokens_read
    for token in first[:5]:  # alternate: each pass reads one token, nothing is re-read
        a.feed([token])
        b.feed([token])
    assert lm.tokens_read - before == 10 and a.slot != b.slot
    fresh = lm.new_session()
    torch.testing.assert_close(a.feed([first[5]]).float(), fresh.prefill(first + first[:6]).float(),
                               atol=SAME_READ_ATOL["llama.cpp"], rtol=0)


def test_llama_cpp_tree_limits_and_a_full_cache():
    """A tree needs a sequence per leaf; a cache too full for a session's tokens gives up other sessions'."""
    from rag.generation.llamacpp import BATCH_TOKENS, TREE_SEQUENCES, LlamaCppEngine

    lm = engine_or_skip("llama.cpp")
    prompt = rag_prompts(lm)[0]
    session = lm.new_session()
    session.prefill(prompt)
    with pytest.raises(InputError, match="leaves"):
        session.copy().feed_tree([prompt[0]] * (TREE_SEQUENCES + 2), [-1] * (TREE_SEQUENCES + 2))
    with pytest.raises(InputError, match="at most"):
        session.copy().feed_tree([prompt[0]] * (BATCH_TOKENS + 1), list(range(-1, BATCH_TOKENS)))
    small = LlamaCppEngine(lm.spec, lm.gguf, lm.tokenizer, threads=2, n_ctx=256)
    one, two = small.new_session(), small.new_session()
    one.prefill(prompt)
    unrelated = prompt[::-1]  # nothing in common with ``prompt``: it does not fit beside it
    logits = two.prefill(unrelated)
    assert small._held[one.slot] == [] and small._held[two.slot] == unrelated
    torch.testing.assert_close(one.prefill(prompt).float(), lm.new_session().prefill(prompt).float(),
                               atol=SAME_READ_ATOL["llama.cpp"], rtol=0)
    assert logits.shape == (small.n_vocab,)


def test_llama_cpp_and_transformers_read_the_same_prompt_tokens():
    llama = engine_or_skip("llama.cpp")
    hf = load_engine("smollm2-135m", "transformers:float32")
    messages = [{"role": "user", "content": "Name a prime number."}]
    assert llama.encode_chat(messages) == hf.encode_chat(messages)


def test_quantize_is_refused_on_a_non_transformers_engine():
    with pytest.raises(InputError, match="transformers engine only"):
        load_engine("smollm2-135m", "llama.cpp", quantize="int8")


# -- scoring text: token_nll (the surprisal pruner) and stream_nll (the perplexity chunker) ---------------

TEXT = ("The Amazon rainforest covers much of the Amazon basin of South America. Jaguars, tapirs and many "
        "kinds of parrots live there. Python is a programming language that lets you work quickly and "
        "integrate systems more effectively. Its standard library is large.")


def reference_nll(ids: list[int]) -> torch.Tensor:
    """Surprisal of each token from one plain float32 forward pass of the transformers model (position 0 is
    predicted by nothing)."""
    lm = load_engine("smollm2-135m", "transformers:float32")
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0].float()
    return -torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)


@pytest.mark.parametrize("name", ENGINES)
def test_token_nll_of_padded_rows_is_each_rows_own_surprisal(name):
    lm = engine_or_skip(name)
    ids = lm.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    reference = reference_nll(ids).numpy()
    short, long = ids[:20], ids
    rows = lm.token_nll([short, long], first=[5, 0])
    assert [len(r) for r in rows] == [20, len(ids)]
    assert np.isnan(rows[0][:5]).all() and np.isnan(rows[1][0]) and np.isfinite(rows[1][1:]).all()
    # float32 matches the plain forward pass; bfloat16 and llama.cpp (8-bit activations against the
    # GGUF's 4-bit weights) stay close to it, token by token.
    tolerance = {"transformers:float32": 1e-3, "transformers:bfloat16": 0.5, "llama.cpp": 0.5}[name]
    np.testing.assert_allclose(rows[1][1:], reference, atol=tolerance)
    np.testing.assert_allclose(rows[0][5:], reference[4:19], atol=tolerance)
    assert np.corrcoef(rows[1][1:], reference)[0, 1] > 0.99


@pytest.mark.parametrize("name", ENGINES)
def test_stream_nll_in_windows_with_a_bounded_cache(name):
    lm = engine_or_skip(name)
    ids = lm.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) > 40
    whole = lm.stream_nll(ids, window_tokens=len(ids), context_tokens=len(ids))
    windowed = lm.stream_nll(ids, window_tokens=12, context_tokens=len(ids))
    assert np.isnan(whole[0]) and np.isnan(windowed[0]) and np.isfinite(windowed[1:]).all()
    # Reading in windows over a carried cache gives one pass's values (up to the summation order).
    np.testing.assert_allclose(windowed[1:], whole[1:], atol=0.05 if name == "transformers:float32" else 0.35)
    bounded = lm.stream_nll(ids, window_tokens=8, context_tokens=16)  # trimmed to 4 + 16 between windows
    np.testing.assert_allclose(bounded[1:24], windowed[1:24], atol=0.05 if name == "transformers:float32" else 0.35)
    assert np.corrcoef(bounded[1:], whole[1:])[0, 1] > 0.9
    assert not np.allclose(bounded[30:], whole[30:], atol=1e-3)  # the trimmed cache does change late tokens
    if name == "llama.cpp":  # the stream used the shared context alone and left it empty
        assert lm._held == [[]] * len(lm._held)
        session = lm.new_session()
        np.testing.assert_allclose(session.prefill(ids[:10]).numpy(), lm.new_session().prefill(ids[:10]).numpy(),
                                   atol=1e-4)
    with pytest.raises(InputError, match="window_tokens must be at least 1"):
        lm.stream_nll(ids, window_tokens=0, context_tokens=4)


def test_stream_nll_restarts_the_cache_before_the_models_trained_length(monkeypatch):
    lm = load_engine("smollm2-135m", "transformers:float32")
    ids = lm.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(lm.model.config, "max_position_embeddings", 32)
    nll = lm.stream_nll(ids, window_tokens=16, context_tokens=8)
    assert len(ids) > 32 and np.isfinite(nll[1:]).all()
    llama = engine_or_skip("llama.cpp")
    monkeypatch.setattr(llama, "n_ctx_train", 32)
    reset = llama.stream_nll(ids, window_tokens=16, context_tokens=8)
    assert np.isfinite(reset[1:]).all()
    np.testing.assert_allclose(reset[1:], nll[1:], atol=0.35)  # the same restarts as the transformers engine
