"""Speculative decoding on our own loop: draft, verify the whole draft in one pass, roll the cache back.

Each step feeds the last accepted token plus a draft of ``d`` tokens to the target model in one forward
pass, which yields the target's logits at every draft position. Greedy decoding accepts the longest
draft prefix equal to the target's argmax and then takes the target's own token at the first mismatch,
so the output is token-identical to plain greedy decoding; sampling (temperature > 0) accepts draft token
``x`` with probability ``min(1, p(x) / q(x))`` and on rejection samples from ``max(p - q, 0)``
(Leviathan et al., Chen et al. 2023), which leaves the target's distribution unchanged. Model-free
drafters propose a point mass (``q(x) = 1``). Rejected positions are cropped from the KV cache.

On a CPU the cost of a verification pass depends on its width in a non-monotonic way (MODELS.md: on
the Qwen models widths 4, 8 and 16 cost 1.7-2.1 one-token passes, widths 2, 3 and 11 about 3). The
:class:`WidthPolicy` therefore picks, for each draft, the verification width that maximises expected
tokens per unit of cost, padding a short draft up to a cheap width (a padding token that happens to
match the target is accepted like any other: verification is exact whatever is fed) or trimming it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from rag.errors import InputError
from rag.lm import CausalLM, DecodeSession, DecodeStats, common_prefix

# Relative cost of a verification pass by width (1 = one-token decode), measured on this machine kind
# for Qwen2.5-0.5B and -1.5B with a 1,432-token context (MODELS.md). Widths not listed are not used.
DEFAULT_WIDTH_COSTS: dict[int, float] = {1: 1.0, 4: 1.8, 8: 1.7, 16: 2.1}
PAD = "pad"


@dataclass
class Draft:
    """Proposed continuation. ``probs`` holds the draft distribution of each token (a draft model's
    softmax) or is None for a point mass; ``confidence`` optionally estimates each token's acceptance."""

    tokens: list[int]
    source: str
    match_length: int = 0
    probs: list[Any] | None = None
    confidence: list[float] | None = None


@dataclass
class SpecStats(DecodeStats):
    """Decode statistics plus what speculation did, per drafter (``"pad"`` counts padding tokens)."""

    drafted: dict[str, int] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)
    verify_passes: int = 0  # passes that carried a draft
    widths: dict[int, int] = field(default_factory=dict)  # verification width -> passes

    @property
    def mean_accepted_length(self) -> float:
        """Tokens produced per decode pass (1.0 for plain decoding)."""
        passes = self.forward_passes - 1
        return (self.new_tokens - 1) / passes if passes > 0 and self.new_tokens > 1 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain numbers for a trace extra."""
        return {
            "drafted": dict(self.drafted), "accepted": dict(self.accepted), "forward_passes": self.forward_passes,
            "verify_passes": self.verify_passes, "mean_accepted_length": self.mean_accepted_length,
            "widths": {str(k): v for k, v in sorted(self.widths.items())},
        }


class AcceptanceTracker:
    """Recent per-token acceptance rate of each (drafter, match-length bucket), with exponential decay.

    Under the usual geometric model a draft that had ``k`` tokens accepted and then one rejected is
    ``k`` successes and one failure; a fully accepted draft is ``k`` successes.
    """

    def __init__(self, decay: float = 0.9, prior: float = 0.6, prior_weight: float = 2.0) -> None:
        self.decay, self.prior, self.prior_weight = decay, prior, prior_weight
        self.counts: dict[tuple[str, int], list[float]] = {}

    @staticmethod
    def bucket(match_length: int) -> int:
        return 0 if match_length <= 0 else 1 if match_length == 1 else 2 if match_length <= 3 else 3 if match_length <= 7 else 4

    def rate(self, source: str, match_length: int) -> float:
        success, failure = self.counts.get((source, self.bucket(match_length)), (0.0, 0.0))
        return (success + self.prior * self.prior_weight) / (success + failure + self.prior_weight)

    def update(self, source: str, match_length: int, offered: int, accepted: int) -> None:
        key = (source, self.bucket(match_length))
        counts = self.counts.setdefault(key, [0.0, 0.0])
        counts[0] = counts[0] * self.decay + accepted
        counts[1] = counts[1] * self.decay + (1 if accepted < offered else 0)


class WidthPolicy:
    """Choose the verification width (1 + draft tokens fed) maximising expected tokens per unit cost.

    ``costs`` maps width to the relative cost of a pass (width 1 must be there); see
    :func:`measure_width_costs` to measure it for a model on this machine.
    """

    def __init__(self, costs: dict[int, float] | None = None) -> None:
        costs = dict(costs or DEFAULT_WIDTH_COSTS)
        if costs.get(1) is None:
            raise InputError(f"WidthPolicy: the cost table must include width 1, got widths {sorted(costs)}")
        self.costs = {int(w): float(c) for w, c in costs.items()}

    @property
    def max_draft(self) -> int:
        return max(self.costs) - 1

    def choose(self, accept_probs: list[float]) -> int:
        """Best width for a draft whose i-th token would be accepted with probability ``accept_probs[i]``
        (given the earlier ones were)."""
        best_width, best_value = 1, 1.0 / self.costs[1]
        for width, cost in self.costs.items():
            expected, survive = 1.0, 1.0
            for p in accept_probs[: width - 1]:
                survive *= p
                expected += survive
            if expected / cost > best_value + 1e-9:
                best_width, best_value = width, expected / cost
        return best_width

    def useful_draft(self, rate: float) -> int:
        """How many tokens are worth drafting when each is accepted with probability ``rate``."""
        return self.choose([rate] * self.max_draft) - 1


def measure_width_costs(lm: CausalLM, context_ids: list[int], widths: list[int], repeats: int = 3) -> dict[int, float]:
    """Time verification passes of each width after ``context_ids``; relative to width 1 (median of repeats)."""
    import statistics

    session = DecodeSession(lm)
    session.prefill(context_ids)
    base = session.length
    filler = [context_ids[-1]] * max(widths)
    seconds: dict[int, float] = {}
    for width in sorted(set([1, *widths])):
        runs = []
        for _ in range(repeats + 1):
            started = time.perf_counter()
            session.feed_all(filler[:width])
            runs.append(time.perf_counter() - started)
            session.crop(base)
        seconds[width] = statistics.median(runs[1:])
    return {w: s / seconds[1] for w, s in seconds.items()}


def speculative_decode(
    lm: CausalLM,
    prompt_ids: list[int],
    drafter: Any,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    stats: SpecStats | None = None,
    session: DecodeSession | None = None,
    policy: WidthPolicy | None = None,
    tracker: AcceptanceTracker | None = None,
) -> Iterator[int]:
    """Yield new token ids as they are accepted; the same contract as :func:`rag.lm.decode`.

    ``drafter`` has ``start(prompt_ids, temperature, generator)`` and ``propose(tokens, k) -> Draft``
    (see :mod:`rag.drafters`). Greedy output equals :func:`rag.lm.decode`'s token for token; sampled
    output follows the same distribution.
    """
    import torch

    if max_new_tokens < 1:
        raise InputError(f"speculative_decode: max_new_tokens must be at least 1, got {max_new_tokens}")
    stats = stats if stats is not None else SpecStats()
    policy = policy or WidthPolicy()
    tracker = tracker or AcceptanceTracker()
    session = session if session is not None else DecodeSession(lm)
    generator = torch.Generator().manual_seed(seed)
    eos = lm.eos_token_ids
    stats.prompt_tokens = len(prompt_ids)

    started = time.perf_counter()
    drafter.start(list(prompt_ids), temperature=temperature, generator=generator)
    stats.reused_prompt_tokens = min(common_prefix(session.tokens, prompt_ids), len(prompt_ids) - 1)
    logits = session.prefill(list(prompt_ids))
    stats.forward_passes += 1
    stats.prefill_seconds = time.perf_counter() - started
    pending = _pick(logits, temperature, generator)
    sequence = list(prompt_ids)
    decode_started = None
    while True:
        if pending in eos:
            break
        sequence.append(pending)
        stats.new_tokens += 1
        now = time.perf_counter()
        if decode_started is None:
            decode_started = now
            stats.first_token_seconds = now - started
        stats.decode_seconds = now - decode_started
        yield pending
        if stats.new_tokens >= max_new_tokens:
            break
        remaining = max_new_tokens - stats.new_tokens  # the pending token of this pass is the last one we may need
        k = min(policy.max_draft, remaining)
        draft = drafter.propose(sequence, k) if k > 0 else Draft([], "none")
        tokens = draft.tokens[:k]
        if draft.confidence is not None:
            probs = [min(c, 0.99) for c in draft.confidence[: len(tokens)]]
        else:
            probs = [tracker.rate(draft.source, draft.match_length)] * len(tokens)
        width = policy.choose(probs) if tokens else 1
        tokens = tokens[: width - 1]
        n_real = len(tokens)
        fed_draft = tokens + [tokens[-1] if tokens else pending] * (width - 1 - n_real)
        base = session.length  # the pending token is not in the cache yet
        all_logits = session.feed_all([pending, *fed_draft])
        stats.forward_passes += 1
        stats.widths[width] = stats.widths.get(width, 0) + 1
        accepted, pending = _verify(all_logits, fed_draft, draft.probs, temperature, generator)
        session.crop(base + 1 + len(accepted))
        if n_real:
            stats.verify_passes += 1
            got = min(len(accepted), n_real)
            stats.drafted[draft.source] = stats.drafted.get(draft.source, 0) + n_real
            stats.accepted[draft.source] = stats.accepted.get(draft.source, 0) + got
            tracker.update(draft.source, draft.match_length, n_real, got)
            if len(fed_draft) > n_real:
                stats.drafted[PAD] = stats.drafted.get(PAD, 0) + len(fed_draft) - n_real
                stats.accepted[PAD] = stats.accepted.get(PAD, 0) + len(accepted) - got
        for token in accepted:
            if token in eos:
                pending = token
                break
            sequence.append(token)
            stats.new_tokens += 1
            stats.decode_seconds = time.perf_counter() - decode_started
            yield token
            if stats.new_tokens >= max_new_tokens:
                break
        else:
            continue
        if pending in eos or stats.new_tokens >= max_new_tokens:
            break
    if decode_started is not None:
        stats.decode_seconds = time.perf_counter() - decode_started


def _verify(logits: Any, draft: list[int], draft_probs: list[Any] | None, temperature: float,
            generator: Any) -> tuple[list[int], int]:
    """Accepted draft prefix and the target's next token. ``logits[i]`` is the target's distribution for
    the position of ``draft[i]``; ``logits[len(draft)]`` follows the whole draft."""
    import torch

    if temperature <= 0:
        predicted = logits.argmax(dim=-1).tolist()
        n = 0
        while n < len(draft) and draft[n] == predicted[n]:
            n += 1
        return draft[:n], predicted[n]
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    for i, token in enumerate(draft):
        p = probs[i]
        q = draft_probs[i] if draft_probs is not None and i < len(draft_probs) else None
        q_token = float(q[token]) if q is not None else 1.0
        ratio = float(p[token]) / q_token if q_token > 0 else 1.0
        if float(torch.rand(1, generator=generator)) < min(1.0, ratio):
            continue
        if q is None:
            residual = p.clone()
            residual[token] = 0.0
        else:
            residual = torch.clamp(p - q, min=0.0)
        total = float(residual.sum())
        if total <= 0:  # p == q: any rejection is impossible in exact arithmetic; fall back to p
            residual, total = p, float(p.sum())
        return draft[:i], int(torch.multinomial(residual / total, 1, generator=generator))
    return list(draft), int(torch.multinomial(probs[len(draft)], 1, generator=generator))


def _pick(logits: Any, temperature: float, generator: Any) -> int:
    import torch

    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
