"""The speculative loop: token identity with plain greedy decoding, KV rollback, limits, EOS, and the
distribution of speculative sampling (chi-square), on tiny random models; one short real-Qwen check."""

import pytest
import torch

from rag.generation.drafters import CombinedDrafter, DraftModelDrafter, PromptLookupDrafter, SuffixAutomatonDrafter
from rag.generation.decode import decode
from rag.generation.hf import TransformersEngine
from rag.generation.speculative import SpecStats, WidthPolicy, _verify, measure_width_costs, speculative_decode

EOS = 63


def tiny_lm(seed: int = 0, vocab: int = 64, layers: int = 2, eos: int = EOS) -> TransformersEngine:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    return TransformersEngine(f"tiny-{seed}", Qwen2ForCausalLM(config).eval(), None, eos_token_ids=frozenset({eos}))


def tiny_llama(seed: int = 0) -> TransformersEngine:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    return TransformersEngine("tiny-llama", LlamaForCausalLM(config).eval(), None, eos_token_ids=frozenset({EOS}))


@pytest.fixture(scope="module")
def lm():
    torch.set_num_threads(1)
    return tiny_lm()


def prompts(n: int, length: int = 40, seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 60, (length,), generator=generator).tolist() for _ in range(n)]


def assert_greedy_tokens(lm: TransformersEngine, prompt: list[int], ours: list[int], plain: list[int], what: str = "") -> None:
    """Speculative greedy decoding gives plain greedy's tokens. A verification pass computes the target's
    logits for several positions at once, and those can differ from one-at-a-time decoding in the last float
    bits; only where the target's two best tokens are tied within that noise may the outputs part (and
    nothing after that point can be compared). Any other difference fails."""
    if ours == plain:
        return
    common = min(len(ours), len(plain))
    i = next((j for j in range(common) if ours[j] != plain[j]), common)
    assert i < common, f"{what}: {len(ours)} tokens, plain greedy gave {len(plain)} ({ours} vs {plain})"
    with torch.inference_mode():
        logits = lm.model(torch.tensor([prompt + plain[:i]])).logits[0, -1].float()
    gap = abs(float(logits[plain[i]] - logits[ours[i]]))
    noise = 1e-4 * max(1.0, float(logits.abs().max()))  # float32 noise of a forward pass, with a wide margin
    assert gap <= noise, f"{what}: token {i} is {ours[i]}, plain greedy's is {plain[i]}; logit gap {gap:.2e} is no tie"


# Widths 1 and 8 at equal cost: every draft with any acceptance chance is verified (exercises rollback).
EAGER = WidthPolicy({1: 1.0, 4: 1.0, 8: 1.0})


def drafters(lm, draft_lm):
    return {
        "ngram": PromptLookupDrafter(),
        "sam": SuffixAutomatonDrafter(),
        "model": DraftModelDrafter(draft_lm, min_confidence=0.0),
        "combined": CombinedDrafter([SuffixAutomatonDrafter(), PromptLookupDrafter()],
                                    fallback=DraftModelDrafter(draft_lm, min_confidence=0.0)),
    }


@pytest.mark.parametrize("make", [tiny_lm, tiny_llama], ids=["qwen2", "llama"])
def test_greedy_speculation_is_token_identical_to_plain_greedy(make):
    lm, draft_lm = make(0), make(5)
    for prompt in prompts(2):
        plain = list(decode(lm, prompt, max_new_tokens=32))
        for name, drafter in drafters(lm, draft_lm).items():
            stats = SpecStats()
            ours = list(speculative_decode(lm, prompt, drafter, max_new_tokens=32, stats=stats, policy=EAGER))
            assert_greedy_tokens(lm, prompt, ours, plain, name)
            assert stats.new_tokens == len(ours)


def test_the_greedy_comparison_allows_float_ties_only(lm):
    prompt = prompts(1)[0]
    plain = list(decode(lm, prompt, max_new_tokens=8))
    with torch.inference_mode():
        worst = int(torch.argmin(lm.model(torch.tensor([prompt + plain[:3]])).logits[0, -1]))
    with pytest.raises(AssertionError, match="token 3 .* is no tie"):
        assert_greedy_tokens(lm, prompt, plain[:3] + [worst] + plain[4:], plain)
    with pytest.raises(AssertionError, match="8 tokens, plain greedy gave 9"):
        assert_greedy_tokens(lm, prompt, plain, plain + [1])


def test_rejections_roll_the_cache_back(lm):
    """A draft model that disagrees often forces crops; the cache must end holding the accepted text."""
    draft_lm = tiny_lm(7)
    prompt = prompts(1)[0]
    session = lm.new_session()
    stats = SpecStats()
    ours = list(speculative_decode(lm, prompt, DraftModelDrafter(draft_lm, min_confidence=0.0), max_new_tokens=30,
                                   stats=stats, session=session, policy=EAGER))
    assert sum(stats.drafted.values()) > sum(stats.accepted.values())  # some rejections happened
    assert session.tokens == (prompt + ours)[: session.length] and session.length >= len(prompt) + len(ours) - 1
    assert session.cache.get_seq_length() == session.length


def test_accepted_drafts_cut_forward_passes(lm):
    """With the target as its own draft model every draft is accepted: far fewer passes than tokens."""
    prompt = prompts(1, seed=3)[0]
    plain = list(decode(lm, prompt, max_new_tokens=40))
    stats = SpecStats()
    ours = list(speculative_decode(lm, prompt, DraftModelDrafter(lm, min_confidence=0.0, max_tokens=7),
                                   max_new_tokens=40, stats=stats, policy=EAGER))
    assert_greedy_tokens(lm, prompt, ours, plain)
    assert stats.accepted["model"] == stats.drafted["model"] > 0
    assert stats.forward_passes < len(plain) / 3 and stats.mean_accepted_length > 3


def test_max_tokens_and_eos_are_respected(lm):
    prompt = prompts(1)[0]
    for limit in (1, 2, 5, 9):
        plain = list(decode(lm, prompt, max_new_tokens=limit))
        ours = list(speculative_decode(lm, prompt, DraftModelDrafter(lm, min_confidence=0.0), max_new_tokens=limit,
                                       policy=EAGER))
        assert_greedy_tokens(lm, prompt, ours, plain, f"limit {limit}")
        assert len(ours) <= limit
    # make EOS the model's second greedy token: decoding stops before it, with and without speculation
    first_two = list(decode(lm, prompt, max_new_tokens=2))
    eos_lm = TransformersEngine("eos", lm.model, None, eos_token_ids=frozenset({first_two[1]}))
    for drafter in (DraftModelDrafter(lm, min_confidence=0.0), SuffixAutomatonDrafter()):
        assert list(speculative_decode(eos_lm, prompt, drafter, max_new_tokens=20, policy=EAGER)) == first_two[:1]


def test_streaming_yields_tokens_as_they_are_accepted(lm):
    """Tokens come out of the iterator one by one; stopping early leaves a consistent cache."""
    prompt = prompts(1, seed=4)[0]
    session = lm.new_session()
    iterator = speculative_decode(lm, prompt, DraftModelDrafter(lm, min_confidence=0.0), max_new_tokens=30,
                                  session=session, policy=EAGER)
    got = [next(iterator) for _ in range(10)]
    iterator.close()
    assert_greedy_tokens(lm, prompt, got, list(decode(lm, prompt, max_new_tokens=10)))
    assert session.tokens[: len(prompt) + 10] == prompt + got


class ScriptedTree:
    """A tree drafter that knows the answer: each level holds a wrong token first, then the right one, so
    only the second branch at every depth is accepted (and the main path, all wrong tokens, never is)."""

    def __init__(self, prompt: list[int], answer: list[int], depth: int = 3) -> None:
        self.text, self.depth = prompt + answer, depth

    def start(self, prompt_ids, temperature=0.0, generator=None) -> None:
        pass

    def propose(self, tokens, k):
        from rag.generation.speculative import Draft

        right = self.text[len(tokens):len(tokens) + self.depth]
        nodes, parents, parent = [], [], -1
        for token in right:
            nodes += [(token + 1) % 60, token]
            parents += [parent, parent]
            parent = len(nodes) - 1
        return Draft(tokens=nodes[:k], source="scripted", parents=parents[:k], confidence=[0.9] * len(nodes[:k]))


def test_tree_drafts_are_verified_in_one_pass_and_keep_only_the_accepted_branch(lm):
    prompt = prompts(1, seed=6)[0]
    plain = list(decode(lm, prompt, max_new_tokens=30))
    session = lm.new_session()
    stats = SpecStats()
    ours = list(speculative_decode(lm, prompt, ScriptedTree(prompt, plain), max_new_tokens=30, stats=stats,
                                   session=session, policy=EAGER))
    assert_greedy_tokens(lm, prompt, ours, plain)
    # every pass accepts the three right tokens hidden in second branches (4 tokens a pass with the target's)
    assert stats.accepted["scripted"] >= 3 * (stats.verify_passes - 1) and stats.forward_passes <= 10
    assert session.tokens == (prompt + ours)[: session.length]  # rejected branches left the cache
    assert session.cache.get_seq_length() == session.length


class NoTrees:
    """A session wrapper that fails if a tree is fed; ``supports_tree`` as given (False: as llama.cpp's)."""

    def __init__(self, session, supports_tree: bool = False) -> None:
        self.inner, self.supports_tree = session, supports_tree

    def __getattr__(self, name):
        if name in ("feed_tree", "keep_path"):
            raise AssertionError(f"{name} called on a session without trees")
        return getattr(self.inner, name)


def test_a_tree_is_reduced_to_its_main_path_without_tree_support_or_when_sampling(lm):
    prompt = prompts(1, seed=6)[0]
    plain = list(decode(lm, prompt, max_new_tokens=12))
    stats = SpecStats()
    ours = list(speculative_decode(lm, prompt, ScriptedTree(prompt, plain), max_new_tokens=12, stats=stats,
                                   session=NoTrees(lm.new_session()), policy=EAGER))
    assert_greedy_tokens(lm, prompt, ours, plain)
    assert stats.accepted.get("scripted", 0) == 0  # the main path holds the wrong tokens only
    # sampling verifies paths only (tree verification is greedy), even where the session could take a tree
    sampled = list(speculative_decode(lm, prompt, ScriptedTree(prompt, plain), max_new_tokens=12, temperature=1.0,
                                      session=NoTrees(lm.new_session(), supports_tree=True), policy=EAGER, seed=3))
    assert 0 < len(sampled) <= 12


@pytest.mark.parametrize("make", [tiny_lm, tiny_llama], ids=["qwen2", "llama"])
def test_token_recycling_trees_are_token_identical_to_plain_greedy(make):
    from rag.generation.drafters import RecycleTable, build_drafter

    lm = make(0)
    table = RecycleTable()
    tree_nodes = 0
    for prompt in prompts(3, seed=8):
        plain = list(decode(lm, prompt, max_new_tokens=40))
        stats = SpecStats()
        ours = list(speculative_decode(lm, prompt, build_drafter(["recycling-tree"], recycle=table),
                                       max_new_tokens=40, stats=stats, policy=EAGER))
        assert_greedy_tokens(lm, prompt, ours, plain)
        tree_nodes += stats.drafted.get("recycling", 0)
    assert tree_nodes > 0 and table.lookups > 0


def test_width_policy_prefers_cheap_widths():
    policy = WidthPolicy({1: 1.0, 2: 2.1, 3: 2.8, 4: 1.8, 8: 2.2, 16: 2.6})
    assert policy.choose([0.95] * 2) == 4  # a 2-token draft is padded to width 4 (cheaper than width 3)
    assert policy.choose([0.2] * 15) == 1  # unlikely drafts are not worth a wide pass
    assert policy.choose([0.9] * 15) in (8, 16)
    with pytest.raises(Exception, match="width 1"):
        WidthPolicy({4: 1.0})
    # a tree's expected tokens are 1 + the sum of its nodes' chances (best first)
    assert policy.choose_tree([0.9, 0.8, 0.1]) == 4  # 2.8 tokens for 1.8
    assert policy.choose_tree([0.1] * 15) == 1
    assert policy.choose_tree([0.5] * 15) == 16  # 8.5 for 2.6


def test_measured_width_costs_are_relative_to_one_token(lm):
    costs = measure_width_costs(lm, prompts(1)[0], [4, 8], repeats=1)
    assert costs[1] == 1.0 and set(costs) == {1, 4, 8} and all(c > 0 for c in costs.values())


def test_prefix_session_is_reused_and_copied(lm):
    prefix, prompt = prompts(1)[0][:20], prompts(1)[0]
    cached = lm.new_session()
    cached.feed(prefix)
    fork = cached.copy()
    stats = SpecStats()
    ours = list(speculative_decode(lm, prompt, SuffixAutomatonDrafter(), max_new_tokens=12, stats=stats, session=fork))
    assert stats.reused_prompt_tokens == 20 and cached.length == 20  # the cached prefix is untouched
    assert_greedy_tokens(lm, prompt, ours, list(decode(lm, prompt, max_new_tokens=12)))


# -- speculative sampling keeps the target distribution ---------------------------------------------


def test_verification_step_samples_from_the_target_distribution():
    """One verification step, many seeds: the first emitted token follows p, whatever the draft (chi-square)."""
    from scipy.stats import chisquare

    torch.manual_seed(0)
    vocab = 6
    target = torch.randn(2, vocab) * 1.5
    p = torch.softmax(target[0], dim=-1)
    q = torch.softmax(torch.randn(vocab), dim=-1)
    for draft_token, draft_probs in ((2, None), (int(torch.argmax(q)), [q])):
        counts = torch.zeros(vocab)
        generator = torch.Generator().manual_seed(1)
        for _ in range(2000):
            token = draft_token if draft_probs is None else int(torch.multinomial(q, 1, generator=generator))
            accepted, following = _verify(target, [token], draft_probs, 1.0, generator)
            counts[accepted[0] if accepted else following] += 1
        assert chisquare(counts.numpy(), (p * 2000).numpy()).pvalue > 1e-3


def test_speculative_sampling_preserves_next_token_frequencies():
    """The 2nd and 3rd generated tokens are produced by verification; their frequencies over many seeds
    match the exact target marginal, with and without speculation (chi-square, scipy)."""
    from scipy.stats import chisquare

    torch.set_num_threads(1)
    vocab = 8
    lm = tiny_lm(0, vocab=vocab, layers=1, eos=vocab + 5)  # no EOS inside the vocabulary
    draft_lm = tiny_lm(3, vocab=vocab, layers=1, eos=vocab + 5)
    prompt = [1, 2, 3, 4, 1, 2]
    with torch.inference_mode():
        first = torch.softmax(lm.model(torch.tensor([prompt])).logits[0, -1], dim=-1)
        second = torch.stack([torch.softmax(lm.model(torch.tensor([prompt + [t]])).logits[0, -1], dim=-1)
                              for t in range(vocab)])
    marginal = (first[:, None] * second).sum(0)  # distribution of the 2nd generated token
    runs = 500
    for name, make in (("plain", None), ("lookup", PromptLookupDrafter),
                       ("model", lambda: DraftModelDrafter(draft_lm, min_confidence=0.0))):
        counts = torch.zeros(vocab)
        for seed in range(runs):
            if make is None:
                out = list(decode(lm, prompt, max_new_tokens=2, temperature=1.0, seed=seed))
            else:
                out = list(speculative_decode(lm, prompt, make(), max_new_tokens=3, temperature=1.0, seed=seed,
                                              policy=EAGER))
            counts[out[1]] += 1
        assert chisquare(counts.numpy(), (marginal * runs).numpy()).pvalue > 1e-3, name


def test_a_biased_sampler_would_fail_the_check():
    """The chi-square check has power: accepting every draft (no rejection sampling) is detected."""
    from scipy.stats import chisquare

    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    for _ in range(2000):
        # the wrong rule: always keep the drafted token 0 half the time
        counts[0 if float(torch.rand(1, generator=generator)) < 0.5 else int(torch.multinomial(p, 1, generator=generator))] += 1
    assert chisquare(counts.numpy(), (p * 2000).numpy()).pvalue < 1e-6


# -- one short check on the real generator ------------------------------------------------------


def test_real_qwen_greedy_speculation_matches_plain():
    from rag.generation.drafters import build_drafter
    from rag.generation.hf import load_causal_lm

    torch.set_num_threads(2)
    qwen = load_causal_lm("qwen2.5-0.5b")
    for question in ("Copy this sentence exactly: the quick brown fox jumps over the lazy dog.",
                     "Passage: functools.lru_cache memoizes a function's results. Question: what memoizes results?"):
        prompt = qwen.encode_chat([{"role": "user", "content": question}])
        plain = list(decode(qwen, prompt, max_new_tokens=20))
        stats = SpecStats()
        ours = list(speculative_decode(qwen, prompt, build_drafter(["sam", "ngram"]), max_new_tokens=20, stats=stats))
        assert_greedy_tokens(qwen, prompt, ours, plain, qwen.tokenizer.decode(ours) + " | " + qwen.tokenizer.decode(plain))


# -- acceptance estimates and exploration ---------------------------------------------------------------


def test_tracker_priors_grow_with_match_length_and_learn_two_rates():
    from rag.generation.speculative import AcceptanceTracker

    tracker = AcceptanceTracker()
    firsts = [tracker.accept_probs("sam", length, 3)[0] for length in (0, 1, 2, 4, 8, 16)]
    assert firsts == sorted(firsts) and firsts[0] < firsts[-1]
    assert tracker.accept_probs("sam", 5, 0) == []
    before = tracker.accept_probs("sam", 5, 4)
    for _ in range(5):  # coincidental matches: the first token fails, nothing is learned about later tokens
        tracker.update("sam", 5, offered=4, accepted=0)
    after = tracker.accept_probs("sam", 5, 4)
    assert after[0] < before[0] and after[1:] == before[1:]
    for _ in range(5):  # copies under way: whole drafts accepted
        tracker.update("sam", 20, offered=8, accepted=8)
    assert min(tracker.accept_probs("sam", 20, 8)) > 0.9
    assert tracker.accept_probs("ngram", 5, 2) == before[:2]  # drafters are tracked apart


def test_tracker_buckets_match_their_labels():
    from rag.generation.speculative import AcceptanceTracker

    labels = AcceptanceTracker.bucket_labels()
    assert labels == ("0", "1", "2-3", "4-7", "8-15", "16+")
    for length in range(40):  # each length falls in the bucket whose label covers it
        label = labels[AcceptanceTracker.bucket(length)]
        low, _, high = label.rstrip("+").partition("-")
        assert int(low) <= length and (label.endswith("+") or length <= int(high or low))


def test_tracker_explores_a_key_the_policy_keeps_declining():
    from rag.generation.speculative import AcceptanceTracker

    tracker = AcceptanceTracker(explore_after=3)
    assert [tracker.declined("sam", 1) for _ in range(6)] == [False, False, True, False, False, True]
    tracker.declined("sam", 1)
    tracker.update("sam", 1, offered=2, accepted=1)  # a verified draft restarts the count
    assert [tracker.declined("sam", 1) for _ in range(3)] == [False, False, True]


def test_exploration_drafts_even_when_no_width_pays_at_the_estimate(lm):
    """Priors too low for any wide pass to pay: the loop still verifies a draft every few declines and
    stays token-identical to plain greedy decoding."""
    from rag.generation.speculative import AcceptanceTracker

    prompt = prompts(1, seed=6)[0] * 3  # repeated text, so lookup drafts exist
    plain = list(decode(lm, prompt, max_new_tokens=40))
    pessimist = AcceptanceTracker(first_priors=(0.01,) * 6, continue_prior=0.01, explore_after=4)
    stats = SpecStats()
    ours = list(speculative_decode(lm, prompt, SuffixAutomatonDrafter(), max_new_tokens=40, stats=stats,
                                   policy=WidthPolicy({1: 1.0, 8: 2.5}), tracker=pessimist))
    assert_greedy_tokens(lm, prompt, ours, plain)
    assert stats.verify_passes >= 1
    never = AcceptanceTracker(first_priors=(0.01,) * 6, continue_prior=0.01, explore_after=10**6)
    stats = SpecStats()
    list(speculative_decode(lm, prompt, SuffixAutomatonDrafter(), max_new_tokens=40, stats=stats,
                            policy=WidthPolicy({1: 1.0, 8: 2.5}), tracker=never))
    assert stats.verify_passes == 0


def test_models_with_sliding_window_attention_verify_trees_as_paths():
    """A custom tree mask replaces the model's own, so a sliding-window model would lose its window."""
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=16)
    mistral = TransformersEngine("tiny-mistral", MistralForCausalLM(config).eval(), None, eos_token_ids=frozenset({EOS}))
    assert not mistral.new_session().supports_tree
    assert tiny_lm().new_session().supports_tree and tiny_llama().new_session().supports_tree
