"""Iterative RaLM: speculative retrieval gives the naive loop's answers token for token (with the index's
own scores in the guess cache, with embeddings reused, and with the last-retrieval guess of an index that
cannot score chunks), and records what it did; on a slice of the HotpotQA sample with real small models."""

import json

import pytest

from rag.errors import InputError
from rag.pipeline import Pipeline
from rag.registry import build
from rag.types import Document

GENERATOR = {"type": "grounded", "params": {"model": "smollm2-135m", "engine": "transformers:float32",
                                            "answer_style": "cited", "max_new_tokens": 24}}


@pytest.fixture(scope="module")
def hotpot(data_dir):
    folder = data_dir / "hotpotqa-dev-fullwiki-500"
    with (folder / "corpus.jsonl").open() as handle:
        rows = [json.loads(line) for _, line in zip(range(300), handle)]
    docs = [Document(id=r["_id"], text=r["text"], title=r.get("title", "")) for r in rows]
    with (folder / "queries.jsonl").open() as handle:
        questions = [json.loads(line)["text"] for _, line in zip(range(3), handle)]
    return docs, questions


@pytest.fixture(scope="module")
def dense_index(hotpot):
    index = build("index", {"type": "dense", "params": {"model": "minilm"}})
    index.add(Pipeline(index="bm25s").chunker.chunk_many(hotpot[0]))
    return index


def answers(index, questions, **loop):
    pipeline = Pipeline(index="bm25s", compressor=None, generator=GENERATOR, loop={"type": "ralm", "params": loop})
    pipeline.index = index
    result = [pipeline.ask(q) for q in questions]
    return [a.text for a in result], [a.trace.stages[1].extra for a in result]


class Unscored:
    """An index that cannot score given chunks (like a fusion of rankings): only search."""

    def __init__(self, index):
        self.inner = index

    def search(self, queries, k):
        return self.inner.search(queries, k)


def test_speculative_retrieval_gives_the_naive_answers(dense_index, hotpot):
    questions = hotpot[1]
    naive, naive_extra = answers(dense_index, questions, stride=3, k=2, speculative=False)
    assert all(e["searches"] == e["queries"] >= 1 for e in naive_extra)
    assert any(e["prompt_reads"] > 1 for e in naive_extra), "the passages never changed: the test proves little"
    adaptive, adaptive_extra = answers(dense_index, questions, stride=3, k=2)
    assert adaptive == naive
    # Searching this small index is cheap against a step: the scheduler searches for real first, and keeps
    # measuring its shadow guesses.
    assert adaptive_extra[0]["real_steps"] >= 1
    assert all(e["guesses_right"] <= e["guesses_checked"] for e in adaptive_extra)
    # A tiny cache and long fixed strides: guesses go wrong and roll back, answers still equal.
    rolled, extra = answers(dense_index, questions, stride=3, k=2, prefetch=2, speculation_stride=3)
    assert rolled == naive
    assert sum(e["rollbacks"] for e in extra if "rollbacks" in e) >= 1
    for e in extra:
        assert e["cache_scorer"] == "index" and 0 <= e["speculation_accuracy"] <= 1
        assert e["guesses_right"] <= e["guesses_checked"] and e["mean_speculation_stride"] >= 1


def test_an_index_that_cannot_score_chunks_is_guessed_from_its_last_retrieval(dense_index, hotpot):
    questions = hotpot[1][:2]
    naive, _ = answers(Unscored(dense_index), questions, stride=3, k=2, context="extend", speculative=False)
    guessed, extra = answers(Unscored(dense_index), questions, stride=3, k=2, context="extend", speculation_stride=2)
    assert guessed == naive and all(e["cache_scorer"] == "last retrieval" for e in extra)


def test_bad_settings_are_refused_by_name():
    for params, word in (({"stride": 0}, "stride"), ({"k": 0}, "k"), ({"context": "merge"}, "context"),
                         ({"speculation_stride": 0}, "speculation_stride")):
        with pytest.raises(InputError, match=word):
            build("loop", {"type": "ralm", "params": params})
    pipeline = Pipeline(index="bm25s", generator=None, loop="ralm")
    pipeline.ingest([Document(id="d", text="Some text about birds.")])
    with pytest.raises(InputError, match="grounded generator"):
        pipeline.ask("birds?")


def test_a_pipeline_with_a_loop_round_trips_and_one_without_keeps_its_config():
    pipeline = Pipeline(loop={"type": "ralm", "params": {"stride": 2}})
    again = Pipeline.from_config(pipeline.to_config())
    assert again == pipeline and again.loop.stride == 2
    assert "loop" not in Pipeline().to_config()
    assert Pipeline.from_config(Pipeline().to_config()).loop is None
