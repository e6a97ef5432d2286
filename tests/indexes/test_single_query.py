"""One str given where a batch of queries is expected is one query, in every index and batch-first component.

A str is iterable, so ``index.search("a question", 5)`` used to search each character as a query and return
one hit list per character. :func:`rag.protocols.text_batch` makes one str a batch of one everywhere.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

from rag.errors import InputError
from rag.registry import build, known
from rag.types import Hit
from tests.indexes.corpus import DOCS, make_chunks

QUERY = "blood clots and platelets"


def _sharded() -> Any:
    ray = pytest.importorskip("ray")
    from indexes.sharded import ShardedIndex

    if not ray.is_initialized():  # test_sharded's module fixture shuts its cluster down; start our own
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    return ShardedIndex(shard="bm25s", shards=2, threads=1)


# Every registered index class, each built small. A kind added to the registry without a builder here fails
# test_every_registered_index_kind_is_covered.
BUILDERS: dict[str, Callable[[], Any]] = {
    "dense": lambda: build("index", {"type": "dense", "params": {"model": "minilm"}}),
    "bm25": lambda: build("index", "bm25"),
    "bm25s": lambda: build("index", "bm25s"),
    "hybrid": lambda: build("index", {"type": "hybrid", "params": {"members": ["bm25s", "dense"]}}),
    "splade": lambda: build("index", "splade"),
    "late": lambda: build("index", {"type": "late", "params": {"model": "minilm", "nlist": 8, "nprobe": 2,
                                                               "candidates": 4}}),
    "late-rerank": lambda: build("index", {"type": "late-rerank", "params": {"model": "minilm", "depth": 5}}),
    "sharded": _sharded,
}


@pytest.fixture(scope="module", autouse=True)
def _ray_cleanup():
    yield
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def ids(results: list[list[Hit]]) -> list[list[str]]:
    return [[h.chunk.id for h in hits] for hits in results]


def test_every_registered_index_kind_is_covered() -> None:
    covered = {type(build_index()) for name, build_index in BUILDERS.items() if name != "sharded"}
    from indexes.sharded import ShardedIndex

    covered.add(ShardedIndex)
    # Kinds that other test modules register for their own use (test_sharded's slow index) are not product.
    product = [name for name in known("index") if not type(build("index", name)).__module__.startswith("tests.")]
    missing = sorted(name for name in product if type(build("index", name)) not in covered)
    assert not missing, f"index kinds without a single-query test: {missing}"


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_one_str_is_one_query_in_every_index(kind: str) -> None:
    index = BUILDERS[kind]()
    index.add(make_chunks(list(DOCS)))
    one = index.search(QUERY, 3)
    assert isinstance(one, list) and len(one) == 1, f"{kind}: {len(one)} hit lists for one query"
    assert all(isinstance(hit, Hit) for hit in one[0]) and one[0]
    as_list = index.search([QUERY], 3)
    assert ids(one) == ids(as_list)
    assert [h.score for h in one[0]] == pytest.approx([h.score for h in as_list[0]], rel=1e-5)
    assert one[0][0].chunk.doc_id in {"aspirin", "clots"}
    # bytes iterate as ints and a bare number is no batch: both are refused with the index named.
    with pytest.raises(InputError, match=f"{kind} index .*expected a str or a list of str, got a bytes"):
        index.search(QUERY.encode(), 3)
    with pytest.raises(InputError, match="query 1 is a int, not a str"):
        index.search([QUERY, 3], 3)


def test_text_batch() -> None:
    from rag.protocols import text_batch

    assert text_batch("one text", "t") == ["one text"]
    assert text_batch(("a", "b"), "t") == ["a", "b"]
    assert text_batch(iter(["a"]), "t") == ["a"]
    assert text_batch([], "t") == []
    with pytest.raises(InputError, match="t: expected a str or a list of str, got a int"):
        text_batch(5, "t")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="t: question 0 is a NoneType, not a str"):
        text_batch([None], "t", "question")  # type: ignore[list-item]


def test_encoders_take_one_str_as_one_text() -> None:
    from indexes.late import TokenEncoder
    from indexes.splade_encoder import SpladeEncoder
    from rag.encoders import SentenceEncoder

    dense = SentenceEncoder("minilm")
    assert dense.encode_queries(QUERY).shape == (1, dense.dimension)
    assert dense.encode_documents(QUERY).shape == (1, dense.dimension)
    token = TokenEncoder("minilm")
    assert len(token.encode_queries(QUERY)) == 1 and len(token.encode_documents(QUERY)) == 1
    splade = SpladeEncoder()
    assert splade.encode_queries(QUERY).shape[0] == 1 and splade.encode_documents(QUERY).shape[0] == 1


def test_rerank_many_and_pipeline_take_one_str_as_one_query() -> None:
    from rag.pipeline import Pipeline
    from rag.protocols import BaseReranker

    class Length(BaseReranker):
        name = "length"

        def score(self, query: str, hits: list[Hit]) -> list[float]:
            return [float(len(h.chunk.text)) for h in hits]

    hits = [Hit(chunk=c, score=0.0, source="t") for c in make_chunks(["paris", "ocean"])]
    reranked = Length().rerank_many(QUERY, [hits], 2)
    assert len(reranked) == 1 and [h.chunk.doc_id for h in reranked[0]] == ["ocean", "paris"]

    from rag.types import Document

    pipeline = Pipeline(index="bm25s", generator=None, filters=())
    pipeline.ingest([Document(id=key, text=text, title=title) for key, (title, text) in DOCS.items()])
    answers = pipeline.ask_many(QUERY)
    assert len(answers) == 1 and answers[0].hits[0].chunk.doc_id in {"aspirin", "clots"}
    hits_one, _ = pipeline.retrieve(QUERY)
    assert len(hits_one) == 1
