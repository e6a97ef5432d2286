"""One protocol per role. Components implement the one obvious method; the base classes add batching."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence, runtime_checkable

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
