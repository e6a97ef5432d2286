"""Context-aware decoding: the contrast session's logits, its cache bookkeeping, speculation on top of it,
and the generator's option, on the real SmolLM2 pack."""

from __future__ import annotations

import pytest
import torch

from rag.errors import InputError
from rag.generation.contrast import ContrastSession
from rag.generation.decode import decode
from rag.generation.drafters import build_drafter
from rag.generation.engine import load_engine
from rag.generation.generator import GroundedGenerator
from rag.generation.speculative import WidthPolicy, speculative_decode
from rag.registry import build
from tests.rag.generation.test_engines import ENGINES, check_same_or_near_tie, engine_or_skip
from tests.rag.generation.test_generator import make_context

QUESTION = "How do I cache the results of an expensive function?"


def prompts(lm) -> tuple[list[int], list[int]]:
    generator = GroundedGenerator(model=lm.spec)
    return (lm.encode_chat(generator.messages(QUESTION, make_context())),
            lm.encode_chat(generator.messages_without_context(QUESTION)))


def test_contrast_logits_are_the_papers_mix_of_two_independent_sessions():
    lm = load_engine("smollm2-135m", "transformers:float32")
    with_passages, without = prompts(lm)
    session = ContrastSession(lm.new_session(), lm.new_session(), without, alpha=0.5)
    mixed = session.prefill(with_passages)
    a, b = lm.new_session(), lm.new_session()
    expected = 1.5 * a.prefill(with_passages).float() - 0.5 * b.prefill(without).float()
    torch.testing.assert_close(mixed, expected, atol=1e-4, rtol=0)
    answer = [int(mixed.argmax()), 13, 42]
    torch.testing.assert_close(session.feed_all(answer),
                               1.5 * a.feed_all(answer).float() - 0.5 * b.feed_all(answer).float(), atol=1e-4, rtol=0)
    assert session.tokens == with_passages + answer and session.without_context.tokens == without + answer
    twin = session.copy()  # a copy continues on its own
    session.crop(len(with_passages) + 1)  # rollback reaches both sessions
    assert session.without_context.tokens == without + answer[:1] and twin.length == len(with_passages) + 3
    again = session.feed([13])
    torch.testing.assert_close(again, twin.prefill(with_passages + answer[:2]), atol=1e-3, rtol=0)
    assert session.extra_prefill_seconds > 0
    with pytest.raises(InputError, match="end before the prompt"):
        session.crop(3)
    with pytest.raises(InputError, match="alpha must be at least 0"):
        ContrastSession(lm.new_session(), lm.new_session(), without, alpha=-1)
    plain = ContrastSession(lm.new_session(), lm.new_session(), without, alpha=0.0)
    torch.testing.assert_close(plain.prefill(with_passages), lm.new_session().prefill(with_passages).float(),
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ENGINES)
def test_speculative_decoding_under_cad_reproduces_cad_greedy(name):
    lm = engine_or_skip(name)
    with_passages, without = prompts(lm)

    def contrast():
        return ContrastSession(lm.new_session(), lm.new_session(), without, alpha=1.0)

    plain = list(decode(lm, with_passages, max_new_tokens=30, session=contrast()))
    fast = list(speculative_decode(lm, with_passages, build_drafter(["sam", "ngram"]), max_new_tokens=30,
                                   session=contrast(), policy=WidthPolicy({1: 1.0, 4: 1.2, 8: 1.3})))

    class _Contrasted:  # check_same_or_near_tie reads CAD greedy's logits where the two outputs part
        name = lm.name

        def new_session(self):
            session = contrast()
            session.prefill(with_passages)  # the prompt first: it marks where the answer starts
            return session

    check_same_or_near_tie(_Contrasted(), with_passages, plain, fast)
    # tree drafts (token recycling) verify against the contrasted logits too, where the engine takes trees
    session = contrast()
    assert session.supports_tree
    tree = list(speculative_decode(lm, with_passages, build_drafter(["recycling-tree"]), max_new_tokens=30,
                                   session=session, policy=WidthPolicy({1: 1.0, 4: 1.2, 8: 1.3})))
    check_same_or_near_tie(_Contrasted(), with_passages, plain, tree)


def test_sampling_under_cad_draws_each_token_from_the_contrasted_distribution():
    """Seeded sampling on a contrast session replays exactly as the same seeded draws from the mix of two
    independent sessions' logits (the paper's distribution at temperature T)."""
    lm = load_engine("smollm2-135m", "transformers:float32")
    with_passages, without = prompts(lm)
    session = ContrastSession(lm.new_session(), lm.new_session(), without, alpha=1.0)
    sampled = list(decode(lm, with_passages, max_new_tokens=12, temperature=1.5, seed=7, session=session))
    generator = torch.Generator().manual_seed(7)
    a, b = lm.new_session(), lm.new_session()
    with_logits, without_logits = a.prefill(with_passages), b.prefill(without)
    expected = []
    for _ in range(12):
        mixed = (1 + 1.0) * with_logits.float() - 1.0 * without_logits.float()
        token = int(torch.multinomial(torch.softmax(mixed / 1.5, dim=-1), 1, generator=generator))
        if token in lm.eos_token_ids:
            break
        expected.append(token)
        with_logits, without_logits = a.feed([token]), b.feed([token])
    assert sampled == expected and len(sampled) > 3
    greedy = list(decode(lm, with_passages, max_new_tokens=12,
                         session=ContrastSession(lm.new_session(), lm.new_session(), without, alpha=1.0)))
    assert sampled != greedy  # it did sample


def test_generator_option_records_alpha_and_the_extra_prefill():
    generator = GroundedGenerator(model="smollm2-135m", engine="transformers:float32", max_new_tokens=16,
                                  context_aware=0.5)
    answer = generator.generate(QUESTION, make_context())
    (record,) = [r for r in answer.trace.stages if r.stage == "generate"]
    assert record.extra["context_aware"] == 0.5 and record.extra["contrast_prompt_tokens"] > 0
    assert record.extra["contrast_prefill_seconds"] > 0
    assert build("generator", generator.to_config()) == generator
    assert "context_aware" not in [r for r in GroundedGenerator(model="smollm2-135m", max_new_tokens=4,
                                                                engine="transformers:float32")
                                   .generate(QUESTION, make_context()).trace.stages[0].extra]
    with pytest.raises(InputError, match="context_aware must be at least 0"):
        GroundedGenerator(context_aware=-0.5)
