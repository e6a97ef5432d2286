"""One protocol per role, and the base class a component of that role subclasses: it implements the one
obvious method, and the base class adds batching, checks and the config round trip (:class:`~rag.registry.Component`).

The index base, which also does persistence, is :class:`rag.manifest.SavedIndex`; the compressor base,
which also counts tokens, is :class:`rag.compression.BaseCompressor`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Container, Iterable, Iterator, Protocol, Sequence, runtime_checkable

from rag.errors import InputError
from rag.registry import Component
from rag.types import Answer, Chunk, Context, Document, Hit


@runtime_checkable
class Chunker(Protocol):
    def chunk(self, doc: Document) -> list[Chunk]: ...

    def chunk_many(self, docs: Iterable[Document]) -> list[Chunk]: ...


def text_batch(texts: str | Iterable[str], owner: str, item: str = "query") -> list[str]:
    """``texts`` as a list of str, where one str is a batch of one.

    Every batch-first method (``Index.search``, the encoders, ``Pipeline.ask_many``) takes its texts through
    here, so ``index.search("a question", 5)`` searches one query and returns one list of hits, instead of
    iterating the str and searching each character. ``owner`` names the caller in errors
    (``"dense index 'dense'"``); ``item`` names one text (``"query 1 is a int, not a str"``).

        >>> text_batch("capital of France", "demo")
        ['capital of France']
        >>> text_batch(("a", "b"), "demo")
        ['a', 'b']
    """
    if isinstance(texts, str):
        return [texts]
    # bytes are iterable too (over ints); a bare number is not iterable: both get one clear line.
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):
        raise InputError(f"{owner}: expected a str or a list of str, got a {type(texts).__name__}")
    batch = list(texts)
    for number, text in enumerate(batch):
        if not isinstance(text, str):
            raise InputError(f"{owner}: {item} {number} is a {type(text).__name__}, not a str")
    return batch


@runtime_checkable
class Index(Protocol):
    """``search`` takes a batch of queries; a single str is a batch of one (see :func:`text_batch`)."""

    def add(self, chunks: list[Chunk]) -> None: ...

    def search(self, queries: str | Sequence[str], k: int) -> list[list[Hit]]: ...

    def delete(self, chunk_ids: list[str]) -> int: ...

    def save(self, directory: str | Path) -> None: ...

    def load(self, directory: str | Path) -> None: ...

    def __len__(self) -> int: ...


@runtime_checkable
class ScoresChunks(Protocol):
    """An index that can score chunks it holds for a query exactly as its ``search`` scores them (optional).

    Speculative retrieval (:mod:`rag.iterative`) answers a retrieval from a small cache of chunks found
    earlier for the same request: it ranks them with this method, so that its top hits equal what ``search``
    would return whenever the true top hits are in the cache. ``score_chunks(query, ids)[i]`` is the score
    ``search(query, k)`` gives chunk ``ids[i]`` when it returns it; an id the index does not hold is an
    InputError naming it.
    """

    def score_chunks(self, query: str, chunk_ids: Sequence[str]) -> list[float]: ...


def chunks_to_score(owner: str, query: object, chunk_ids: str | Iterable[str], index: Container[str]) -> list[str]:
    """:meth:`ScoresChunks.score_chunks`' arguments, checked the same way by every index: one query str, and
    the chunk ids as a list (one str is one id) that ``index`` all holds, else an InputError naming the first
    id it does not. ``owner`` names the index in errors (``"dense index 'dense'"``)."""
    if not isinstance(query, str):
        raise InputError(f"{owner}: score_chunks takes one query str, got {type(query).__name__}")
    ids = text_batch(chunk_ids, owner, item="chunk id")
    for chunk_id in ids:
        if chunk_id not in index:
            raise InputError(f"{owner}: chunk id {chunk_id!r} is not in the index")
    return ids


@runtime_checkable
class Reranker(Protocol):
    def rerank(self, query: str, hits: list[Hit], k: int) -> list[Hit]: ...


@runtime_checkable
class Filter(Protocol):
    def filter(self, query: str, hits: list[Hit]) -> list[Hit]: ...


@runtime_checkable
class Compressor(Protocol):
    def compress(self, query: str, hits: list[Hit], budget_tokens: int | None = None) -> Context: ...


@runtime_checkable
class Generator(Protocol):
    def generate(self, query: str, context: Context) -> Answer: ...

    def stream(self, query: str, context: Context) -> Iterator[str]: ...


def check_hits(stage: str, query: str, hits: Sequence[Hit]) -> list[Hit]:
    """``hits`` as a list, after checking every score is a finite number; errors name query and chunk."""
    hits = list(hits)
    for position, hit in enumerate(hits):
        if not isinstance(hit, Hit):
            raise InputError(f"{stage}: query {query!r}: item {position} is a {type(hit).__name__}, not a Hit")
        score = hit.score
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            raise InputError(
                f"{stage}: query {query!r}: hit {position} (chunk {hit.chunk.id!r}) has score {score!r}; "
                "scores must be finite numbers"
            )
    return hits


def rank_by(hits: Sequence[Hit], scores: Sequence[float], source: str) -> list[Hit]:
    """Hits rescored with ``scores``, best first; equal scores keep their input order (a stable sort)."""
    order = sorted(range(len(hits)), key=lambda i: -scores[i])
    return [Hit(chunk=hits[i].chunk, score=float(scores[i]), source=source) for i in order]


class BaseReranker(Component):
    """Rerankers implement :meth:`score` (one float per hit); ranking, ``k`` and checks come from here."""

    role = "reranker"
    name: str = ""

    def score(self, query: str, hits: list[Hit]) -> list[float]:
        raise NotImplementedError

    def rerank(self, query: str, hits: list[Hit], k: int) -> list[Hit]:
        """The best ``k`` of ``hits`` by this reranker's score (fewer if fewer hits are given)."""
        if k < 1:
            raise InputError(f"{self.name} reranker: k must be at least 1, got {k}")
        hits = check_hits(f"{self.name} reranker", query, hits)
        if not hits:
            return []
        scores = self.score(query, hits)
        if len(scores) != len(hits):
            raise RuntimeError(f"{self.name} reranker: got {len(scores)} scores for {len(hits)} hits")
        for hit, value in zip(hits, scores):
            if not math.isfinite(value):
                raise InputError(f"{self.name} reranker: query {query!r}: chunk {hit.chunk.id!r} scored {value}")
        return rank_by(hits, scores, self.name)[:k]

    def rerank_many(self, queries: str | Sequence[str], hits: Sequence[list[Hit]], k: int) -> list[list[Hit]]:
        """:meth:`rerank` for a batch of queries, one list of hits each (one str is a batch of one query)."""
        queries = text_batch(queries, f"{self.name} reranker")
        if len(queries) != len(hits):
            raise InputError(f"{self.name} reranker: {len(queries)} queries but {len(hits)} hit lists")
        return [self.rerank(q, h, k) for q, h in zip(queries, hits)]

    def __call__(self, query: str, hits: list[Hit], k: int) -> list[Hit]:
        return self.rerank(query, hits, k)


class BaseChunker(Component):
    """Chunkers implement :meth:`chunk`; ``chunk_many`` and ``__call__`` come from here."""

    role = "chunker"

    def chunk(self, doc: Document) -> list[Chunk]:
        raise NotImplementedError

    def chunk_many(self, docs: Iterable[Document]) -> list[Chunk]:
        return [c for doc in docs for c in self.chunk(doc)]

    def __call__(self, doc: Document) -> list[Chunk]:
        return self.chunk(doc)


class BaseFilter(Component):
    role = "filter"

    def filter(self, query: str, hits: list[Hit]) -> list[Hit]:
        raise NotImplementedError


class BaseGenerator(Component):
    """Generators implement :meth:`generate` (an :class:`~rag.types.Answer` with its citations); :meth:`stream`
    comes from here (the whole answer as one piece) unless the generator can do better."""

    role = "generator"

    def generate(self, query: str, context: Context) -> Answer:
        raise NotImplementedError

    def stream(self, query: str, context: Context) -> Iterator[str]:
        yield self.generate(query, context).text


@runtime_checkable
class Loop(Protocol):
    """An answering loop that retrieves more than once per question (:mod:`rag.iterative`)."""

    def answer(self, pipeline: Any, question: str, hits: list[Hit], on_text: Callable[[str], None] | None = None,
               on_stage: Callable[[str, str, Any], None] | None = None) -> Answer: ...


class BaseLoop(Component):
    """Loops implement :meth:`answer`: given the pipeline (its index, filters, compressor and generator) and
    the hits of the first retrieval (the question alone), answer the question, retrieving again as they
    see fit; ``on_stage`` hears what they retrieved (the pipeline's stage observer)."""

    role = "loop"

    def answer(self, pipeline: Any, question: str, hits: list[Hit], on_text: Callable[[str], None] | None = None,
               on_stage: Callable[[str, str, Any], None] | None = None) -> Answer:
        raise NotImplementedError


# The protocol a built component of each role must satisfy (checked by :func:`rag.registry.build`).
ROLE_PROTOCOLS: dict[str, type] = {
    "chunker": Chunker,
    "index": Index,
    "reranker": Reranker,
    "filter": Filter,
    "compressor": Compressor,
    "generator": Generator,
    "loop": Loop,
}


def missing_methods(role: str, component: object) -> list[str]:
    """The methods of ``role``'s protocol that ``component`` lacks (empty when it satisfies the protocol)."""
    protocol = ROLE_PROTOCOLS[role]
    names = [name for name in vars(protocol) if not name.startswith("_") or name == "__len__"]
    return [name for name in names if callable(getattr(protocol, name, None))
            and not callable(getattr(component, name, None))]
