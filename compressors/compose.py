"""Compose compressors: the first steps cut coarsely, the last one reaches the budget.

    >>> from compressors.compose import ComposeCompressor
    >>> comp = ComposeCompressor(rate=1 / 3)    # extractive to 1.5x the budget, then surprisal pruning
    >>> comp.compress("Who won?", hits)         # doctest: +SKIP

Every step but the last works to ``coarse_factor`` times the budget (never more than what it is given),
so the fine step (token pruning) has words to choose from: LongLLMLingua's coarse-then-fine order. The
steps' own ``rate``/``target_tokens`` are ignored; the composed budget rules, counted once.
"""

from __future__ import annotations

import math
from dataclasses import field
from typing import Any, Mapping, Sequence

from rag.compression import DEFAULT_TOKENIZER, BaseCompressor, Piece, TokenCounter, check_budget_params
from rag.errors import InputError
from rag.registry import declared_params

DEFAULT_STEPS: tuple[str, ...] = ("extractive", "surprisal")


@declared_params
class ComposeCompressor(BaseCompressor):
    """Run ``steps`` (registered compressor names or specs) one after another as one compressor."""

    steps: "Sequence[str | Mapping[str, Any]]" = DEFAULT_STEPS
    rate: float | None = None
    target_tokens: int | None = None
    coarse_factor: float = 1.5
    tokenizer: str = DEFAULT_TOKENIZER
    _built: "list[BaseCompressor] | None" = field(default=None, init=False)  # the steps, built on first use

    def __post_init__(self) -> None:
        check_budget_params("compose", self.rate, self.target_tokens)
        if not self.steps:
            raise InputError("compose compressor: steps must name at least one compressor")
        if self.coarse_factor < 1:
            raise InputError(f"compose compressor: coarse_factor must be at least 1, got {self.coarse_factor}")
        self.steps = [s if isinstance(s, str) else dict(s) for s in self.steps]

    def components(self) -> list[BaseCompressor]:
        if self._built is None:
            from rag.registry import build

            built = [build("compressor", s) for s in self.steps]
            for spec, step in zip(self.steps, built):
                if not isinstance(step, BaseCompressor):
                    raise InputError(f"compose compressor: step {spec!r} is not a specrag BaseCompressor")
            self._built = built
        return self._built

    def select(self, query: str, pieces: list[Piece], budget: int, counter: TokenCounter) -> list[Piece]:
        steps = self.components()
        in_play = sum(counter.count([p.text() for p in pieces]))
        for number, step in enumerate(steps):
            if not pieces:
                break
            last = number == len(steps) - 1
            aim = budget if last else min(math.floor(budget * self.coarse_factor), in_play)
            if aim >= in_play and not last:
                continue  # nothing for a coarse step to do
            # The last step fits its own budget (it retries on its cached scores): were the overshoot left
            # to this compressor's retries, every step would run again on a new coarse selection.
            pieces = step.fit(query, pieces, aim, counter) if last else step.select(query, pieces, aim, counter)
            in_play = sum(counter.count([p.text() for p in pieces]))
        return pieces
