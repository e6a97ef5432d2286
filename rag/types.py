"""Core records that flow through a specrag pipeline.

Every stage speaks these types: chunkers turn :class:`Document` into :class:`Chunk`, indexes return
:class:`Hit` lists, compressors build a :class:`Context`, generators return an :class:`Answer` whose
:class:`Trace` records what each stage did.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator


def content_id(text: str, title: str = "") -> str:
    """A stable id for a document without one: the first 16 hex digits of sha256(title, text)."""
    digest = hashlib.sha256()
    digest.update(title.encode("utf-8"))
    digest.update(b"\x00")
    digest.update(text.encode("utf-8"))
    return digest.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Document:
    """A unit of the corpus. ``id`` defaults to a content hash of title and text."""

    text: str
    id: str = ""
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"document {self.id or '?'}: text must be str, got {type(self.text).__name__}")
        if not self.id:
            object.__setattr__(self, "id", content_id(self.text, self.title))


@dataclass(frozen=True, slots=True)
class Chunk:
    """A contiguous span of a document: ``document.text[start:end] == text`` always holds."""

    id: str
    doc_id: str
    text: str
    start: int
    end: int
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end or self.end - self.start != len(self.text):
            raise ValueError(
                f"chunk {self.id}: offsets [{self.start}, {self.end}) do not match its text of length {len(self.text)}"
            )

    @classmethod
    def whole(cls, doc: Document, chunk_id: str = "") -> "Chunk":
        """All of ``doc`` as one chunk (title kept, metadata not); ``chunk_id`` defaults to the document id."""
        return cls(id=chunk_id or doc.id, doc_id=doc.id, text=doc.text, start=0, end=len(doc.text), title=doc.title)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Chunk":
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Hit:
    """A chunk scored by a stage; ``source`` names the index or stage that gave the score."""

    chunk: Chunk
    score: float
    source: str


@dataclass(frozen=True, slots=True)
class Passage:
    """Text handed to the generator, and the chunk it came from (so citations survive compression)."""

    chunk: Chunk
    text: str
    score: float = 0.0


@dataclass(frozen=True, slots=True)
class Context:
    """What a compressor returns and a generator reads: ordered passages plus token counts."""

    passages: tuple[Passage, ...]
    original_tokens: int = 0
    kept_tokens: int = 0
    seconds: float = 0.0

    @classmethod
    def from_hits(cls, hits: list[Hit]) -> "Context":
        """The uncompressed context: every hit's full chunk text, in the given order."""
        return cls(passages=tuple(Passage(chunk=h.chunk, text=h.chunk.text, score=h.score) for h in hits))


@dataclass(frozen=True, slots=True)
class StageRecord:
    """One stage's measurements: time, items in and out, tokens in and out, and stage-specific extras."""

    stage: str
    seconds: float
    n_in: int = 0
    n_out: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Trace:
    """The per-stage record of one question (or one ingestion)."""

    stages: list[StageRecord] = field(default_factory=list)

    def add(self, record: StageRecord) -> None:
        self.stages.append(record)

    @contextmanager
    def timed(self, stage: str, **counts: Any) -> Iterator[dict[str, Any]]:
        """Time a block; the yielded dict may be filled with n_out, tokens_in, tokens_out, extra."""
        measured: dict[str, Any] = dict(counts)
        started = time.perf_counter()
        yield measured
        extra = measured.pop("extra", {})
        self.add(StageRecord(stage=stage, seconds=time.perf_counter() - started, extra=extra, **measured))

    def seconds(self, stage: str) -> float:
        return sum(r.seconds for r in self.stages if r.stage == stage)

    @property
    def total_seconds(self) -> float:
        return sum(r.seconds for r in self.stages)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.stages]

    def format(self) -> str:
        """A small table of stage timings, for terminals."""
        lines = [f"{'stage':<12} {'seconds':>8} {'in':>6} {'out':>6} {'tok in':>7} {'tok out':>7}"]
        for r in self.stages:
            lines.append(
                f"{r.stage:<12} {r.seconds:>8.3f} {r.n_in:>6} {r.n_out:>6} {r.tokens_in:>7} {r.tokens_out:>7}"
            )
        lines.append(f"{'total':<12} {self.total_seconds:>8.3f}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Citation:
    """A marker like ``[2]`` in an answer, resolved to the context passage it names."""

    marker: int
    chunk_id: str
    doc_id: str


@dataclass(slots=True)
class Answer:
    """A generated answer, the citations it makes, the hits it was given and the trace of the question."""

    text: str
    citations: list[Citation]
    hits: list[Hit]
    trace: Trace = field(default_factory=Trace)
