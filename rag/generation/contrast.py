"""Context-aware decoding (CAD): decode from what the retrieved passages change in the model's prediction.

After Shi et al., "Trusting Your Evidence: Hallucinate Less with Context-aware Decoding" (2023): the next
token comes from ``(1 + alpha) * logits(y | passages, question) - alpha * logits(y | question)``, which
amplifies the passages' effect and damps what the model would have said from memory alone (``alpha = 0``
is plain decoding). The cost is a second prompt without the passages (its prefill) and a second forward
pass per step over the same answer tokens.

:class:`ContrastSession` holds the two sessions behind the :class:`~rag.generation.engine.Session`
interface, so the plain and speculative decoding loops run on it unchanged: every pass feeds both, crops
both, and returns the contrasted logits, and speculative verification therefore checks drafts against the
contrasted distribution (lossless against CAD without speculation). On llama.cpp the two sessions keep
sequences of their own in the engine's one context (sharing the system prompt's cells), so neither
re-reads the other's tokens.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from rag.errors import InputError
from rag.generation.engine import Session


class ContrastSession(Session):
    """A session over the prompt with the passages, paired with one over ``plain_prompt`` (without them).

    The first :meth:`prefill` reads the prompt with the passages; its length marks where the answer
    starts, and the answer tokens are appended to both. ``tokens`` and ``length`` are those of the session
    with the passages. ``extra_prefill_seconds`` is the time spent reading ``plain_prompt``.
    """

    def __init__(self, with_context: Session, without_context: Session, plain_prompt: Sequence[int],
                 alpha: float) -> None:
        if alpha < 0:
            raise InputError(f"context-aware decoding: alpha must be at least 0, got {alpha}")
        if not plain_prompt:
            raise InputError("context-aware decoding: the prompt without passages is empty")
        self.engine = with_context.engine
        self.with_context, self.without_context = with_context, without_context
        self.plain_prompt = list(plain_prompt)
        self.alpha = alpha
        self.prompt_length: int | None = None  # set by the first prefill
        self.passes = 0
        self.extra_prefill_seconds = 0.0

    @property
    def tokens(self) -> list[int]:  # type: ignore[override]
        return self.with_context.tokens

    def mix(self, with_logits: Any, without_logits: Any) -> Any:
        """The contrasted logits (float32)."""
        return (1 + self.alpha) * with_logits.float() - self.alpha * without_logits.float()

    def _plain(self, token_ids: Sequence[int]) -> list[int]:
        """The tokens the session without passages holds for ``token_ids`` (prompt, then the same answer)."""
        if self.prompt_length is None or len(token_ids) < self.prompt_length:
            raise InputError(f"context-aware decoding: {len(token_ids)} tokens end before the prompt "
                             f"({self.prompt_length} tokens) that the first prefill read")
        return self.plain_prompt + list(token_ids[self.prompt_length:])

    def prefill(self, token_ids: Sequence[int]) -> Any:
        token_ids = list(token_ids)
        if self.prompt_length is None:
            self.prompt_length = len(token_ids)
        with_logits = self.with_context.prefill(token_ids)
        started = time.perf_counter()
        without_logits = self.without_context.prefill(self._plain(token_ids))
        if len(token_ids) == self.prompt_length:
            self.extra_prefill_seconds += time.perf_counter() - started
        self.passes += 1
        return self.mix(with_logits, without_logits)

    def feed_all(self, token_ids: Sequence[int], last_only: bool = False) -> Any:
        if self.prompt_length is None:
            raise InputError("context-aware decoding: prefill the prompt before feeding tokens")
        with_logits = self.with_context.feed_all(token_ids, last_only=last_only)
        without_logits = self.without_context.feed_all(token_ids, last_only=last_only)
        self.passes += 1
        return self.mix(with_logits, without_logits)

    def crop(self, length: int) -> None:
        self._check_crop(length)
        self.with_context.crop(length)
        self.without_context.crop(len(self._plain(self.with_context.tokens[:length])))

    @property
    def supports_tree(self) -> bool:  # type: ignore[override]
        return self.with_context.supports_tree and self.without_context.supports_tree

    def feed_tree(self, token_ids: Sequence[int], parents: Sequence[int]) -> Any:
        if self.prompt_length is None:
            raise InputError("context-aware decoding: prefill the prompt before feeding a tree")
        with_logits = self.with_context.feed_tree(token_ids, parents)
        without_logits = self.without_context.feed_tree(token_ids, parents)
        self.passes += 1
        return self.mix(with_logits, without_logits)

    def keep_path(self, nodes: Sequence[int]) -> None:
        self.with_context.keep_path(nodes)
        self.without_context.keep_path(nodes)

    def copy(self) -> "ContrastSession":
        twin = ContrastSession(self.with_context.copy(), self.without_context.copy(), self.plain_prompt, self.alpha)
        twin.prompt_length = self.prompt_length
        return twin
