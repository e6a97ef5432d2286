"""``engine="auto"``: measure each available engine on this machine once, pick the fastest for a RAG answer.

No engine wins everywhere. On an Intel Xeon with AVX512-BF16, transformers in bfloat16 reads prompts about
4x faster than float32 while llama.cpp decodes fastest; on an AMD EPYC without BF16, bfloat16 was slower
than float32 and llama.cpp won outright. So the choice is measured, per machine and model, never assumed
from the CPU's name: a short calibration reads a prompt of ``PROMPT_TOKENS`` tokens, times one-token decode
passes and verification passes of several widths, and estimates the time of a typical RAG answer
(``PROMPT_TOKENS`` prompt tokens, ``ANSWER_TOKENS`` new tokens, decoded speculatively as the default
generator does). The engine with the lowest estimate is chosen; the measurements and the reason are cached
as JSON under ``<specrag cache>/engines/<machine key>/`` and shown in the answer's trace.

The machine key covers what changes the result: the CPU model and feature flags, the thread count, and
the torch and llama-cpp-python versions. ``specrag bench engines`` prints the full table.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import InputError, SpecragError
from rag.machine import load_average, machine_facts, machine_key, say

# 2: choices record the machine's load while measuring; version-1 files were written by an engine layer that
# skipped llama.cpp for GGUF packs split over several files (the Qwen packs), so they are measured again.
FORMAT_VERSION = 2
PROMPT_TOKENS = 800  # a typical RAG prompt: five passages and a question
ANSWER_TOKENS = 40  # a typical grounded answer
WIDTHS = (1, 2, 4, 8, 16, 32)
# Acceptance rate assumed per draft token when estimating speculative decode cost for the choice; the real
# rate depends on the answer (copying from passages accepts far more), so it only ranks engines.
ASSUMED_ACCEPTANCE = 0.6
CANDIDATES = ("transformers:float32", "transformers:bfloat16", "llama.cpp")

_MEMO: dict[tuple[str, str], "EngineChoice"] = {}
_MEMO_LOCK = threading.Lock()


@dataclass
class EngineMeasure:
    """What one engine did on this machine: prompt reading rate, one-token decode, verification widths."""

    engine: str
    prompt_tokens_per_second: float
    decode_seconds: float  # one single-token pass with a warm cache of PROMPT_TOKENS tokens
    width_costs: dict[int, float]  # verification width -> cost relative to a single-token pass
    load_seconds: float = 0.0

    def answer_seconds(self, prompt_tokens: int = PROMPT_TOKENS, new_tokens: int = ANSWER_TOKENS,
                       speculative: bool = True) -> float:
        """Estimated time of one answer: prompt reading plus decoding (speculative: at the best width for
        ``ASSUMED_ACCEPTANCE``; plain: one pass per token)."""
        per_token = self.decode_seconds
        if speculative:
            p = ASSUMED_ACCEPTANCE
            per_token *= min(cost / ((1 - p ** w) / (1 - p)) for w, cost in self.width_costs.items())
        return prompt_tokens / self.prompt_tokens_per_second + new_tokens * per_token


@dataclass
class EngineChoice:
    """The engine chosen for a model on this machine, with every measurement and the reason."""

    model: str
    engine: str
    reason: str
    measures: list[EngineMeasure] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # engine -> why it was not measured
    machine: dict[str, Any] = field(default_factory=dict)
    measured_at: str = ""
    load_average: float | None = None  # 1-minute load just before measuring; other work skews the choice

    def engine_for(self, workload: str = "answer") -> str:
        """The engine for ``answer`` (the choice) or ``prompt`` (the fastest prompt reader) workloads."""
        if workload == "answer":
            return self.engine
        if workload == "prompt":
            return max(self.measures, key=lambda m: m.prompt_tokens_per_second).engine
        raise InputError(f"engine 'auto': unknown workload {workload!r}; use 'answer' or 'prompt'")

    def measure(self, engine: str) -> EngineMeasure | None:
        return next((m for m in self.measures if m.engine == engine), None)


def _choice_file(model: str, facts: dict[str, Any]) -> Path:
    from rag.models import cache_dir

    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in model)
    return cache_dir() / "engines" / machine_key(facts) / f"{safe}.json"


def calibration_prompt(engine: Any, tokens: int = PROMPT_TOKENS) -> list[int]:
    """``tokens`` token ids of ordinary English text (stdlib documentation), the same for every engine."""
    import functools
    import inspect
    import json as json_module
    import pathlib

    text = "\n\n".join(inspect.getdoc(obj) or "" for obj in (functools, functools.lru_cache, functools.partial,
                                                              json_module, json_module.dumps, pathlib, pathlib.Path))
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    while len(ids) < tokens:
        ids = ids + ids
    return ids[:tokens]


def measure(engine: Any, prompt_tokens: int = PROMPT_TOKENS, widths: tuple[int, ...] = WIDTHS,
            repeats: int = 3) -> EngineMeasure:
    """Time ``engine`` on this machine: prompt reading, one-token decode, verification passes by width.

    A model whose context is shorter than the prompt plus the widest pass is measured on a shorter prompt.
    """
    room = _context_length(engine) - max(widths) - 1
    if room < 16:
        raise InputError(f"{engine.describe()}: a context of {_context_length(engine)} tokens is too short to measure")
    prompt_tokens = min(prompt_tokens, room)
    prompt = calibration_prompt(engine, prompt_tokens)
    warm = engine.new_session()
    warm.feed(prompt[:16])  # first-call set-up (threads, buffers) is not a cost per answer
    engine.retain([])  # ... but the prompt read below is read in full
    session = engine.new_session()
    started = time.perf_counter()
    session.feed(prompt)
    prompt_seconds = time.perf_counter() - started
    base = session.length
    filler = [prompt[-1]] * max(widths)
    seconds: dict[int, float] = {}
    for width in sorted(set((1, *widths))):
        runs = []
        for _ in range(repeats + 1):
            started = time.perf_counter()
            session.feed_all(filler[:width])
            runs.append(time.perf_counter() - started)
            session.crop(base)
        seconds[width] = statistics.median(runs[1:])
    return EngineMeasure(engine=engine.name, prompt_tokens_per_second=prompt_tokens / prompt_seconds,
                         decode_seconds=seconds[1], width_costs={w: s / seconds[1] for w, s in seconds.items()})


def _context_length(engine: Any) -> int:
    n_ctx = getattr(engine, "n_ctx", None)
    if n_ctx:
        return int(n_ctx)
    config = getattr(getattr(engine, "model", None), "config", None)
    return int(getattr(config, "max_position_embeddings", 0) or PROMPT_TOKENS + 2 * max(WIDTHS))


def choose_engine(model: str, *, refresh: bool = False, candidates: tuple[str, ...] = CANDIDATES,
                  prompt_tokens: int = PROMPT_TOKENS) -> EngineChoice:
    """The fastest engine for ``model`` on this machine: read from the cache, else measured once and cached."""
    from rag.generation.engine import load_engine
    from rag.io import atomic_write_json
    from rag.shared import forget

    facts = machine_facts()
    path = _choice_file(model, facts)
    with _MEMO_LOCK:
        if not refresh and (model, str(path)) in _MEMO:
            return _MEMO[(model, str(path))]
        if not refresh and path.is_file():
            choice = _read_choice(path)
            if choice is not None:
                _MEMO[(model, str(path))] = choice
                return choice
        say(f"measuring the engines for {model} on this machine (once; cached in {path.parent})")
        load = load_average()  # before measuring: our own work is not the machine being busy
        measures, skipped = [], {}
        for name in candidates:
            try:
                started = time.perf_counter()
                engine = load_engine(model, name)
                load_seconds = time.perf_counter() - started
                result = measure(engine, prompt_tokens=prompt_tokens)
                result.load_seconds = load_seconds
                measures.append(result)
                say(f"  {name}: {result.prompt_tokens_per_second:.0f} prompt tokens/s, "
                     f"{result.decode_seconds * 1000:.0f} ms per token, typical answer "
                     f"{result.answer_seconds():.2f} s")
            except Exception as exc:  # noqa: BLE001 - a candidate that cannot run here is skipped, with its reason
                skipped[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if not measures:
            raise SpecragError(f"engine 'auto': no engine could run {model!r}: "
                               + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
        best = min(measures, key=lambda m: m.answer_seconds())
        others = ", ".join(f"{m.engine} {m.answer_seconds():.2f} s" for m in measures if m is not best)
        reason = (f"{best.engine}: estimated {best.answer_seconds():.2f} s for a {prompt_tokens}-token prompt and "
                  f"{ANSWER_TOKENS} new tokens" + (f" (against {others})" if others else "")
                  + f", measured at {facts.get('threads')} threads")
        cores = os.cpu_count() or 1
        if load is not None and load > cores:
            reason += (f"; the machine was busy (load {load:.1f} on {cores} cores), so the choice may be off: "
                       f"delete {path} to measure again")
        choice = EngineChoice(model=model, engine=best.engine, reason=reason, measures=measures, skipped=skipped,
                              machine=facts, measured_at=time.strftime("%Y-%m-%d %H:%M:%S"), load_average=load)
        atomic_write_json(path, {"format_version": FORMAT_VERSION, **asdict(choice)})
        for m in measures:  # keep only the chosen engine's weights in memory
            if m.engine != best.engine:
                _forget_engine(model, m.engine, forget)
        say(f"engine for {model}: {reason}")
        _MEMO[(model, str(path))] = choice
        return choice


def _forget_engine(model: str, engine: str, forget: Any) -> None:
    if engine.startswith("transformers"):
        forget(("causal-lm", model, engine.split(":", 1)[1], None))
    else:
        from rag.generation.llamacpp import _torch_threads

        forget(("llama.cpp", model, _torch_threads()))


def _read_choice(path: Path) -> EngineChoice | None:
    """A cached choice, or None when the file is unreadable or of another format (it is then re-measured)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.pop("format_version", None) != FORMAT_VERSION:
            return None
        data["measures"] = [EngineMeasure(**{**m, "width_costs": {int(w): float(c) for w, c in m["width_costs"].items()}})
                            for m in data["measures"]]
        return EngineChoice(**data)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def width_costs(engine: Any) -> dict[int, float]:
    """The verification-width cost table of ``engine`` on this machine, for the speculative width policy.

    Read from the model's calibration when ``engine`` was measured there; otherwise measured now for this
    engine alone (a few seconds) and cached beside it.
    """
    facts = machine_facts()
    path = _choice_file(engine.spec, facts)
    with _MEMO_LOCK:
        memo = _MEMO.get((engine.spec, str(path)))
    choice = memo or (_read_choice(path) if path.is_file() else None)
    found = choice.measure(engine.name) if choice else None
    if found is not None:
        return dict(found.width_costs)
    from rag.io import atomic_write_json

    single = path.with_name(path.stem + f".{engine.name.replace(':', '-')}.json")
    if single.is_file():
        try:
            return {int(w): float(c) for w, c in json.loads(single.read_text(encoding="utf-8"))["width_costs"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            pass
    result = measure(engine)
    atomic_write_json(single, {"format_version": FORMAT_VERSION, **asdict(result)})
    return dict(result.width_costs)
