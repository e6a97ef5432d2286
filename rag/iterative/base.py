"""What every answering loop needs for one question: the generator's engine, timed searches, prompts per
set of passages, the chunks shown, and the answer with its trace (:class:`LoopRun`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Sequence

from rag.errors import InputError
from rag.protocols import BaseLoop
from rag.types import Answer, Context, Hit, StageRecord, Trace

StageObserver = Callable[[str, str, Any], None]

__all__ = ["BaseLoop", "LoopRun", "StageObserver", "grounded_generator"]


def grounded_generator(loop: str, pipeline: Any) -> Any:
    """The pipeline's generator, checked to be one a loop can drive (prompts, cached prefix, answer length)."""
    generator = pipeline.generator
    needed = ("messages", "session", "new_tokens", "stops", "model", "engine")
    if generator is None or any(not hasattr(generator, name) for name in needed):
        raise InputError(f"{loop} loop: needs the grounded generator (an engine-backed causal LM), "
                         f"got {type(generator).__name__ if generator is not None else 'no generator'}")
    if getattr(generator, "temperature", 0) > 0:
        raise InputError(f"{loop} loop: decodes greedily; the generator has temperature {generator.temperature}")
    return generator


@dataclass
class LoopRun:
    """One question through a loop: counts and seconds go into the trace's ``loop`` stage."""

    name: str
    pipeline: Any
    question: str
    generator: Any
    lm: Any
    started: float
    extra: dict[str, Any] = field(default_factory=dict)
    shown: dict[str, Hit] = field(default_factory=dict)  # every chunk a kept prompt showed, first shown first
    last_prompt_tokens: int = 0
    _prompts: dict[Hashable, list[int]] = field(default_factory=dict)

    @classmethod
    def start(cls, loop: BaseLoop, pipeline: Any, question: str) -> "LoopRun":
        from rag.generation.engine import load_engine

        name = loop.to_config()["type"]
        generator = grounded_generator(name, pipeline)
        started = time.perf_counter()
        lm = load_engine(generator.model, generator.engine, quantize=generator.quantize)
        run = cls(name, pipeline, question, generator, lm, time.perf_counter())
        run.extra.update(load_seconds=run.started - started, searches=0, queries=0, search_seconds=0.0)
        return run

    @property
    def index(self) -> Any:
        return self.pipeline.index

    def query(self, answer_so_far: str) -> str:
        """A step's query: the question followed by the answer so far."""
        return f"{self.question} {answer_so_far.strip()}".strip()

    def search(self, queries: Sequence[str], k: int, searcher: Any = None) -> list[list[Hit]]:
        """One real, timed search of the index for a batch of queries (through ``searcher(queries, k)`` when
        given: the speculative cache's, which reuses query embeddings)."""
        started = time.perf_counter()
        found = (searcher or self.index.search)(list(queries), k)
        self.count("search_seconds", time.perf_counter() - started)
        self.count("searches", 1)
        self.count("queries", len(queries))
        return found

    def prompt(self, hits: Sequence[Hit]) -> list[int]:
        """The generator's prompt (system, passages, question) for these passages, rendered once per set."""
        key = tuple(h.chunk.id for h in hits)
        if key not in self._prompts:
            messages = self.generator.messages(self.question, Context.from_hits(list(hits)))
            self._prompts[key] = self.lm.encode_chat(messages)
        self.last_prompt_tokens = len(self._prompts[key])
        return self._prompts[key]

    def note_context(self, hits: Iterable[Hit]) -> None:
        """Record chunks that a kept (not rolled back) prompt showed."""
        for hit in hits:
            self.shown.setdefault(hit.chunk.id, hit)

    def count(self, name: str, value: float) -> None:
        self.extra[name] = self.extra.get(name, 0) + value

    def finish(self, decoder: Any, final_hits: list[Hit], on_text: Callable[[str], None] | None,
               on_stage: StageObserver | None) -> Answer:
        """The answer from a finished :class:`~rag.iterative.stepper.StepDecoder`, with ``loop`` and
        ``generate`` stage records. Text is handed to ``on_text`` once, at the end: a speculative loop may
        still take tokens back until its last verification."""
        from rag.generation.generator import parse_citations

        text = decoder.text.strip()
        if on_text and text:
            on_text(text)
        if on_stage is not None:
            on_stage(self.question, "loop", list(self.shown.values()))
        stats = decoder.stats
        seconds = time.perf_counter() - self.started
        extra = dict(self.extra)
        extra.update(loop=self.name, chunks_shown=len(self.shown), prompt_reads=stats.rebuilds,
                     prompt_read_tokens=stats.rebuild_tokens, replayed_tokens=stats.replayed_tokens,
                     decoded_tokens=stats.decoded_tokens, decode_seconds=stats.seconds)
        if "guesses_checked" in extra:
            extra["speculation_accuracy"] = extra["guesses_right"] / extra["guesses_checked"] if extra["guesses_checked"] else None
            strides = extra.get("strides") or []
            extra["mean_speculation_stride"] = sum(strides) / len(strides) if strides else None
        trace = Trace()
        trace.add(StageRecord(stage="loop", seconds=seconds - stats.seconds, n_in=1, n_out=len(self.shown),
                              extra=extra))
        context = Context.from_hits(final_hits)
        trace.add(StageRecord(
            stage="generate", seconds=stats.seconds, n_in=len(final_hits), n_out=1,
            tokens_in=self.last_prompt_tokens, tokens_out=len(decoder.generated),
            extra={"model": self.generator.model, "engine": self.lm.name, "engine_asked": self.generator.engine,
                   "answer_style": getattr(self.generator, "answer_style", None), "speculative": False},
        ))
        return Answer(text=text, citations=parse_citations(text, context), hits=list(final_hits), trace=trace)
