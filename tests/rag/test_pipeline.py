"""The pipeline end to end with real components: recursive chunker, dense MiniLM on faiss, a small LM."""

import pytest

from rag.errors import InputError, UnknownComponentError
from rag.pipeline import Pipeline
from rag.types import Document

DOCS = [
    Document(id="functools.lru_cache", title="functools.lru_cache",
             text="Least-recently-used cache decorator. It memoizes the results of an expensive function so "
                  "that repeated calls with the same arguments are answered from the cache."),
    Document(id="os.path.join", title="os.path.join", text="Join two or more pathname components."),
    Document(id="json.dumps", title="json.dumps", text="Serialize obj to a JSON formatted str."),
    Document(id="random.shuffle", title="random.shuffle", text="Shuffle list x in place, and return None."),
]


def small_pipeline(**overrides) -> Pipeline:
    params = dict(chunker={"type": "recursive", "params": {"max_tokens": 64}},
                  generator={"type": "grounded", "params": {"model": "smollm2-135m", "max_new_tokens": 16}},
                  filters=[{"type": "top-k", "params": {"k": 2}}], retrieve_k=3)
    params.update(overrides)
    return Pipeline(**params)


def test_config_round_trip_gives_an_equal_pipeline(tmp_path):
    pipeline = small_pipeline()
    assert Pipeline.from_config(pipeline.to_config()) == pipeline
    from rag.config import dump_config

    for suffix in ("yaml", "json"):
        dump_config(pipeline.to_config(), tmp_path / f"p.{suffix}")
        assert Pipeline.from_config(tmp_path / f"p.{suffix}") == pipeline
    assert Pipeline.from_config(pipeline.to_config()) != small_pipeline(retrieve_k=4)


def test_bad_configs_are_named(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("chunker: {type: recursive}\nindex: {type: nope}\n")
    with pytest.raises(UnknownComponentError, match="unknown index 'nope'; known index names: .*dense"):
        Pipeline.from_config(bad)
    bad.write_text("chunker: {type: recursive}\n")
    with pytest.raises(InputError, match=r"p\.yaml: invalid pipeline config: index: Field required"):
        Pipeline.from_config(bad)
    bad.write_text("chunker: [unclosed\n")
    with pytest.raises(InputError, match=r"p\.yaml: malformed yaml"):
        Pipeline.from_config(bad)


def test_ingest_ask_save_load(tmp_path):
    pipeline = small_pipeline()
    trace = pipeline.ingest(DOCS)
    assert [r.stage for r in trace.stages] == ["chunk", "index"] and len(pipeline.index) == 4
    answer = pipeline.ask("How can I memoize an expensive function?")
    assert answer.hits[0].chunk.doc_id == "functools.lru_cache"
    assert len(answer.hits) == 2 and answer.text
    assert [r.stage for r in answer.trace.stages] == ["retrieve", "filter", "compress", "generate"]  # the default compresses
    pipeline.save(tmp_path / "saved")
    loaded = Pipeline.load(tmp_path / "saved")
    assert loaded == pipeline and len(loaded.index) == 4
    again = loaded.ask("How can I memoize an expensive function?")
    assert [h.chunk.id for h in again.hits] == [h.chunk.id for h in answer.hits]
    assert again.text == answer.text


def test_ask_many_batches_retrieval():
    pipeline = small_pipeline(generator=None)
    pipeline.ingest(DOCS)
    answers = pipeline.ask_many(["join paths", "shuffle a list"])
    assert [a.hits[0].chunk.doc_id for a in answers] == ["os.path.join", "random.shuffle"]


def test_each_stage_reports_its_output_in_order():
    """``on_stage`` hears every stage's output, per question, in the order the stages run (eval rag's recall
    per stage reads it)."""
    from rag.types import Context

    pipeline = small_pipeline(generator=None, filters=[{"type": "top-k", "params": {"k": 3}},
                                                       {"type": "top-k", "params": {"k": 2}}])
    pipeline.ingest(DOCS)
    heard = []
    answers = pipeline.ask_many(["join paths", "shuffle a list"], on_stage=lambda q, stage, out: heard.append((q, stage, out)))
    stages = ["retrieve", "filter", "filter.2", "compress"]
    assert [(q, stage) for q, stage, _ in heard] == [(q, s) for q in ("join paths", "shuffle a list") for s in stages]
    for number, answer in enumerate(answers):
        mine = heard[4 * number:4 * number + 4]
        assert [len(out) for _, _, out in mine[:3]] == [3, 3, 2]
        assert mine[2][2] == answer.hits and isinstance(mine[3][2], Context)
    # no observer: the same hits (scores may differ in the last bits: a batch of one encodes alone)
    assert [h.chunk.id for h in pipeline.ask("join paths").hits] == [h.chunk.id for h in answers[0].hits]


def test_bad_input_is_rejected_and_loses_nothing():
    pipeline = small_pipeline(generator=None)
    pipeline.ingest(DOCS[:2])
    with pytest.raises(InputError, match="corpus is empty"):
        pipeline.ingest([])
    with pytest.raises(InputError, match="document 'blank' has no text"):
        pipeline.ingest([DOCS[2], Document(id="blank", text="  ")])
    assert len(pipeline.index) == 2  # the failed batch added nothing
    with pytest.raises(InputError, match="question 0 is empty"):
        pipeline.ask(" ")


def test_loading_a_directory_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(InputError, match="not a saved pipeline"):
        Pipeline.load(tmp_path)
