"""Fuzzing the input boundaries (issue 21): corpus JSONL, component configs, queries.

Every generated input must end in a correct result or in a :class:`rag.errors.SpecragError` whose message
names the file and line, or the component and param, at fault: never an exception from inside a dependency.
``make test`` runs a bounded number of examples per boundary; ``SPECRAG_FUZZ_EXAMPLES=2000 make test-slow``
(or the environment variable with pytest) runs more. Each test records how many inputs it tried, and the
session prints the counts (``-s`` shows them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag.errors import SpecragError
from rag.io import read_documents
from rag.registry import build

EXAMPLES = int(os.environ.get("SPECRAG_FUZZ_EXAMPLES", "60"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
TRIED: dict[str, int] = {}


def tried(boundary: str) -> None:
    TRIED[boundary] = TRIED.get(boundary, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    for boundary, count in sorted(TRIED.items()):
        print(f"fuzz: {count} inputs tried at {boundary}")


# -- corpus JSONL --------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
good_record = st.fixed_dictionaries(
    {"_id": st.text(min_size=1, max_size=8), "text": st.text(min_size=1, max_size=40)},
    optional={"title": st.text(max_size=10), "metadata": st.dictionaries(st.text(max_size=4), st.integers(), max_size=2)},
)
odd_record = st.dictionaries(st.sampled_from(["_id", "id", "text", "title", "metadata", "extra"]), json_values,
                             max_size=5)


def encode(record: object) -> bytes:
    return json.dumps(record).encode("utf-8")


line = st.one_of(
    good_record.map(encode),
    odd_record.map(encode),
    good_record.map(encode).map(lambda b: b[: max(1, len(b) // 2)]),  # truncated
    json_values.map(encode),  # not an object
    st.binary(max_size=30),  # anything: invalid UTF-8, NUL bytes
    good_record.map(lambda r: encode({**r, "text": r["text"] + "\x00"})),
)


@fuzz
@given(lines=st.lists(line, max_size=6), bom=st.booleans(), crlf=st.booleans())
def test_a_corpus_file_reads_or_fails_naming_file_and_line(tmp_path_factory, lines, bom, crlf):
    tried("corpus JSONL")
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + (b"\r\n" if crlf else b"\n").join(lines))
    try:
        documents = read_documents(path)
    except SpecragError as exc:
        assert str(path) in str(exc), exc
        assert "line" in str(exc) or "corpus is empty" in str(exc), exc
        return
    assert documents and all(isinstance(d.text, str) and isinstance(d.id, str) and d.id for d in documents)
    assert len({d.id for d in documents}) == len(documents)


def test_a_byte_order_mark_and_crlf_line_ends_are_read(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"_id": "a", "text": "x"}\r\n{"_id": 7, "text": "y"}\r\n')
    assert [(d.id, d.text) for d in read_documents(path)] == [("a", "x"), ("7", "y")]


@pytest.mark.parametrize("record, message", [
    ({"_id": ["a"], "text": "x"}, "line 1: a document id must be a string or an integer, got list"),
    ({"_id": 1.5, "text": "x"}, "line 1: a document id must be a string or an integer, got float"),
    ({"_id": "a", "text": "x", "metadata": [1]}, "line 1 \\(document 'a'\\): 'metadata' must be a JSON object"),
])
def test_wrong_types_in_a_record_name_the_field(tmp_path, record, message):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(SpecragError, match=message):
        read_documents(path)


def test_a_ten_megabyte_field_is_read(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"_id": "big", "text": "word " * 2_000_000}) + "\n")
    assert len(read_documents(path)[0].text) == 10_000_000


# -- component configs ---------------------------------------------------------------------------------

ROLE_NAMES = [("chunker", "recursive"), ("chunker", "fixed"), ("chunker", "semantic"), ("index", "dense"),
              ("index", "bm25s"), ("index", "late"), ("filter", "top-k"), ("filter", "threshold"),
              ("compressor", "extractive"), ("compressor", "surprisal"), ("generator", "grounded"),
              ("reranker", "llm-pointwise")]
param_values = st.one_of(
    json_values, st.integers(min_value=-(10**30), max_value=10**30), st.floats(), st.text(max_size=30),
)


@fuzz
@given(which=st.sampled_from(ROLE_NAMES), data=st.data())
def test_a_component_config_builds_or_fails_naming_the_param(which, data):
    tried("component config")
    role, name = which
    cls = type(build(role, name))
    import inspect

    names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"] + ["not_a_param"]
    params = data.draw(st.dictionaries(st.sampled_from(names), param_values, max_size=3))
    try:
        component = build(role, {"type": name, "params": params})
    except SpecragError as exc:
        text = str(exc)
        assert name in text or any(p in text for p in params), text
        return
    # built: its config round-trips (cheap constructors load nothing)
    assert build(role, component.to_config()) == component


@fuzz
@given(spec=json_values)
def test_any_json_value_as_a_spec_is_refused_clearly_or_built(spec):
    tried("component spec")
    try:
        build("filter", spec)
    except SpecragError:
        pass


def test_a_pipeline_config_with_wrong_types_names_the_field(tmp_path):
    from rag.pipeline import Pipeline

    import yaml

    path = tmp_path / "p.yaml"
    config = Pipeline().to_config()
    path.write_text(yaml.safe_dump({**config, "filters": [{"type": "top-k", "params": {"k": "five"}}]}))
    with pytest.raises(SpecragError, match="filter 'top-k': param 'k' = 'five': Input should be a valid integer"):
        Pipeline.from_config(path)
    path.write_text(yaml.safe_dump({**config, "retrieve_k": 1e400}))
    with pytest.raises(SpecragError, match="retrieve_k"):
        Pipeline.from_config(path)
    path.write_text("a: &x [*x]\n")  # a recursive reference
    with pytest.raises(SpecragError, match=str(path)):
        Pipeline.from_config(path)


# -- queries -------------------------------------------------------------------------------------------

query_text = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["", "   ", "\t\n", "AND OR NOT", "title:(x", "\"unclosed", "a* ?b ~c^2", "\\", "/regex/",
                     "مرحبا بالعالم", "שלום עולם", "😀🔥 emoji", "\x00\x01\x1b[31m", "x" * 100_000]),
)


@pytest.fixture(scope="module")
def indexes():
    from tests.indexes.corpus import DOCS, make_chunks

    built = {}
    for spec in ("bm25s", "bm25", {"type": "dense", "params": {"model": "minilm"}}):
        index = build("index", spec)
        index.add(make_chunks(list(DOCS)))
        built[spec if isinstance(spec, str) else spec["type"]] = index
    return built


@fuzz
@given(queries=st.lists(query_text, min_size=1, max_size=3), k=st.integers(min_value=1, max_value=5))
def test_any_query_text_searches_or_is_refused_clearly(indexes, queries, k):
    tried("queries")
    for kind, index in indexes.items():
        try:
            results = index.search(queries, k)
        except SpecragError as exc:
            assert kind in str(exc) or "query" in str(exc), exc
            continue
        assert len(results) == len(queries) and all(len(hits) <= k for hits in results)
