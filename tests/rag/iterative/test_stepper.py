"""The step decoder: a rollback restores exactly the state that decoding without the detour had, whether
the session is still held (crop) or must be rebuilt; on the real SmolLM2 pack."""

import pytest

from rag.generation.generator import GroundedGenerator
from rag.generation.hf import load_causal_lm
from rag.iterative.stepper import KEPT_SESSIONS, StepDecoder
from rag.types import Chunk, Context, Hit

TEXTS = {
    "a": "The Eiffel Tower was designed by the engineering firm of Gustave Eiffel and finished in 1889.",
    "b": "Gustave Eiffel was born in Dijon, France, in 1832 and trained at the Ecole Centrale in Paris.",
    "c": "Dijon is the capital of the Cote-d'Or department and is famous for its mustard.",
    "d": "Mustard seeds come from several plants of the cabbage family.",
}
QUESTION = "Where was the designer of the Eiffel Tower born?"


@pytest.fixture(scope="module")
def setup():
    generator = GroundedGenerator(model="smollm2-135m", engine="transformers:float32", answer_style="cited",
                                  max_new_tokens=40)
    lm = load_causal_lm("smollm2-135m")
    prompts = {}
    for key, text in TEXTS.items():
        hit = Hit(chunk=Chunk(id=key, doc_id=key, text=text, start=0, end=len(text), title=key), score=1.0, source="t")
        prompts[key] = lm.encode_chat(generator.messages(QUESTION, Context.from_hits([hit])))
    return generator, lm, prompts


def straight(setup, steps):
    generator, lm, prompts = setup
    decoder = StepDecoder(generator, lm)
    for key, n in steps:
        decoder.step(key, prompts[key], n)
    return decoder


def test_rollback_with_the_session_held_crops_and_gives_the_same_tokens(setup):
    generator, lm, prompts = setup
    expected = straight(setup, [("a", 6), ("a", 6), ("b", 6)]).generated
    decoder = StepDecoder(generator, lm)
    decoder.step("a", prompts["a"], 6)
    decoder.step("b", prompts["b"], 6)  # a wrong guess at position 6
    decoder.rewind(6)
    assert len(decoder.generated) == 6 and [c.key for c in decoder.changes] == ["a"]
    decoder.step("a", prompts["a"], 6)
    decoder.step("b", prompts["b"], 6)
    assert decoder.generated == expected
    assert decoder.stats.replayed_tokens == 1  # cropped, then the token before the step read again alone


def test_rollback_after_the_session_was_dropped_rebuilds_the_same_state(setup):
    generator, lm, prompts = setup
    expected = straight(setup, [("a", 5), ("a", 5), ("c", 5)]).generated
    decoder = StepDecoder(generator, lm)
    decoder.step("a", prompts["a"], 5)
    for key in "bcd"[:KEPT_SESSIONS]:  # enough changes to drop the session of "a"
        decoder.step(key, prompts[key], 2)
    reads = decoder.stats.rebuilds
    decoder.rewind(5)
    assert decoder.stats.rebuilds == reads + 1 and decoder.stats.replayed_tokens == 5
    decoder.step("a", prompts["a"], 5)
    decoder.step("c", prompts["c"], 5)
    assert decoder.generated == expected


def test_a_rollback_to_the_start_of_a_change_undoes_it(setup):
    generator, lm, prompts = setup
    expected = straight(setup, [("a", 4), ("c", 8)]).generated
    decoder = StepDecoder(generator, lm)
    decoder.step("a", prompts["a"], 4)
    decoder.step("b", prompts["b"], 8)
    decoder.rewind(4)
    decoder.step("c", prompts["c"], 8)
    assert decoder.generated == expected and [c.key for c in decoder.changes] == ["a", "c"]


def test_the_answer_ends_at_a_stop_string_and_the_length_limit(setup):
    generator, lm, prompts = setup
    short = GroundedGenerator(model="smollm2-135m", engine="transformers:float32", max_new_tokens=5)
    decoder = StepDecoder(short, lm)
    while not decoder.done:
        decoder.step("a", prompts["a"], 2)
    assert len(decoder.generated) == 5
    full = straight(setup, [("a", 40)])
    word = full.text.split()[1]
    stopping = GroundedGenerator(model="smollm2-135m", engine="transformers:float32", max_new_tokens=40, stop=[word])
    decoder = StepDecoder(stopping, lm)
    while not decoder.done:
        decoder.step("a", prompts["a"], 3)
    assert word not in decoder.text and full.text.startswith(decoder.text)
    with pytest.raises(ValueError):
        decoder.rewind(len(decoder.generated) + 1)
