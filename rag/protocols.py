"""One protocol per role. Components implement the one obvious method; the base classes add batching."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Protocol, runtime_checkable

from rag.registry import Component
from rag.types import Answer, Chunk, Context, Document, Hit


@runtime_checkable
class Chunker(Protocol):
    def chunk(self, doc: Document) -> list[Chunk]: ...

    def chunk_many(self, docs: Iterable[Document]) -> list[Chunk]: ...


@runtime_checkable
class Index(Protocol):
    def add(self, chunks: list[Chunk]) -> None: ...

    def search(self, queries: list[str], k: int) -> list[list[Hit]]: ...

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
