"""The grounded generator: numbered passages in, an answer citing them like ``[2]`` out."""

from __future__ import annotations

import re
import time
from dataclasses import field
from typing import Any, Callable, Iterator

from rag.errors import InputError
from rag.protocols import BaseGenerator
from rag.registry import declared_params
from rag.types import Answer, Citation, Context, StageRecord, Trace

DEFAULT_SYSTEM_PROMPT = (
    "Answer the question in one or two sentences using only the numbered passages. Name the function, "
    "class or fact that answers it, and cite the passages you used by number in square brackets, like [2]. "
    "If the passages do not contain the answer, say that you do not know."
)
# QA benchmarks score short answers (SQuAD EM/F1 compare against a span of a few words): ask for the span,
# not a sentence, and stop at the first line.
SHORT_SYSTEM_PROMPT = (
    "Answer the question with the shortest phrase from the passages that answers it: a name, number, date "
    "or a few words, not a sentence. If the passages do not contain the answer, say that you do not know."
)
# style -> (system prompt, stop strings, max new tokens); "cited" is for people, "short" for QA benchmarks.
ANSWER_STYLES: dict[str, tuple[str, tuple[str, ...], int]] = {
    "cited": (DEFAULT_SYSTEM_PROMPT, (), 256),
    "short": (SHORT_SYSTEM_PROMPT, ("\n",), 32),
}
CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def format_passages(context: Context, first: int = 1) -> str:
    """Render passages as ``[n] title: text`` blocks, numbered from ``first`` (1) in context order."""
    blocks = []
    for number, passage in enumerate(context.passages, start=first):
        title = passage.chunk.title.strip()
        blocks.append(f"[{number}] {title + ': ' if title else ''}{passage.text.strip()}")
    return "\n\n".join(blocks)


def parse_citations(text: str, context: Context) -> list[Citation]:
    """Markers like ``[2]`` or ``[1, 3]`` in ``text`` that name a passage of ``context``, first use first."""
    seen: dict[int, Citation] = {}
    for match in CITATION.finditer(text):
        for number in (int(n) for n in match.group(1).split(",")):
            if 1 <= number <= len(context.passages) and number not in seen:
                chunk = context.passages[number - 1].chunk
                seen[number] = Citation(marker=number, chunk_id=chunk.id, doc_id=chunk.doc_id)
    return list(seen.values())


@declared_params
class GroundedGenerator(BaseGenerator):
    """Answer from the context with a causal LM, citing passage numbers.

    ``model`` is a pack name (``qwen2.5-0.5b`` by default), a local path or a hub id. ``engine`` runs it
    (:mod:`rag.generation.engine`): ``"auto"`` (the default) uses the engine measured fastest on this
    machine for this model, ``"transformers:float32"``, ``"transformers:bfloat16"`` or ``"llama.cpp"`` pin
    one. Decoding is greedy unless ``temperature`` > 0 (then seeded sampling). ``stop`` strings end the
    answer early.

    ``answer_style`` is ``"cited"`` (the default: a sentence or two citing passages like ``[2]``, for people)
    or ``"short"`` (the shortest phrase that answers, no citations: what QA benchmarks score). The style
    supplies the system prompt, the stop strings and ``max_new_tokens`` (256 cited, 32 short, stopping at
    the first line break) wherever those are left as ``None``; ``complete_citations`` applies to cited answers.

    Speculative decoding (:mod:`rag.generation.speculative`) is on by default when it is lossless, that is for greedy
    decoding, where its output is token-identical to plain decoding: ``speculative=None`` means "when
    greedy", ``True`` also speculates when sampling (distribution-preserving, not token-identical to
    plain sampling), ``False`` turns it off. ``drafters`` names the drafters (``"sam"``, ``"ngram"``,
    ``"recycling"``, ``"recycling-tree"``, ``"model"``; several are combined, see
    :func:`rag.generation.drafters.build_drafter`)
    and ``draft_model`` the model behind ``"model"`` (it must share the target's tokenizer; naming one adds
    ``"model"``; it runs on the target's engine). Token recycling's table carries over between answers.
    ``context_aware=alpha`` (0, off, by default) turns on context-aware decoding
    (:mod:`rag.generation.contrast`): tokens come from ``(1 + alpha)`` times the logits with the passages
    minus ``alpha`` times those without them (the question alone), at the cost of a second prefill and a
    second pass per step; speculation verifies against that contrasted distribution. ``width_costs`` is
    the verification-width cost table; by default the one measured for the engine in use
    (:func:`rag.generation.calibrate.width_costs`). ``reuse_prefix`` keeps the KV cache of the fixed
    system prompt and copies it for each question. ``quantize="int8"`` applies dynamic int8 quantisation to
    the target (faster but lossy: answers change); ``draft_quantize="int8"`` to the draft model only
    (lossless: it only changes which drafts are accepted).

        >>> gen = GroundedGenerator(max_new_tokens=64)                      # doctest: +SKIP
        >>> answer = gen.generate("What caches calls?", Context.from_hits(hits))  # doctest: +SKIP
    """

    model: str = "qwen2.5-0.5b"
    engine: str = "auto"
    max_new_tokens: int | None = None
    temperature: float = 0.0
    seed: int = 0
    stop: list[str] | None = None
    system_prompt: str | None = None
    complete_citations: bool = True
    answer_style: str = "cited"
    speculative: bool | None = None
    drafters: list[str] | None = None  # None: ["sam", "ngram"]
    draft_model: str | None = None
    width_costs: dict[int, float] | None = None
    reuse_prefix: bool = True
    quantize: str | None = None
    draft_quantize: str | None = None
    context_aware: float = 0.0
    _prefix: tuple[list[int], object] | None = field(default=None, init=False)  # system-prompt KV: (tokens, session)
    # what speculation learnt in earlier answers: acceptance rates, recycled tokens
    _tracker: Any = field(default=None, init=False)
    _recycle: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.answer_style not in ANSWER_STYLES:
            raise InputError(
                f"grounded generator: answer_style must be one of {sorted(ANSWER_STYLES)}, got {self.answer_style!r}"
            )
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise InputError(f"grounded generator: max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise InputError(f"grounded generator: temperature must be >= 0, got {self.temperature}")
        for name, value in (("quantize", self.quantize), ("draft_quantize", self.draft_quantize)):
            if value not in (None, "int8"):
                raise InputError(f"grounded generator: {name} must be None or 'int8', got {value!r}")
        if self.context_aware < 0:
            raise InputError(
                f"grounded generator: context_aware must be at least 0 (0 is off), got {self.context_aware}"
            )
        from rag.generation.engine import canonical_engine

        self.engine = canonical_engine(self.engine)
        self.stop = None if self.stop is None else list(self.stop)
        self.drafters = list(self.drafters) if self.drafters is not None else ["sam", "ngram"]
        self.width_costs = {int(k): float(v) for k, v in self.width_costs.items()} if self.width_costs else None
        self.context_aware = float(self.context_aware)
        if self.drafters:
            from rag.generation.drafters import build_drafter

            names = self.drafters + (["model"] if self.draft_model and "model" not in self.drafters else [])
            build_drafter(names, draft_lm=object())  # check the names now, not at the first question

    @property
    def instructions(self) -> str:
        """The system prompt in use: ``system_prompt``, or the answer style's."""
        return ANSWER_STYLES[self.answer_style][0] if self.system_prompt is None else self.system_prompt

    @property
    def stops(self) -> list[str]:
        """The stop strings in use: ``stop``, or the answer style's."""
        return list(ANSWER_STYLES[self.answer_style][1] if self.stop is None else self.stop)

    @property
    def new_tokens(self) -> int:
        """The most tokens an answer may have: ``max_new_tokens``, or the answer style's."""
        return ANSWER_STYLES[self.answer_style][2] if self.max_new_tokens is None else self.max_new_tokens

    def engine_reason(self) -> str:
        """Why this engine runs the model: the measurement behind ``auto``, or that the user pinned it."""
        if self.engine != "auto" or self.quantize is not None:
            return f"{self.engine if self.quantize is None else 'transformers:float32'}: pinned by the configuration"
        from rag.generation.calibrate import choose_engine

        return choose_engine(self.model).reason

    def uses_speculation(self) -> bool:
        """Whether answers are decoded speculatively with these settings."""
        wanted = self.temperature == 0 if self.speculative is None else self.speculative
        return bool(wanted and self.drafters)

    def messages(self, query: str, context: Context) -> list[dict[str, str]]:
        """The chat sent to the model: system instructions, then passages and the question."""
        user = f"Passages:\n\n{format_passages(context)}\n\nQuestion: {query}" if context.passages else (
            f"(No passages were retrieved.)\n\nQuestion: {query}"
        )
        return [{"role": "system", "content": self.instructions}, {"role": "user", "content": user}]

    def messages_without_context(self, query: str) -> list[dict[str, str]]:
        """The same chat without the passages: what context-aware decoding contrasts against."""
        return [{"role": "system", "content": self.instructions}, {"role": "user", "content": f"Question: {query}"}]

    def prefix_ids(self, lm) -> list[int]:
        """Tokens every prompt of this generator starts with (system prompt, template, "Passages:")."""
        renders = [lm.encode_chat([{"role": "system", "content": self.instructions},
                                   {"role": "user", "content": f"Passages:\n\n[{marker}] x"}]) for marker in (1, 7)]
        from rag.generation.engine import common_prefix

        return renders[0][: common_prefix(*renders)]

    def session(self, lm):
        """A decode session for a new question: a copy of the cached system-prompt prefix when enabled."""
        if not self.reuse_prefix:
            return lm.new_session()
        if self._prefix is None or self._prefix[1].engine is not lm:
            prefix = lm.new_session()
            ids = self.prefix_ids(lm)
            if ids:
                prefix.feed(ids)
            self._prefix = (ids, prefix)
        return self._prefix[1].copy()

    def generate(self, query: str, context: Context, on_text: Callable[[str], None] | None = None) -> Answer:
        """Answer ``query`` from ``context``; ``on_text`` receives text as it is decoded (streaming)."""
        from rag.generation.decode import TextStream, decode
        from rag.generation.engine import load_engine
        from rag.generation.speculative import AcceptanceTracker, SpecStats, WidthPolicy, speculative_decode

        trace = Trace()
        started = time.perf_counter()
        lm = load_engine(self.model, self.engine, quantize=self.quantize)
        speculate = self.uses_speculation()
        drafter = None
        width_costs = self.width_costs
        if speculate:
            from rag.generation.drafters import RecycleTable, build_drafter

            names = self.drafters + (["model"] if self.draft_model and "model" not in self.drafters else [])
            draft_engine = lm.name if self.draft_quantize is None else "transformers:float32"
            draft_lm = (load_engine(self.draft_model, draft_engine, quantize=self.draft_quantize)
                        if "model" in names else None)
            if width_costs is None:
                from rag.generation.calibrate import width_costs as measured_width_costs

                width_costs = measured_width_costs(lm)
            if self._tracker is None:
                self._tracker = AcceptanceTracker()
                self._recycle = RecycleTable() if any(n.startswith("recycling") for n in names) else None
            drafter = build_drafter(names, draft_lm=draft_lm, recycle=self._recycle)
        load_seconds = time.perf_counter() - started
        prompt_ids = lm.encode_chat(self.messages(query, context))
        stats = SpecStats()
        stream = TextStream(lm.tokenizer)
        started = time.perf_counter()
        session = self.session(lm)
        if self.context_aware > 0:
            from rag.generation.contrast import ContrastSession

            session = ContrastSession(session, self.session(lm), lm.encode_chat(self.messages_without_context(query)),
                                      self.context_aware)
        if speculate:
            tokens = speculative_decode(lm, prompt_ids, drafter, max_new_tokens=self.new_tokens,
                                        temperature=self.temperature, seed=self.seed, stats=stats, session=session,
                                        policy=WidthPolicy(width_costs), tracker=self._tracker)
        else:
            tokens = decode(lm, prompt_ids, max_new_tokens=self.new_tokens, temperature=self.temperature,
                            seed=self.seed, stats=stats, session=session)
        text = ""
        cut = None
        stops = self.stops
        for token in tokens:
            delta = stream.push(token)
            text += delta
            cut = _stop_at(text, stops)
            if cut is not None:
                delta = delta[: len(delta) - (len(text) - cut)]
                text = text[:cut]
            if on_text and delta:
                on_text(delta)
            if cut is not None:
                break
        tokens.close()
        completed = None
        cite = self.complete_citations and self.answer_style == "cited"
        if cite and cut is None and context.passages and not parse_citations(text, context):
            completed = _complete_citation(session, prompt_ids + stream.ids, len(context.passages))
            if completed is not None:
                text = f"{text.rstrip()} [{completed}]"
                if on_text:
                    on_text(f" [{completed}]")
        extra = {"engine_reason": self.engine_reason(),
                 "prefill_seconds": stats.prefill_seconds, "decode_seconds": stats.decode_seconds,
                 "tokens_per_second": stats.tokens_per_second, "first_token_seconds": stats.first_token_seconds,
                 "reused_prompt_tokens": stats.reused_prompt_tokens, "load_seconds": load_seconds,
                 "model": self.model, "engine": lm.name, "engine_asked": self.engine, "quantize": self.quantize,
                 "citation_completed": completed is not None, "speculative": speculate,
                 "answer_style": self.answer_style}
        extra.update(stats.as_dict())
        if speculate:
            extra["drafters"] = list(self.drafters)
        if self.context_aware > 0:  # the extra prefill is part of prefill_seconds, reported apart too
            extra.update(context_aware=self.context_aware, contrast_prompt_tokens=len(session.plain_prompt),
                         contrast_prefill_seconds=session.extra_prefill_seconds)
        trace.add(StageRecord(
            stage="generate", seconds=time.perf_counter() - started, n_in=len(context.passages), n_out=1,
            tokens_in=stats.prompt_tokens, tokens_out=stats.new_tokens, extra=extra,
        ))
        text = text.strip()
        return Answer(text=text, citations=parse_citations(text, context), hits=[], trace=trace)

    def stream(self, query: str, context: Context) -> Iterator[str]:
        """Yield the answer's text as it is decoded (a thin generator over :meth:`generate`)."""
        import queue
        import threading

        pieces: "queue.Queue[str | None]" = queue.Queue()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.generate(query, context, on_text=pieces.put)
            except BaseException as exc:  # re-raised in the consumer's thread below
                failure.append(exc)
            finally:
                pieces.put(None)

        threading.Thread(target=run, daemon=True).start()
        while (piece := pieces.get()) is not None:
            yield piece
        if failure:
            raise failure[0]


def _complete_citation(session, sequence: list[int], n_passages: int) -> int | None:
    """Ask the model which passage it used when it answered without citing one.

    Small models often answer correctly but forget the marker. The answer is already in the KV cache, so
    appending `` [`` and reading the number the model writes next costs a few single-token passes, not a
    second prompt. The model may decline (no digit, or a number that names no passage): then nothing is
    added. The trace records ``citation_completed`` so evaluations can tell the two kinds of citation apart.
    """
    import torch

    tokenizer = session.engine.tokenizer
    logits = session.prefill(sequence + tokenizer(" [", add_special_tokens=False)["input_ids"])
    digits = ""
    for _ in range(3):
        piece = tokenizer.decode([int(torch.argmax(logits))])
        if not piece.isdigit():
            break
        digits += piece
        logits = session.feed([int(torch.argmax(logits))])
    number = int(digits) if digits else 0
    return number if 1 <= number <= n_passages else None


def _stop_at(text: str, stops: list[str]) -> int | None:
    positions = [text.find(s) for s in stops if s and s in text]
    return min(positions) if positions else None
