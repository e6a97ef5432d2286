"""The causal-LM wrapper shared by generators, chunkers and compressors, and the decoding loop.

The decoding loop is written by hand rather than calling ``model.generate``: speculative decoding (draft
models, drafting from retrieved passages) needs direct control of the KV cache and of verification, which
``generate`` does not expose, and every decoder in specrag builds on this one loop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

from rag.lazy import require

_LOCK = threading.Lock()
_LOADED: dict[tuple[str, str], "CausalLM"] = {}


@dataclass
class CausalLM:
    """A loaded causal LM and its tokenizer. Use :func:`load_causal_lm`, which shares one per model."""

    spec: str
    model: Any
    tokenizer: Any
    eos_token_ids: frozenset[int] = field(default_factory=frozenset)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat rendered with the model's own template, ready for the assistant's turn."""
        if getattr(self.tokenizer, "chat_template", None):
            rendered = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:  # base models without a template: plain role-prefixed text
            rendered = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return self.tokenizer(rendered, add_special_tokens=False)["input_ids"]


def load_causal_lm(model: str, dtype: str = "float32") -> CausalLM:
    """Load (once per process) a causal LM by pack name, local path or hub id."""
    key = (model, dtype)
    with _LOCK:
        if key not in _LOADED:
            torch = require("torch", "generate")
            transformers = require("transformers", "generate")
            from rag.models import resolve_model

            path = resolve_model(model)
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            lm = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
            lm.eval()
            eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
            generation_eos = getattr(lm.generation_config, "eos_token_id", None)
            if isinstance(generation_eos, int):
                eos.add(generation_eos)
            elif generation_eos:
                eos.update(generation_eos)
            _LOADED[key] = CausalLM(spec=model, model=lm, tokenizer=tokenizer, eos_token_ids=frozenset(eos))
        return _LOADED[key]


@dataclass
class DecodeStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0


class DecodeSession:
    """A KV cache over one sequence: feed tokens, get the next-token logits. Speculative decoding and
    citation completion both need to append tokens to a running sequence without re-reading the prompt."""

    def __init__(self, lm: CausalLM) -> None:
        from transformers import DynamicCache

        self.lm = lm
        self.cache = DynamicCache()
        self.length = 0

    def feed(self, token_ids: list[int]) -> Any:
        """Append ``token_ids`` and return the logits for the token after them (1-D tensor)."""
        import torch

        with torch.inference_mode():
            out = self.lm.model(input_ids=torch.tensor([token_ids]), past_key_values=self.cache, use_cache=True)
        self.length += len(token_ids)
        return out.logits[0, -1]


def decode(
    lm: CausalLM,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    stats: DecodeStats | None = None,
    session: DecodeSession | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time: greedy when ``temperature`` is 0, else sampled (seeded).

    Stops after an end-of-sequence token (which is not yielded) or ``max_new_tokens``. Pass a
    ``session`` to keep using its KV cache after the answer (it then holds prompt and answer).
    """
    import time

    import torch

    stats = stats if stats is not None else DecodeStats()
    stats.prompt_tokens = len(prompt_ids)
    session = session if session is not None else DecodeSession(lm)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    logits = session.feed(prompt_ids)
    stats.prefill_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(max_new_tokens):
        token = _pick(logits, temperature, generator)
        if token in lm.eos_token_ids:
            break
        stats.new_tokens += 1
        stats.decode_seconds = time.perf_counter() - started
        yield token
        logits = session.feed([token])
    stats.decode_seconds = time.perf_counter() - started


def _pick(logits: Any, temperature: float, generator: Any) -> int:
    import torch

    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


class TextStream:
    """Turns token ids into text increments, holding back incomplete multi-byte characters."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        delta, self.emitted = text[len(self.emitted):], text
        return delta
