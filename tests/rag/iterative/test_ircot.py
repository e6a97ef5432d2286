"""IRCoT: reasoning sentences become queries, new passages join the chat numbered on, and the pipeline's
generator answers from all of them; on the real SmolLM2 pack and the bm25s index."""

import pytest

from rag.errors import InputError
from rag.iterative.ircot import _next_turn
from rag.pipeline import Pipeline
from rag.registry import build
from rag.types import Chunk, Document, Hit

TEXTS = {
    "tower": "The Eiffel Tower was designed by the engineering firm of Gustave Eiffel and finished in 1889.",
    "eiffel": "Gustave Eiffel was born in Dijon, France, in 1832 and trained at the Ecole Centrale in Paris.",
    "dijon": "Dijon is the capital of the Cote-d'Or department and is famous for its mustard.",
    "mustard": "Mustard seeds come from several plants of the cabbage family.",
    "louvre": "The Louvre is the world's most visited museum and holds the Mona Lisa.",
}


def test_ircot_reasons_retrieves_and_answers_from_the_passages_it_collected():
    generator = {"type": "grounded", "params": {"model": "smollm2-135m", "engine": "transformers:float32",
                                                "answer_style": "short", "max_new_tokens": 12}}
    pipeline = Pipeline(index="bm25s", compressor=None, generator=generator,
                        loop={"type": "ircot", "params": {"k": 1, "max_steps": 2, "max_passages": 3}})
    pipeline.ingest([Document(id=key, text=text, title=key) for key, text in TEXTS.items()])
    heard = {}
    answer = pipeline.ask("Where was the designer of the Eiffel Tower born?",
                          on_stage=lambda q, stage, output: heard.setdefault(stage, output))
    loop = next(r for r in answer.trace.stages if r.stage == "loop")
    steps = loop.extra["steps"]
    assert 1 <= len(steps) <= 2 and all("sentence" in s for s in steps)
    assert loop.extra["searches"] == sum(1 for s in steps if "query" in s)
    assert 1 <= len(answer.hits) <= 3 and [h.chunk.id for h in heard["loop"]] == [h.chunk.id for h in answer.hits]
    assert answer.hits[0].chunk.doc_id == "tower"  # the first retrieval's best hit starts the passages
    assert [r.stage for r in answer.trace.stages][-1] == "generate"


def test_new_passages_are_numbered_on_from_those_shown():
    hits = [Hit(chunk=Chunk(id=f"c{i}", doc_id=f"d{i}", text=f"text {i}", start=0, end=6, title=f"t{i}"),
                score=1.0, source="t") for i in range(2)]
    turn = _next_turn(hits, numbered=3)
    assert "[4] t0: text 0" in turn and "[5] t1: text 1" in turn and "[1]" not in turn


def test_bad_settings_are_refused_by_name():
    for name in ("k", "max_steps", "max_passages", "sentence_tokens"):
        with pytest.raises(InputError, match=name):
            build("loop", {"type": "ircot", "params": {name: 0}})
    with pytest.raises(InputError, match="min_steps"):
        build("loop", {"type": "ircot", "params": {"min_steps": 4, "max_steps": 3}})
