"""The contract every registered component keeps, checked for each name the registry knows.

Any component, built by name with its defaults: its config round-trips to an equal component, and its
constructor is cheap (no model loads). Then per role, on a small corpus: chunkers cut exact, non-empty,
ordered spans and nothing from an empty document; filters and rerankers return hits drawn from their input
(nothing from nothing); compressors keep text of the chunks they were given; indexes find what they hold,
forget what is deleted, refuse a duplicate id without losing anything, and come back equal from disk. A new
component registered under a new name is checked here without writing a test for it; the role's own test
file holds what is particular to it. The sharded index (Ray workers) is in the slow tier.
"""

from __future__ import annotations

import time

import pytest

from rag.errors import InputError
from rag.registry import build, known
from rag.types import Chunk, Context, Document, Hit

CORPUS = {
    "aspirin": "Aspirin thins the blood and lowers the risk of a heart attack. It can upset the stomach.",
    "insulin": "Insulin lowers blood glucose by helping cells absorb sugar. People with type 1 diabetes inject it.",
    "violin": "The violin is a string instrument played with a bow. Stradivari built violins in Cremona.",
    "paris": "Paris is the capital of France. The Seine runs through the city from east to west.",
    "python": "Python is a programming language. Its functools module caches results with lru_cache.",
    "glacier": "A glacier is a mass of ice that moves slowly. Glaciers carve valleys as they flow downhill.",
}
QUERY = "what lowers blood sugar?"

# Components whose defaults need something the test machine has no way to supply: a hub model id.
NEEDS_A_HUB = {("reranker", "cross-encoder")}
# Components that cannot be built without a param (a fitted file): built without it, a clear error names it.
NEEDS_A_PARAM = {("filter", "calibrated"): "path", ("compressor", "classifier"): "model"}
# Built with small models and pinned engines so the checks stay fast (the defaults are tested elsewhere).
SMALL = {
    ("chunker", "perplexity"): {"model": "smollm2-135m", "engine": "transformers:float32"},
    ("chunker", "margin"): {"model": "smollm2-135m", "engine": "transformers:float32"},
    ("reranker", "llm-pointwise"): {"model": "smollm2-135m", "engine": "transformers:float32"},
    ("reranker", "first"): {"model": "smollm2-135m", "engine": "transformers:float32"},
    ("compressor", "surprisal"): {"model": "smollm2-135m", "engine": "transformers:float32"},
}
SLOW_INDEXES = {"sharded"}
# Index kinds that train on their first add and refuse fewer chunks (IVF-PQ: 256) get filler chunks too.
FILLER = {"dense-ivfpq": 300}


def chunks(filler: int = 0) -> list[Chunk]:
    texts = {**CORPUS, **{f"filler{i}": f"Filler note {i} on topic {i % 17} of the archive." for i in range(filler)}}
    return [Chunk(id=f"{name}#0", doc_id=name, text=text, start=0, end=len(text), title=name)
            for name, text in texts.items()]


def hits() -> list[Hit]:
    return [Hit(chunk=c, score=1.0 - i / 10, source="test") for i, c in enumerate(chunks())]


def names(role: str) -> list[str]:
    return known(role)


def small(role: str, name: str) -> dict:
    return {"type": name, "params": SMALL.get((role, name), {})}


@pytest.mark.parametrize("role,name", [(role, name) for role in ("chunker", "index", "reranker", "filter", "compressor",
                                                                   "generator", "loop") for name in known(role)])
def test_every_component_builds_cheaply_and_round_trips_its_config(role, name):
    if (role, name) in NEEDS_A_PARAM:
        with pytest.raises(InputError, match=NEEDS_A_PARAM[role, name]):
            build(role, name)
        return
    started = time.perf_counter()
    component = build(role, name)
    built_in = time.perf_counter() - started
    config = component.to_config()
    again = build(role, config)
    assert again == component and again.to_config() == config
    assert repr(component).startswith(type(component).__name__)
    # Cheap constructors: no model or JVM is loaded to build one (a load takes seconds).
    assert built_in < 2.0, f"{role} {name!r} took {built_in:.1f} s to construct"


@pytest.mark.parametrize("name", names("chunker"))
def test_chunkers_cut_exact_ordered_spans(name):
    chunker = build("chunker", small("chunker", name))
    docs = [Document(id=key, text=text) for key, text in CORPUS.items()]
    for doc in docs[:3]:
        pieces = chunker.chunk(doc)
        assert pieces, f"{name}: no chunk from {doc.id}"
        assert all(doc.text[c.start:c.end] == c.text and c.text.strip() and c.doc_id == doc.id for c in pieces)
        assert [c.start for c in pieces] == sorted(c.start for c in pieces)
        assert len({c.id for c in pieces}) == len(pieces)
    assert chunker.chunk(Document(id="blank", text="  \n ")) == []


@pytest.mark.parametrize("name", [n for n in names("filter") if n != "calibrated"])
def test_filters_return_hits_from_their_input(name):
    component = build("filter", name)
    given = hits()
    kept = component.filter(QUERY, given)
    assert {h.chunk.id for h in kept} <= {h.chunk.id for h in given}
    assert component.filter(QUERY, []) == []


@pytest.mark.parametrize("name", [n for n in names("reranker") if ("reranker", n) not in NEEDS_A_HUB])
def test_rerankers_return_k_hits_from_their_input(name):
    component = build("reranker", small("reranker", name))
    given = hits()
    ranked = component.rerank(QUERY, given, 3)
    assert len(ranked) == 3 and {h.chunk.id for h in ranked} <= {h.chunk.id for h in given}
    assert component.rerank(QUERY, [], 3) == []
    with pytest.raises(InputError):
        component.rerank(QUERY, given, 0)


@pytest.mark.parametrize("name", names("loop"))
def test_loops_answer_and_report_what_they_retrieved(name):
    from rag.pipeline import Pipeline

    pipeline = Pipeline(index="bm25s", compressor=None, loop=name, generator={"type": "grounded", "params": {
        "model": "smollm2-135m", "engine": "transformers:float32", "answer_style": "short", "max_new_tokens": 8}})
    pipeline.ingest([Document(id=key, text=text, title=key) for key, text in CORPUS.items()])
    heard = []
    answer = pipeline.ask(QUERY, on_stage=lambda q, stage, output: heard.append((stage, output)))
    stages = [record.stage for record in answer.trace.stages]
    assert stages[0] == "retrieve" and "loop" in stages and "generate" in stages
    assert isinstance(answer.text, str) and answer.hits
    shown = dict(heard)["loop"]
    assert shown and {h.chunk.doc_id for h in shown} <= set(CORPUS)


@pytest.mark.parametrize("name", [n for n in names("compressor") if n != "classifier"])
def test_compressors_keep_text_of_the_chunks_given(name):
    component = build("compressor", small("compressor", name))
    given = hits()[:3]
    context = component.compress(QUERY, given, 40)
    assert isinstance(context, Context) and context.passages
    by_id = {h.chunk.id: h.chunk.text for h in given}
    for passage in context.passages:
        assert passage.chunk.id in by_id
    assert not component.compress(QUERY, [], 40).passages


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_INDEXES else n
                                  for n in names("index")])
def test_indexes_find_forget_refuse_and_persist(name, tmp_path):
    index = build("index", name)
    given = chunks(FILLER.get(name, 0))
    index.add(given)
    assert len(index) == len(given)
    (top,) = index.search([QUERY], 3)
    assert top and len(top) <= 3 and all(h.chunk.id in {c.id for c in given} for h in top)
    assert [h.score for h in top] == sorted((h.score for h in top), reverse=True)
    assert index.search([], 3) == []
    with pytest.raises(InputError, match="already in the index"):
        index.add(chunks()[:1])
    assert len(index) == len(given)  # the refused batch changed nothing
    assert index.delete(["insulin#0", "insulin#0", "no-such-id"]) == 1  # repeats and unknown ids skipped
    assert len(index) == len(given) - 1
    assert index.delete("violin#0") == 1 and len(index) == len(given) - 2  # one str is one id
    assert index.delete(["violin#0"]) == 0
    assert all(h.chunk.id not in ("insulin#0", "violin#0") for h in index.search([QUERY], len(given))[0])
    index.save(tmp_path / "saved")
    loaded = build("index", index.to_config())
    loaded.load(tmp_path / "saved")
    assert len(loaded) == len(index)
    assert [h.chunk.id for h in loaded.search([QUERY], 3)[0]] == [h.chunk.id for h in index.search([QUERY], 3)[0]]
