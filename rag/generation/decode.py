"""Plain decoding on any engine: the loop every decoder in specrag builds on, its statistics, and streaming.

The decoding loop is written by hand rather than calling ``model.generate``: speculative decoding (draft
models, drafting from retrieved passages) needs direct control of the KV cache and of verification, which
``generate`` does not expose, and every decoder in specrag builds on this one loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from rag.generation.engine import Engine, Session, common_prefix


@dataclass
class DecodeStats:
    """What one decode did. ``first_token_seconds`` runs from the start of prefill to the first token."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    first_token_seconds: float = 0.0
    forward_passes: int = 0  # target-model passes, prefill included
    reused_prompt_tokens: int = 0  # prompt tokens whose KV came from a cached prefix

    @property
    def tokens_per_second(self) -> float:
        """Decode speed after the first token (the first token's time is the prefill's)."""
        return (self.new_tokens - 1) / self.decode_seconds if self.decode_seconds > 0 and self.new_tokens > 1 else 0.0


def decode(
    lm: Engine,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    stats: DecodeStats | None = None,
    session: Session | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time: greedy when ``temperature`` is 0, else sampled (seeded).

    Stops after an end-of-sequence token (which is not yielded) or ``max_new_tokens``. Pass a
    ``session`` to keep using its KV cache after the answer (it then holds the prompt and the answer,
    possibly without its last token: use :meth:`Session.prefill` to continue); a session that
    already holds a prefix of the prompt (a cached system prompt) is reused.
    """
    import time

    import torch

    stats = stats if stats is not None else DecodeStats()
    stats.prompt_tokens = len(prompt_ids)
    session = session if session is not None else lm.new_session()
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    stats.reused_prompt_tokens = min(common_prefix(session.tokens, prompt_ids), len(prompt_ids) - 1)
    logits = session.prefill(prompt_ids)
    stats.forward_passes += 1
    stats.prefill_seconds = time.perf_counter() - started
    decode_started = None
    for _ in range(max_new_tokens):
        token = _pick(logits, temperature, generator)
        if token in lm.eos_token_ids:
            break
        stats.new_tokens += 1
        now = time.perf_counter()
        if decode_started is None:
            decode_started = now
            stats.first_token_seconds = now - started
        stats.decode_seconds = now - decode_started
        yield token
        if stats.new_tokens < max_new_tokens:  # the last token's pass would be wasted
            logits = session.feed([token])
            stats.forward_passes += 1
    if decode_started is not None:
        stats.decode_seconds = time.perf_counter() - decode_started


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
