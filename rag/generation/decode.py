"""The causal-LM wrapper shared by generators, chunkers and compressors, and the decoding loop.

The decoding loop is written by hand rather than calling ``model.generate``: speculative decoding (draft
models, drafting from retrieved passages) needs direct control of the KV cache and of verification, which
``generate`` does not expose, and every decoder in specrag builds on this one loop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

from rag.errors import InputError
from rag.lazy import require

_LOCK = threading.Lock()
_LOADED: dict[tuple[str, str, str | None], "CausalLM"] = {}


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


def load_causal_lm(model: str, dtype: str = "float32", quantize: str | None = None) -> CausalLM:
    """Load (once per process) a causal LM by pack name, local path or hub id.

    ``quantize="int8"`` applies torch dynamic int8 quantisation to the Linear layers: several times faster
    decoding on CPU but lossy (answers change), so it is only ever applied when asked for.
    """
    if quantize not in (None, "int8"):
        raise InputError(f"load_causal_lm({model!r}): quantize must be None or 'int8', got {quantize!r}")
    key = (model, dtype, quantize)
    with _LOCK:
        if key not in _LOADED:
            torch = require("torch", "generate")
            transformers = require("transformers", "generate")
            from rag.models import resolve_model

            path = resolve_model(model)
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            lm = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
            lm.eval()
            if quantize == "int8":
                lm = torch.ao.quantization.quantize_dynamic(lm, {torch.nn.Linear}, dtype=torch.qint8)
            _LOADED[key] = CausalLM(spec=model, model=lm, tokenizer=tokenizer, eos_token_ids=eos_ids(lm, tokenizer))
        return _LOADED[key]


def eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """The end-of-sequence ids of a model: its tokenizer's, plus those of its generation config."""
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(generation_eos, int):
        eos.add(generation_eos)
    elif generation_eos:
        eos.update(generation_eos)
    return frozenset(eos)


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


class DecodeSession:
    """A KV cache over one sequence: feed tokens, get the next-token logits. Speculative decoding and
    citation completion both need to append tokens to a running sequence without re-reading the prompt.

    ``tokens`` always mirrors the cache. :meth:`crop` rolls the cache back (rejected draft tokens);
    :meth:`prefill` reuses the longest cached prefix of a new sequence; :meth:`copy` forks the cache (a
    cached system-prompt prefix is copied for each question).
    """

    def __init__(self, lm: CausalLM) -> None:
        from transformers import DynamicCache

        self.lm = lm
        self.cache = DynamicCache()
        self.tokens: list[int] = []
        self.passes = 0

    @property
    def length(self) -> int:
        return len(self.tokens)

    def feed(self, token_ids: list[int]) -> Any:
        """Append ``token_ids`` and return the logits for the token after them (1-D tensor)."""
        return self.feed_all(token_ids, last_only=True)[-1]

    def feed_all(self, token_ids: list[int], last_only: bool = False) -> Any:
        """Append ``token_ids`` in one forward pass; logits at every new position (``[len, vocab]``)."""
        import torch

        if not token_ids:
            raise InputError("DecodeSession.feed: no tokens to feed")
        with torch.inference_mode():
            out = self.lm.model(input_ids=torch.tensor([list(token_ids)]), past_key_values=self.cache, use_cache=True,
                                logits_to_keep=1 if last_only else 0)
        self.cache = out.past_key_values
        self.tokens.extend(int(t) for t in token_ids)
        self.passes += 1
        return out.logits[0]

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on (KV-cache rollback)."""
        if not 0 <= length <= self.length:
            raise InputError(f"DecodeSession.crop: length {length} outside 0..{self.length}")
        if length < self.length:
            self.cache.crop(length - self.length)  # transformers 5 takes minus the number of tokens to drop
            del self.tokens[length:]

    def prefill(self, token_ids: list[int]) -> Any:
        """Make the session hold exactly ``token_ids``, reusing the longest cached common prefix; return
        the logits after the last token. At least one token is always run (the logits are not cached)."""
        common = common_prefix(self.tokens, token_ids)
        common = min(common, len(token_ids) - 1)
        self.crop(common)
        return self.feed(token_ids[common:])

    def copy(self) -> "DecodeSession":
        """An independent session holding the same tokens (the cache tensors are copied)."""
        import copy

        twin = DecodeSession.__new__(DecodeSession)
        twin.lm, twin.cache, twin.tokens, twin.passes = self.lm, copy.deepcopy(self.cache), list(self.tokens), 0
        return twin


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


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
    ``session`` to keep using its KV cache after the answer (it then holds the prompt and the answer,
    possibly without its last token: use :meth:`DecodeSession.prefill` to continue); a session that
    already holds a prefix of the prompt (a cached system prompt) is reused.
    """
    import time

    import torch

    stats = stats if stats is not None else DecodeStats()
    stats.prompt_tokens = len(prompt_ids)
    session = session if session is not None else DecodeSession(lm)
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
