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

A drafter may also propose a tree (``Draft.parents``, token recycling's ``recycling-tree``): where the
session can attend along a tree (:attr:`rag.generation.engine.Session.supports_tree`), greedy decoding feeds
its best nodes in one pass, follows the target's argmax down the tree as far as a child matches, and keeps
only that branch in the cache; elsewhere, and when sampling, the tree's main path is verified as a path.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from rag.errors import InputError
from rag.generation.decode import DecodeStats
from rag.generation.engine import Engine, Session, common_prefix

# Relative cost of a verification pass by width (1 = one-token decode), measured on this machine kind
# for Qwen2.5-0.5B and -1.5B with a 1,432-token context (MODELS.md). Widths not listed are not used.
DEFAULT_WIDTH_COSTS: dict[int, float] = {1: 1.0, 4: 1.8, 8: 1.7, 16: 2.1}
PAD = "pad"


@dataclass
class Draft:
    """Proposed continuation. ``probs`` holds the draft distribution of each token (a draft model's
    softmax) or is None for a point mass; ``confidence`` optionally estimates each token's acceptance.

    A tree draft sets ``parents``: token ``i`` follows token ``parents[i]`` (an earlier index), or the last
    accepted token for -1; nodes come best first, and ``confidence`` then estimates each node's chance of
    being accepted (not given its parent). Without ``parents`` the tokens are a path.
    """

    tokens: list[int]
    source: str
    match_length: int = 0
    probs: list[Any] | None = None
    confidence: list[float] | None = None
    parents: list[int] | None = None


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


# Prior acceptance of a looked-up draft by match-length bucket (0, 1, 2-3, 4-7, 8-15, 16+ tokens): the
# chance that its first token is accepted, and that each later token is, given the one before was. Acceptance
# of such drafts is bimodal (the match was a coincidence and the first token fails, or a copy is under way
# and most of the draft passes), so one per-token rate fits neither case. Measured with forced 15-token SAM
# drafts on HotpotQA RAG prompts (python -m bench.draft_acceptance; eval/results/generate.md); the tracker
# replaces them with what it sees.
DEFAULT_FIRST_PRIORS: tuple[float, ...] = (0.2, 0.35, 0.5, 0.7, 0.8, 0.85)
DEFAULT_CONTINUE_PRIOR = 0.85
# Upper bounds (inclusive) of the match-length buckets; one more bucket holds everything longer.
MATCH_LENGTH_BOUNDS: tuple[int, ...] = (0, 1, 3, 7, 15)


class AcceptanceTracker:
    """Recent acceptance of each (drafter, match-length bucket), with exponential decay.

    Two rates per key: the first draft token's acceptance, and each later token's given the one before was
    accepted. A draft with ``k`` of ``n`` tokens accepted is a first-token success (``k > 0``) or failure,
    plus ``k - 1`` later successes and one later failure if ``0 < k < n``. A key whose drafts the width
    policy keeps declining is explored after ``explore_after`` declines (its draft is fed anyway), so a
    pessimistic estimate can recover.
    """

    def __init__(self, decay: float = 0.9, first_priors: tuple[float, ...] = DEFAULT_FIRST_PRIORS,
                 continue_prior: float = DEFAULT_CONTINUE_PRIOR, prior_weight: float = 2.0,
                 explore_after: int = 32) -> None:
        if len(first_priors) != len(MATCH_LENGTH_BOUNDS) + 1:
            raise InputError("AcceptanceTracker: first_priors needs one value per match-length bucket "
                             f"({len(MATCH_LENGTH_BOUNDS) + 1}), got {len(first_priors)}")
        self.decay, self.prior_weight, self.explore_after = decay, prior_weight, explore_after
        self.first_priors, self.continue_prior = tuple(first_priors), continue_prior
        self.counts: dict[tuple[str, int], list[float]] = {}  # key -> [first ok, first failed, later ok, later failed]
        self.declines: dict[tuple[str, int], int] = {}

    @staticmethod
    def bucket(match_length: int) -> int:
        """Index of the match-length bucket (``MATCH_LENGTH_BOUNDS``) that ``match_length`` falls in."""
        return bisect.bisect_left(MATCH_LENGTH_BOUNDS, match_length)

    @staticmethod
    def bucket_labels() -> tuple[str, ...]:
        """Readable names of the buckets, in order: ``("0", "1", "2-3", "4-7", "8-15", "16+")``."""
        labels, low = [], 0
        for upper in MATCH_LENGTH_BOUNDS:
            labels.append(str(upper) if upper == low else f"{low}-{upper}")
            low = upper + 1
        return (*labels, f"{low}+")

    def _estimate(self, successes: float, failures: float, prior: float) -> float:
        return (successes + prior * self.prior_weight) / (successes + failures + self.prior_weight)

    def accept_probs(self, source: str, match_length: int, n: int) -> list[float]:
        """Acceptance probability of each of ``n`` draft tokens, given the tokens before it were accepted."""
        bucket = self.bucket(match_length)
        first_ok, first_failed, later_ok, later_failed = self.counts.get((source, bucket), (0.0, 0.0, 0.0, 0.0))
        first = self._estimate(first_ok, first_failed, self.first_priors[bucket])
        later = self._estimate(later_ok, later_failed, self.continue_prior)
        return [first] + [later] * (n - 1) if n > 0 else []

    def update(self, source: str, match_length: int, offered: int, accepted: int) -> None:
        key = (source, self.bucket(match_length))
        counts = self.counts.setdefault(key, [0.0, 0.0, 0.0, 0.0])
        counts[:] = [c * self.decay for c in counts]
        if accepted == 0:
            counts[1] += 1
        else:
            counts[0] += 1
            counts[2] += accepted - 1
            counts[3] += 1 if accepted < offered else 0
        self.declines.pop(key, None)

    def declined(self, source: str, match_length: int) -> bool:
        """Note that a draft of this key was not fed; True (and the count restarts) when it is time to explore."""
        key = (source, self.bucket(match_length))
        self.declines[key] = self.declines.get(key, 0) + 1
        if self.declines[key] >= self.explore_after:
            del self.declines[key]
            return True
        return False


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

    def choose_tree(self, node_probs: list[float]) -> int:
        """Best width (1 + nodes fed) for a tree draft whose nodes, best first, are accepted with probability
        ``node_probs[i]`` each: the expected tokens of a pass are 1 plus their sum."""
        best_width, best_value = 1, 1.0 / self.costs[1]
        for width, cost in self.costs.items():
            expected = 1.0 + sum(node_probs[: width - 1])
            if expected / cost > best_value + 1e-9:
                best_width, best_value = width, expected / cost
        return best_width


def main_path(draft: Draft) -> Draft:
    """A tree draft reduced to its main path (each node's first child, from the root), for engines and
    sampling that verify paths only; a path draft is returned as it is."""
    if draft.parents is None:
        return draft
    tokens, node = [], -1
    for i, parent in enumerate(draft.parents):
        if parent == node:
            tokens.append(draft.tokens[i])
            node = i
    return Draft(tokens=tokens, source=draft.source, match_length=draft.match_length)


def verify_tree(logits: Any, nodes: list[int], parents: list[int]) -> tuple[list[int], list[int], int]:
    """Greedy verification of a tree fed as ``nodes`` (node 0 the pending token, ``parents[0] == -1``):
    the accepted path's node indices (from 0), its accepted tokens, and the target's next token after it."""
    children: dict[int, dict[int, int]] = {}
    for node in range(1, len(nodes)):
        children.setdefault(parents[node], {}).setdefault(nodes[node], node)
    predicted = logits.argmax(dim=-1).tolist()
    path, accepted, node = [0], [], 0
    while True:
        child = children.get(node, {}).get(predicted[node])
        if child is None:
            return path, accepted, predicted[node]
        accepted.append(nodes[child])
        path.append(child)
        node = child


def measure_width_costs(lm: Engine, context_ids: list[int], widths: list[int], repeats: int = 3) -> dict[int, float]:
    """Time verification passes of each width after ``context_ids``; relative to width 1 (median of repeats)."""
    import statistics

    session = lm.new_session()
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
    lm: Engine,
    prompt_ids: list[int],
    drafter: Any,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    stats: SpecStats | None = None,
    session: Session | None = None,
    policy: WidthPolicy | None = None,
    tracker: AcceptanceTracker | None = None,
) -> Iterator[int]:
    """Yield new token ids as they are accepted; the same contract as :func:`rag.generation.decode.decode`.

    ``drafter`` has ``start(prompt_ids, temperature, generator)`` and ``propose(tokens, k) -> Draft``
    (see :mod:`rag.generation.drafters`). Greedy output equals :func:`rag.generation.decode.decode`'s token for token; sampled
    output follows the same distribution.
    """
    import torch

    if max_new_tokens < 1:
        raise InputError(f"speculative_decode: max_new_tokens must be at least 1, got {max_new_tokens}")
    stats = stats if stats is not None else SpecStats()
    policy = policy or WidthPolicy()
    tracker = tracker or AcceptanceTracker()
    session = session if session is not None else lm.new_session()
    generator = torch.Generator().manual_seed(seed)
    eos = lm.eos_token_ids
    stats.prompt_tokens = len(prompt_ids)

    observe = getattr(drafter, "observe", None)
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
        if draft.parents is not None and (temperature > 0 or not session.supports_tree):
            draft = main_path(draft)  # tree verification here is greedy and needs the engine's tree mask
        if draft.parents is not None:
            accepted, pending = _verify_tree(session, draft, pending, policy, observe, stats)
        else:
            accepted, pending = _verify_path(session, draft, pending, k, policy, tracker, observe, stats, temperature,
                                             generator)
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


def _verify_tree(session: Session, draft: Draft, pending: int, policy: WidthPolicy, observe: Any,
                 stats: SpecStats) -> tuple[list[int], int]:
    """One pass verifying a tree draft (its best nodes, as many as the policy's width allows), greedily:
    the accepted path's tokens and the target's next token; the session keeps the pending token and them."""
    width = policy.choose_tree(draft.confidence or [0.0] * len(draft.tokens))
    nodes = [pending, *draft.tokens[: width - 1]]
    parents = [-1] + [p + 1 for p in draft.parents[: width - 1]]  # type: ignore[index]
    all_logits = session.feed_tree(nodes, parents)
    if observe is not None:
        observe(nodes, all_logits)
    path, accepted, pending = verify_tree(all_logits, nodes, parents)
    session.keep_path(path)
    stats.forward_passes += 1
    stats.widths[len(nodes)] = stats.widths.get(len(nodes), 0) + 1
    if len(nodes) > 1:
        stats.verify_passes += 1
        stats.drafted[draft.source] = stats.drafted.get(draft.source, 0) + len(nodes) - 1
        stats.accepted[draft.source] = stats.accepted.get(draft.source, 0) + len(accepted)
    return accepted, pending


def _verify_path(session: Session, draft: Draft, pending: int, k: int, policy: WidthPolicy,
                 tracker: AcceptanceTracker, observe: Any, stats: SpecStats, temperature: float,
                 generator: Any) -> tuple[list[int], int]:
    """One pass verifying a path draft (trimmed or padded to the width the policy picks): the accepted
    draft tokens and the target's next token; the session keeps the pending token and the accepted ones."""
    tokens = draft.tokens[:k]
    if draft.confidence is not None:
        probs = [min(c, 0.99) for c in draft.confidence[: len(tokens)]]
    else:
        probs = tracker.accept_probs(draft.source, draft.match_length, len(tokens))
    width = policy.choose(probs) if tokens else 1
    if width == 1 and tokens and draft.confidence is None and tracker.declined(draft.source, draft.match_length):
        width = policy.choose([0.99] * len(tokens))  # explore: verify the draft so the estimate can recover
    tokens = tokens[: width - 1]
    n_real = len(tokens)
    fed_draft = tokens + [tokens[-1] if tokens else pending] * (width - 1 - n_real)
    base = session.length  # the pending token is not in the cache yet
    all_logits = session.feed_all([pending, *fed_draft])
    if observe is not None:  # drafters that learn from the target's passes (token recycling)
        observe([pending, *fed_draft], all_logits)
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
    return accepted, pending


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
