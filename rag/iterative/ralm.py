"""Iterative retrieval-augmented generation (In-Context RALM, Ram et al. 2023), made fast by speculative
retrieval (RaLMSpec, Zhang et al. 2024) with answers identical to retrieving for real at every step.

Every ``stride`` answer tokens, the question plus the answer so far is searched again and the prompt's
passages are replaced by the new top ``k`` (or extended by them: ``context="extend"``); decoding goes on
from there. Naively that is one index search per step, each waiting for the one before. With
``speculative=True`` (the default) a step's search is answered from a per-request cache of chunks the index
returned earlier (:class:`rag.iterative.speculation.ChunkCache`, ranked by the index's own scores), decoding
runs on with the guess, and after a few steps (:class:`~rag.iterative.speculation.StrideScheduler`) one
batched search verifies all their queries at once; at the first step whose guess differs from the true top
``k``, decoding rolls back to that step's start (:meth:`rag.iterative.stepper.StepDecoder.rewind`, which
restores the KV cache exactly) and goes on with the true passages. Every verified real result (its
``prefetch`` best hits, more than ``k``) goes into the cache. The answer is the naive one, token for token:
the decoding state is a function of the verified history only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from rag.errors import InputError
from rag.iterative.base import BaseLoop, LoopRun, StageObserver
from rag.iterative.speculation import ChunkCache, StrideScheduler
from rag.iterative.stepper import StepDecoder
from rag.registry import declared_params
from rag.types import Answer, Hit

CONTEXT_MODES = ("replace", "extend")


@dataclass
class Passages:
    """The prompt's passages as the steps change them: replaced by each retrieval's top ``k``, or extended
    with the chunks not yet shown (up to ``max_passages``)."""

    mode: str
    k: int
    max_passages: int
    hits: list[Hit] = field(default_factory=list)

    def update(self, found: list[Hit]) -> Hashable:
        """Apply one retrieval's hits; returns the key of the resulting passages (their chunk ids)."""
        top = found[: self.k]
        if self.mode == "replace":
            self.hits = list(top)
        else:
            shown = {h.chunk.id for h in self.hits}
            self.hits = self.hits + [h for h in top if h.chunk.id not in shown]
            self.hits = self.hits[: self.max_passages]
        return tuple(h.chunk.id for h in self.hits)

    def copy(self) -> "Passages":
        return Passages(self.mode, self.k, self.max_passages, list(self.hits))


@dataclass
class _Guess:
    """One speculative step awaiting verification."""

    start: int  # answer tokens before the step
    query: str
    ids: list[str]
    passages_before: Passages


@declared_params
class IterativeRaLM(BaseLoop):
    """Retrieve again every ``stride`` answer tokens; speculative retrieval (on by default) keeps the
    answers and cuts the waiting for the index.

    ``k`` passages from each retrieval go into the prompt, replacing the previous ones (``context=
    "replace"``) or added to them (``"extend"``, at most ``max_passages``). The query of a step is the
    question followed by the answer so far. ``speculative`` turns speculative retrieval on;
    ``speculation_stride`` fixes how many steps are guessed per verification (``None``: chosen by
    measurement, at most ``max_speculation_stride``, or none, searching for real, when guessing would not
    pay: :class:`~rag.iterative.speculation.StrideScheduler`); ``prefetch`` hits of every real retrieval go into the
    guess cache. The generator must be the grounded generator (greedy: the answer is the same with and
    without speculation). The answer's trace has a ``loop`` stage with every retrieval and guess.
    """

    stride: int = 4
    k: int = 5
    context: str = "replace"
    max_passages: int = 10
    speculative: bool = True
    speculation_stride: int | None = None
    max_speculation_stride: int = 8
    prefetch: int = 20
    _scheduler: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        for name in ("stride", "k", "max_passages", "max_speculation_stride", "prefetch"):
            if getattr(self, name) < 1:
                raise InputError(f"ralm loop: {name} must be at least 1, got {getattr(self, name)}")
        if self.speculation_stride is not None and self.speculation_stride < 1:
            raise InputError(f"ralm loop: speculation_stride must be at least 1 or None, got {self.speculation_stride}")
        if self.context not in CONTEXT_MODES:
            raise InputError(f"ralm loop: context must be one of {', '.join(CONTEXT_MODES)}, got {self.context!r}")

    def scheduler(self) -> StrideScheduler:
        """The speculation-stride scheduler; its estimates carry over between questions."""
        if self._scheduler is None:
            self._scheduler = StrideScheduler(self.max_speculation_stride, self.speculation_stride)
        return self._scheduler

    def answer(self, pipeline: Any, question: str, hits: list[Hit],
               on_text: Callable[[str], None] | None = None, on_stage: StageObserver | None = None) -> Answer:
        run = LoopRun.start(self, pipeline, question)
        passages = Passages(self.context, self.k, self.max_passages)
        decoder = StepDecoder(run.generator, run.lm)
        key = passages.update(hits)
        run.note_context(passages.hits)
        decoder.step(key, run.prompt(passages.hits), self.stride)
        if self.speculative:
            self._speculate(run, decoder, passages, hits)
        else:
            while not decoder.done:
                query = run.query(decoder.text)
                found = run.search([query], self.k)[0]
                key = passages.update(found)
                run.note_context(passages.hits)
                decoder.step(key, run.prompt(passages.hits), self.stride)
        return run.finish(decoder, passages.hits, on_text, on_stage)

    def _speculate(self, run: LoopRun, decoder: StepDecoder, passages: Passages, first: list[Hit]) -> None:
        cache = ChunkCache(run.index)
        cache.add(first[: max(self.k, self.prefetch)])
        scheduler = self.scheduler()
        run.extra.update(cache_scorer="index" if cache.scored else "last retrieval", strides=[], cache_seconds=0.0,
                         guesses_checked=0, guesses_right=0, guesses_discarded=0, rollbacks=0, rolled_back_tokens=0,
                         real_steps=0)
        while not decoder.done:
            stride = scheduler.next_stride()
            if stride == 0:
                self._real_step(run, decoder, passages, cache, scheduler)
                continue
            guesses: list[_Guess] = []
            for _ in range(stride):
                if decoder.done:
                    break
                started = time.perf_counter()
                query = run.query(decoder.text)
                guessed = cache.top(query, self.k)
                run.count("cache_seconds", time.perf_counter() - started)
                guesses.append(_Guess(len(decoder.generated), query, [h.chunk.id for h in guessed], passages.copy()))
                key = passages.update(guessed)
                decoder.step(key, run.prompt(passages.hits), self.stride)
                scheduler.record_step(time.perf_counter() - started)
            started = time.perf_counter()
            found = run.search([g.query for g in guesses], max(self.k, self.prefetch), cache.search)
            scheduler_seconds = time.perf_counter() - started
            for row in found:
                cache.add(row)
            wrong = next((i for i, (g, row) in enumerate(zip(guesses, found))
                          if g.ids != [h.chunk.id for h in row[: self.k]]), None)
            checked = len(guesses) if wrong is None else wrong + 1
            scheduler.record_verification(scheduler_seconds, checked - (wrong is not None), checked)
            run.extra["strides"].append(len(guesses))
            run.count("guesses_checked", checked)
            run.count("guesses_right", checked - (wrong is not None))
            run.count("guesses_discarded", len(guesses) - checked)
            if wrong is None:
                for guess in guesses:
                    run.note_context(cache.hits[i] for i in guess.ids)
                continue
            for guess in guesses[:wrong]:
                run.note_context(cache.hits[i] for i in guess.ids)
            guess = guesses[wrong]
            run.count("rollbacks", 1)
            run.count("rolled_back_tokens", len(decoder.generated) - guess.start)
            decoder.rewind(guess.start)
            passages.hits = guess.passages_before.hits
            key = passages.update(found[wrong])
            run.note_context(passages.hits)
            decoder.step(key, run.prompt(passages.hits), self.stride)

    def _real_step(self, run: LoopRun, decoder: StepDecoder, passages: Passages, cache: ChunkCache,
                   scheduler: StrideScheduler) -> None:
        """A step that searches for real before decoding (what the scheduler picks when guessing would not
        pay). The cache still ranks a shadow guess, never used, so that the scheduler keeps measuring how
        often guesses are right; the search reuses its query encoding."""
        started = time.perf_counter()
        query = run.query(decoder.text)
        guessed = [h.chunk.id for h in cache.top(query, self.k)]
        guess_seconds = time.perf_counter() - started
        run.count("cache_seconds", guess_seconds)
        started = time.perf_counter()
        found = run.search([query], max(self.k, self.prefetch), cache.search)[0]
        search_seconds = time.perf_counter() - started
        cache.add(found)
        right = guessed == [h.chunk.id for h in found[: self.k]]
        scheduler.record_verification(search_seconds, int(right), 1)
        run.count("real_steps", 1)
        run.count("guesses_checked", 1)
        run.count("guesses_right", int(right))
        key = passages.update(found)
        run.note_context(passages.hits)
        started = time.perf_counter()
        decoder.step(key, run.prompt(passages.hits), self.stride)
        scheduler.record_step(guess_seconds + time.perf_counter() - started)
