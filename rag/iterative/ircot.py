"""IRCoT-style multi-step retrieval (Trivedi et al. 2023): reason one sentence, retrieve with it, repeat, then
answer from everything retrieved.

Multi-hop questions ("Which university did the director of film X attend?") need a second search that
depends on what the first one found: the first step's passages name the director, a sentence of reasoning
says so, and that sentence (with the question) is the next query. The reasoning runs as one chat on the
generator's engine: passages and the question, the model's sentence, then the next passages as a new user
turn, and so on, so each step reads only the new passages (the earlier turns stay in the KV cache). The
reasoning stops when the model writes "the answer is" (after at least ``min_steps`` searches), after
``max_steps`` steps, or when a step retrieves nothing new; then the pipeline's compressor (if any) and generator answer from all the passages collected.
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable

from rag.errors import InputError
from rag.generation.generator import format_passages
from rag.iterative.base import BaseLoop, LoopRun, StageObserver
from rag.registry import declared_params
from rag.types import Answer, Context, Hit, StageRecord, Trace

REASONING_PROMPT = (
    "Reason step by step towards the answer to the question, using the numbered passages. Write only the "
    "next step: one short sentence stating a fact from the passages that leads to the answer, naming the "
    "people, places or things it is about. When the passages already give the answer, write "
    "\"So the answer is: \" followed by the answer."
)
ANSWER_MARK = "answer is"
_ANSWER_PREFIX = re.compile(r"^\W*(so\s+)?the\s+answer\s+is\s*:?\s*", re.IGNORECASE)
# A sentence ends at . ! or ? followed by a space or the end, once the sentence has a few words.
_SENTENCE_END = re.compile(r"(?<=\w{2}[.!?])(\s|$)")


@declared_params
class IRCoT(BaseLoop):
    """Interleave reasoning sentences with retrieval, then answer with the pipeline's generator.

    ``k`` hits of the first retrieval (the question) start the passages; each step the model writes one
    reasoning sentence (at most ``sentence_tokens`` tokens), the question plus that sentence is searched, and
    its ``k`` best hits not yet shown are added, up to ``max_passages`` in all, for at most ``max_steps``
    steps; the first ``min_steps`` sentences are searched even when they already state an answer (small
    models do so at once, and the entities they name still lead to the second hop). ``reasoning_prompt`` overrides the reasoning instructions. The trace's ``loop`` stage lists every
    step (sentence, query, chunks added).
    """

    k: int = 3
    max_steps: int = 3
    min_steps: int = 1
    max_passages: int = 9
    sentence_tokens: int = 48
    reasoning_prompt: str | None = None

    def __post_init__(self) -> None:
        for name in ("k", "max_steps", "max_passages", "sentence_tokens"):
            if getattr(self, name) < 1:
                raise InputError(f"ircot loop: {name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.min_steps <= self.max_steps:
            raise InputError(f"ircot loop: min_steps must be within 0..max_steps ({self.max_steps}), got {self.min_steps}")

    def answer(self, pipeline: Any, question: str, hits: list[Hit],
               on_text: Callable[[str], None] | None = None, on_stage: StageObserver | None = None) -> Answer:
        from rag.generation.decode import decode

        run = LoopRun.start(self, pipeline, question)
        pool: list[Hit] = list(hits[: min(self.k, self.max_passages)])
        messages = [{"role": "system", "content": self.reasoning_prompt or REASONING_PROMPT},
                    {"role": "user", "content": _first_turn(question, pool)}]
        session = run.lm.new_session()
        steps: list[dict[str, Any]] = []
        reasoning_seconds = 0.0
        for _ in range(self.max_steps):
            started = time.perf_counter()
            tokens = decode(run.lm, run.lm.encode_chat(messages), max_new_tokens=self.sentence_tokens, session=session)
            sentence = _first_sentence(run.lm, tokens)
            reasoning_seconds += time.perf_counter() - started
            step: dict[str, Any] = {"sentence": sentence}
            steps.append(step)
            answered = ANSWER_MARK in sentence.lower()
            if not sentence or len(pool) >= self.max_passages or (answered and len(steps) > self.min_steps):
                break
            # Small models state the answer at once, often wrongly; the facts named on the way are still the
            # best query for the second hop, so the first min_steps sentences are searched regardless.
            query = run.query(_ANSWER_PREFIX.sub("", sentence))
            shown = {h.chunk.id for h in pool}
            new = [h for h in run.search([query], self.k + len(shown))[0] if h.chunk.id not in shown]
            new = new[: min(self.k, self.max_passages - len(pool))]
            step.update(query=query, added=[h.chunk.id for h in new])
            if not new:
                break
            numbered = len(pool)
            pool.extend(new)
            messages += [{"role": "assistant", "content": sentence},
                         {"role": "user", "content": _next_turn(new, numbered)}]
        run.note_context(pool)
        if on_stage is not None:
            on_stage(question, "loop", list(pool))
        context = self._context(pipeline, question, pool, run)
        answer = run.generator.generate(question, context, on_text=on_text)
        run.extra.update(loop="ircot", steps=steps, n_steps=len(steps), reasoning_seconds=reasoning_seconds,
                         chunks_shown=len(pool))
        started = run.started
        records = [StageRecord(stage="loop", seconds=time.perf_counter() - started - answer.trace.seconds("generate")
                               - run.extra.get("compress_seconds", 0.0), n_in=1, n_out=len(pool), extra=run.extra)]
        if "compress_seconds" in run.extra:
            records.append(StageRecord(stage="compress", seconds=run.extra["compress_seconds"], n_in=len(pool),
                                       n_out=len(context.passages), tokens_in=context.original_tokens,
                                       tokens_out=context.kept_tokens))
        trace = Trace(stages=records + list(answer.trace.stages))
        return Answer(text=answer.text, citations=answer.citations, hits=pool, trace=trace)

    def _context(self, pipeline: Any, question: str, pool: list[Hit], run: LoopRun) -> Context:
        if pipeline.compressor is None:
            return Context.from_hits(pool)
        started = time.perf_counter()
        context = pipeline.compressor.compress(question, pool, pipeline.budget_tokens)
        run.extra["compress_seconds"] = time.perf_counter() - started
        return context


def _first_turn(question: str, pool: list[Hit]) -> str:
    passages = format_passages(Context.from_hits(pool)) if pool else "(No passages were retrieved.)"
    return f"Passages:\n\n{passages}\n\nQuestion: {question}\n\nWrite the first step of the reasoning."


def _next_turn(new: list[Hit], numbered: int) -> str:
    """More passages, numbered on from the ones already shown."""
    return f"More passages:\n\n{format_passages(Context.from_hits(new), first=numbered + 1)}\n\nWrite the next step of the reasoning."


def _first_sentence(lm: Any, tokens: Any) -> str:
    """Decode until the first sentence (or line) is complete; the rest is never generated."""
    from rag.generation.decode import TextStream

    stream = TextStream(lm.tokenizer)
    text = ""
    for token in tokens:
        text += stream.push(token)
        line = text.split("\n", 1)
        if len(line) > 1 and line[0].strip():
            text = line[0]
            break
        match = _SENTENCE_END.search(text.strip())
        if match:
            text = text.strip()[: match.start()]
            break
    tokens.close()
    return text.strip()
