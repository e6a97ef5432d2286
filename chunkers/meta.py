"""Meta-Chunking with a small causal LM: perplexity chunking, margin-sampling chunking, dynamic merging.

After "Meta-Chunking: Learning Efficient Text Segmentation via Logical Perception" (Zhao et al., 2024).

*Perplexity chunking* (:class:`PerplexityChunker`) scores each sentence by its mean token negative
log-likelihood given everything before it (its log-perplexity) and cuts after a sentence that is a local
minimum of that sequence, deeper than ``threshold`` on both sides: the LM was sure of that sentence and is
surprised by the next one. The document is read in windows of ``window_tokens`` tokens, one forward pass
per window, with the KV cache carried between windows and bounded to the document's first few tokens plus
the last ``context_tokens``; so each sentence is conditioned on up to ``context_tokens`` of preceding text
and nothing is recomputed.

*Margin sampling* (:class:`MarginChunker`) asks the LM, through its chat template, whether the next
sentence belongs with the text before it, and reads the probabilities of its two possible answers
("No": split, "Yes": keep together). Every gap is an independent prompt, so all gaps of a batch of documents
run in left-padded batches.

*Dynamic merging* (:func:`dynamic_merge`, the ``target_tokens`` parameter of both chunkers) joins the fine
chunks across their weakest boundaries first, while a merged chunk stays within ``target_tokens``.
``max_tokens`` is a hard limit either way: a longer group is cut at its strongest gap.

Both chunkers run their LM on any engine of :mod:`rag.generation.engine` (``engine``: transformers in
float32 or bfloat16, or llama.cpp reading the pack's GGUF file). The default is ``transformers:float32``
rather than ``auto`` on purpose: chunk boundaries are what an index is built from, and ``auto`` picks its
engine by a measurement on each machine, so the same config would chunk differently on two machines.

    >>> from chunkers.meta import PerplexityChunker
    >>> chunker = PerplexityChunker(max_tokens=128, target_tokens=96)   # cheap: the LM loads on first use
    >>> chunker.chunk(doc)                                              # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Sequence

import numpy as np

from chunkers.text import SpanChunker, check_sizes, segment
from rag.errors import InputError
from rag.generation.engine import engine_param
from rag.registry import declared_params
from rag.text import Span, sentence_units

# The question a small model answered best among those tried (on SQuAD paragraph pairs, SmolLM2-135M
# ranked the topic change above chance with this wording, and at chance with the paper's "1. split /
# 2. keep" options). "No" (not the same subject) is the split answer.
MARGIN_SYSTEM = "You are a helpful assistant."
MARGIN_PROMPT = "Text A: {left}\nText B: {right}\nIs Text B about the same subject as Text A? Answer Yes or No."
SPLIT_ANSWER, KEEP_ANSWER = "No", "Yes"


def dynamic_merge(
    spans: Sequence[Span], strengths: Sequence[float], starts: Sequence[int], target_tokens: int
) -> list[Span]:
    """Merge consecutive ``spans`` across their weakest boundaries first, while a merged span stays within
    ``target_tokens`` tokens (counted on the token ``starts`` of the text).

    ``strengths[i]`` is the strength of the boundary between ``spans[i]`` and ``spans[i + 1]``. Spans
    already longer than ``target_tokens`` are kept as they are.

        >>> dynamic_merge([(0, 2), (2, 4), (4, 6)], [0.9, 0.1], starts=[0, 2, 4], target_tokens=2)
        [(0, 2), (2, 6)]
    """
    if len(strengths) != max(len(spans) - 1, 0):
        raise InputError(f"dynamic_merge: {len(spans)} spans need {max(len(spans) - 1, 0)} strengths, got {len(strengths)}")
    if target_tokens < 1:
        raise InputError(f"dynamic_merge: target_tokens must be at least 1, got {target_tokens}")
    gaps = [0.0, *strengths]
    cuts = range(1, len(spans))
    # Spans act as units; nothing is split (max = +inf), and only the merging step runs.
    return segment(list(spans), starts, gaps, cuts, max_tokens=10**12, target_tokens=target_tokens)


def local_minima(values: Sequence[float], threshold: float) -> tuple[list[int], list[float]]:
    """Boundaries after local minima of ``values`` deeper than ``threshold``, and every gap's strength.

    Gap ``c`` (``1 <= c < n``) lies between items ``c - 1`` and ``c``. It is a boundary when item ``c - 1``
    is a local minimum whose both sides rise by more than ``threshold``:
    ``values[c-2] - values[c-1] > threshold`` and ``values[c] - values[c-1] > threshold`` (the paper's rule;
    for the first item only the right side counts). The strength of gap ``c`` is the rise
    ``values[c] - values[c-1]``: how much more surprising the next sentence is than the last one, which
    ranks the boundaries for merging and for cutting over-long groups. Index 0 of the strengths is unused.
    """
    n = len(values)
    strength = [0.0] * n
    cuts: list[int] = []
    for c in range(1, n):
        i = c - 1
        right = values[c] - values[i]
        left = values[i - 1] - values[i] if i > 0 else math.inf
        strength[c] = right
        if min(left, right) > threshold and left > 0 and right > 0:
            cuts.append(c)
    return cuts, strength


def _check_lm(name: str, max_tokens: int, target_tokens: int | None) -> None:
    check_sizes(name, max_tokens, target_tokens=target_tokens)
    if target_tokens is not None and target_tokens < 1:
        raise InputError(f"{name} chunker: target_tokens must be at least 1 (or None for no merging), got {target_tokens}")


class _LMChunker(SpanChunker):
    model: str
    engine: str

    @property
    def lm(self) -> Any:
        """The model's engine (:mod:`rag.generation.engine`), loaded on first use, once per process."""
        from rag.generation.engine import load_engine

        return load_engine(self.model, self.engine, workload="prompt")


@declared_params
class PerplexityChunker(_LMChunker):
    """Meta-Chunking PPL: cut after sentences at local minima of the per-sentence log-perplexity.

    ``model``: a causal LM (pack name such as ``smollm2-135m`` or ``qwen2.5-0.5b``, local path or hub id).
    ``threshold``: minimum depth of a minimum, in nats of mean token negative log-likelihood (0 cuts at
    every strict minimum; higher values give longer chunks). ``max_tokens``: hard size limit, and the
    longest sentence unit; ``target_tokens``: dynamic merging up to this size (None: no merging). Sizes
    count tokens of ``tokenizer``. ``window_tokens``: LM tokens per forward pass; ``context_tokens``:
    preceding LM tokens kept in the KV cache between windows; ``engine``: what runs the LM
    (:data:`rag.generation.engine.ENGINE_NAMES`; ``dtype`` is its deprecated spelling of earlier rounds).
    """

    model: str = "smollm2-135m"
    threshold: float = 0.0
    max_tokens: int = 200
    target_tokens: int | None = None
    tokenizer: str = "minilm"
    window_tokens: int = 512
    context_tokens: int = 512
    engine: str = "transformers:float32"
    dtype: str | None = None  # deprecated spelling of ``engine``: mapped onto it, then None

    def __post_init__(self) -> None:
        _check_lm("perplexity", self.max_tokens, self.target_tokens)
        if self.threshold < 0:
            raise InputError(f"perplexity chunker: threshold must be at least 0, got {self.threshold}")
        if self.window_tokens < 1 or self.context_tokens < 0:
            raise InputError(
                f"perplexity chunker: window_tokens must be at least 1 and context_tokens at least 0, "
                f"got {self.window_tokens} and {self.context_tokens}"
            )
        self.engine = engine_param("perplexity chunker", self.engine, self.dtype)
        self.dtype = None

    def sentence_nll(self, text: str, units: Sequence[Span]) -> np.ndarray:
        """Mean token negative log-likelihood of each unit of ``text`` given the text before it (nats).

        Units with no scored token (the very first token has no context) get the value of a neighbour.
        """
        lm = self.lm
        encoding = lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = encoding["input_ids"]
        unit_starts = [a for a, _ in units]
        owner = np.empty(len(ids), dtype=np.int64)
        for t, (s, e) in enumerate(encoding["offset_mapping"]):
            while s < e - 1 and text[s].isspace():  # a token's leading space belongs to the previous unit
                s += 1
            owner[t] = max(bisect.bisect_right(unit_starts, s) - 1, 0)
        nll = lm.stream_nll(ids, self.window_tokens, self.context_tokens)
        sums = np.bincount(owner, weights=np.nan_to_num(nll), minlength=len(units))
        counts = np.bincount(owner, weights=~np.isnan(nll), minlength=len(units))
        values = np.full(len(units), np.nan)
        np.divide(sums, counts, out=values, where=counts > 0)
        return _fill_gaps(values)

    def _spans_many(self, texts: list[str], starts: list[Sequence[int]]) -> list[list[Span]]:
        # Documents run one after another: each is one sequence of windows sharing a KV cache, and on a
        # CPU a batch of windows costs as much as the windows one by one (measured: 4 x 512 tokens took
        # 4.5 s batched against 4 x 1.05 s alone), so batching across documents would only add padding.
        spans: list[list[Span]] = []
        for text, doc_starts in zip(texts, starts):
            units = sentence_units(text, doc_starts, self.max_tokens)
            if len(units) <= 1:
                spans.append(units)
                continue
            values = self.sentence_nll(text, units)
            cuts, strength = local_minima(values.tolist(), self.threshold)
            spans.append(segment(units, doc_starts, strength, cuts, self.max_tokens, target_tokens=self.target_tokens))
        return spans


def _fill_gaps(values: np.ndarray) -> np.ndarray:
    """NaNs replaced by the previous finite value (the next one at the start); all-NaN becomes zeros."""
    finite = np.flatnonzero(np.isfinite(values))
    if len(finite) == 0:
        return np.zeros_like(values)
    index = np.searchsorted(finite, np.arange(len(values)), side="right") - 1
    return values[finite[np.maximum(index, 0)]]


@declared_params
class MarginChunker(_LMChunker):
    """Meta-Chunking MSP: the LM decides at each gap, by the margin between its two answers' probabilities.

    For every gap the prompt holds the text before it (at most ``context_tokens`` LM tokens, whole
    sentences where possible) and the next sentence (at most ``sentence_tokens``); the margin is
    ``p("No") - p("Yes")`` renormalised over the two answers, in [-1, 1]. A gap is a boundary when its margin
    exceeds ``threshold``; ``None`` uses the document's mean margin (a small model's answers are biased
    towards one digit, so a fixed cut-off would split everything or nothing; the paper likewise adapts its
    threshold to the margins seen so far). ``target_tokens`` merges across the lowest margins first.
    ``engine`` runs the LM, as for :class:`PerplexityChunker`.
    """

    model: str = "smollm2-135m"
    threshold: float | None = None
    max_tokens: int = 200
    target_tokens: int | None = None
    tokenizer: str = "minilm"
    context_tokens: int = 64
    sentence_tokens: int = 64
    batch_size: int = 16
    engine: str = "transformers:float32"
    dtype: str | None = None  # deprecated spelling of ``engine``: mapped onto it, then None

    def __post_init__(self) -> None:
        _check_lm("margin", self.max_tokens, self.target_tokens)
        if self.threshold is not None and not -1 <= self.threshold <= 1:
            raise InputError(f"margin chunker: threshold must be in [-1, 1] or None, got {self.threshold}")
        if self.context_tokens < 1 or self.sentence_tokens < 1 or self.batch_size < 1:
            raise InputError(
                f"margin chunker: context_tokens, sentence_tokens and batch_size must be at least 1, "
                f"got {self.context_tokens}, {self.sentence_tokens}, {self.batch_size}"
            )
        self.engine = engine_param("margin chunker", self.engine, self.dtype)
        self.dtype = None

    def _answer_ids(self) -> tuple[int, int]:
        tokenizer = self.lm.tokenizer
        ids = [tokenizer.encode(answer, add_special_tokens=False) for answer in (SPLIT_ANSWER, KEEP_ANSWER)]
        if any(len(i) != 1 for i in ids):
            raise InputError(
                f"margin chunker: model {self.model!r} does not encode the answers {SPLIT_ANSWER!r} and "
                f"{KEEP_ANSWER!r} as single tokens"
            )
        return ids[0][0], ids[1][0]

    def margins(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """``p(split) - p(keep)`` for each ``(text before, next sentence)`` pair, in batches."""
        import torch

        lm = self.lm
        split_id, keep_id = self._answer_ids()
        prompts = [
            lm.encode_chat([
                {"role": "system", "content": MARGIN_SYSTEM},
                {"role": "user", "content": MARGIN_PROMPT.format(left=left, right=right)},
            ])
            for left, right in pairs
        ]
        margins = np.zeros(len(prompts))
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
        for begin in range(0, len(order), self.batch_size):
            batch = order[begin:begin + self.batch_size]
            logits = lm.next_token_logits([prompts[i] for i in batch])
            two = torch.softmax(logits[:, [split_id, keep_id]].float(), dim=-1)
            margins[batch] = (two[:, 0] - two[:, 1]).numpy()
        return margins

    def _pairs(self, text: str, units: Sequence[Span]) -> list[tuple[str, str]]:
        tokenizer = self.lm.tokenizer
        pieces = [text[a:b].strip() for a, b in units]
        lengths = [len(ids) for ids in tokenizer(pieces, add_special_tokens=False)["input_ids"]]
        pairs = []
        for c in range(1, len(units)):
            # Whole sentences before the gap while they fit the context budget; at least the last one.
            first, used = c - 1, lengths[c - 1]
            while first > 0 and used + lengths[first - 1] <= self.context_tokens:
                first -= 1
                used += lengths[first]
            left = " ".join(pieces[first:c])
            right = pieces[c]
            pairs.append(
                (_clip(tokenizer, left, self.context_tokens, keep="end"), _clip(tokenizer, right, self.sentence_tokens, keep="start"))
            )
        return pairs

    def _spans_many(self, texts: list[str], starts: list[Sequence[int]]) -> list[list[Span]]:
        units = [sentence_units(text, s, self.max_tokens) for text, s in zip(texts, starts)]
        pairs = [self._pairs(text, doc_units) for text, doc_units in zip(texts, units)]
        flat = [pair for doc_pairs in pairs for pair in doc_pairs]
        margins = self.margins(flat) if flat else np.zeros(0)
        spans: list[list[Span]] = []
        offset = 0
        for doc_units, doc_starts, doc_pairs in zip(units, starts, pairs):
            doc_margins = margins[offset:offset + len(doc_pairs)]
            offset += len(doc_pairs)
            if len(doc_units) <= 1:
                spans.append(list(doc_units))
                continue
            threshold = float(doc_margins.mean()) if self.threshold is None else self.threshold
            strength = [0.0, *doc_margins.tolist()]
            cuts = [c for c in range(1, len(doc_units)) if strength[c] > threshold]
            spans.append(segment(doc_units, doc_starts, strength, cuts, self.max_tokens, target_tokens=self.target_tokens))
        return spans


def _clip(tokenizer: Any, text: str, limit: int, keep: str) -> str:
    """``text`` cut to at most ``limit`` tokens, keeping its start or its end."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoding["offset_mapping"]
    if len(offsets) <= limit:
        return text
    if keep == "start":
        return text[:offsets[limit - 1][1]]
    return text[offsets[len(offsets) - limit][0]:]
