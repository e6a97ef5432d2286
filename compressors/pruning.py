"""Token pruning: drop the least informative words until the budget holds.

Two ways to say which words matter, one selection (whole words only, best first under the budget, then
source order, as in :func:`rag.compression.greedy`):

- :class:`SurprisalCompressor` (LLMLingua-1 / Selective-Context, question-aware like LongLLMLingua): a
  small causal LM (``smollm2-135m`` by default) reads ``Question: ...`` then the passages; a word's score
  is its self-information, the sum of its tokens' surprisal ``-log p(token | question, text before)``.
  Predictable words (function words, the rest of a name once its start is known) go first.
- :class:`ClassifierCompressor` (LLMLingua-2 layout): an ``AutoModelForTokenClassification`` at
  ``model`` gives each token a keep probability (label ``keep_label``); a word's score is the mean over its
  tokens. No offline weights exist for LLMLingua-2; bring a checkpoint by path or hub id.

Both read long texts in windows (``window_tokens`` per row) and run the rows in padded batches of
``batch_size`` rows. The surprisal LM reads all passages as one stream, each row starting with the question.

    >>> from compressors.pruning import SurprisalCompressor
    >>> SurprisalCompressor(rate=0.5).compress("Who won?", hits).text     # doctest: +SKIP
"""

from __future__ import annotations

import bisect
from typing import Any, Sequence

import numpy as np

from rag.compression import (
    DEFAULT_TOKENIZER,
    JOIN,
    BaseCompressor,
    Piece,
    TokenCounter,
    Unit,
    check_budget_params,
    greedy,
    keep_units,
    token_starts,
    units_in,
    words,
)
from rag.errors import InputError
from rag.generation.engine import engine_param
from rag.registry import declared_params


def _check_windows(name: str, window_tokens: int, batch_size: int) -> None:
    if window_tokens < 8 or batch_size < 1:
        raise InputError(
            f"{name} compressor: window_tokens must be at least 8 and batch_size at least 1, "
            f"got {window_tokens} and {batch_size}"
        )


class _Pruner(BaseCompressor):
    """Word-level pruning from per-token scores of a model with its own tokenizer."""

    def token_scores(self, query: str, texts: list[str]) -> tuple[list[list[tuple[int, int]]], list[np.ndarray]]:
        """Per text: the model tokens' character offsets and one score per token (NaN when unscored)."""
        raise NotImplementedError

    def word_score(self, values: np.ndarray) -> float:
        raise NotImplementedError

    def select(self, query: str, pieces: list[Piece], budget: int, counter: TokenCounter) -> list[Piece]:
        if not pieces:
            return []
        # The model reads what is still in play (after an extractive step, only the kept sentences).
        texts = [p.text() for p in pieces]
        if sum(counter.count(texts)) <= budget:  # everything fits: nothing to drop, no model to run
            return pieces
        found, tokens = units_in(pieces, words, counter)
        key = (query, tuple(texts))
        if self.__dict__.get("_last", (None,))[0] != key:  # the same hits at several budgets score once
            self._last = (key, self.token_scores(query, texts))
        offsets, scores = self._last[1]
        in_text = [(n, _to_text(pieces[n], a), _to_text(pieces[n], b - 1) + 1) for n, a, b in found]
        per_word = _word_scores(texts, offsets, scores, in_text, self.word_score)
        units = [Unit(p, a, b, s, t) for (p, a, b), s, t in zip(found, per_word, tokens)]
        return keep_units(pieces, units, greedy(units, budget))


def _to_text(piece: Piece, x: int) -> int:
    """Where chunk offset ``x`` (inside one of the piece's spans) lies in ``piece.text()``."""
    position = 0
    for a, b in piece.spans:
        if a <= x < b:
            return position + x - a
        position += b - a + len(JOIN)
    raise ValueError(f"offset {x} lies outside the spans of chunk {piece.chunk.id}")


def _word_scores(texts, offsets, scores, found, reduce) -> list[float]:
    """Each word's score from the scores of the model tokens that start inside it."""
    starts = [np.asarray(token_starts_with_index(t, o)) for t, o in zip(texts, offsets)]
    out = []
    for piece, a, b in found:
        order, positions = starts[piece]
        lo, hi = bisect.bisect_left(positions, a), bisect.bisect_left(positions, b)
        values = scores[piece][order[lo:hi]] if hi > lo else np.array([])
        values = values[np.isfinite(values)]
        out.append(reduce(values) if len(values) else 0.0)
    return out


def token_starts_with_index(text: str, offsets: Sequence[tuple[int, int]]) -> tuple[np.ndarray, list[int]]:
    """Token indices sorted by adjusted start, and those starts (tokens of zero width left out)."""
    pairs = []
    for index, (s, e) in enumerate(offsets):
        if e <= s:
            continue
        pairs.append((token_starts(text, [(s, e)])[0], index))
    pairs.sort()
    return np.array([i for _, i in pairs], dtype=np.int64), [s for s, _ in pairs]


@declared_params
class SurprisalCompressor(_Pruner):
    """Keep the words a small LM finds most surprising given the question (see the module docstring).

    The passages are read as one stream (in order, a blank line between them) cut into windows.
    ``model``: a causal LM (pack name, path or hub id); ``window_tokens``: stream tokens scored per row;
    ``context_tokens``: stream tokens before a window read again at its start (context, not scored);
    ``batch_size``: rows per forward pass; ``question_aware``: condition on the question;
    ``engine``: what runs the LM (:data:`rag.generation.engine.ENGINE_NAMES`; ``transformers:float32`` by
    default, so that the same config keeps the same words on every machine; ``dtype`` is its deprecated
    spelling of earlier rounds); ``quantize="int8"`` (transformers only): torch dynamic int8 Linear layers
    (faster on a CPU, approximate scores; opt-in).
    """

    rate: float | None = None
    target_tokens: int | None = None
    model: str = "smollm2-135m"
    question_aware: bool = True
    window_tokens: int = 512
    context_tokens: int = 32
    batch_size: int = 8
    engine: str = "transformers:float32"
    quantize: str | None = None
    tokenizer: str = DEFAULT_TOKENIZER
    dtype: str | None = None  # deprecated spelling of ``engine``: mapped onto it, then None

    def __post_init__(self) -> None:
        check_budget_params("surprisal", self.rate, self.target_tokens)
        _check_windows("surprisal", self.window_tokens, self.batch_size)
        if self.context_tokens < 0:
            raise InputError(f"surprisal compressor: context_tokens must be at least 0, got {self.context_tokens}")
        self.engine = engine_param("surprisal compressor", self.engine, self.dtype)
        if self.quantize is not None and self.engine == "llama.cpp":
            raise InputError(f"surprisal compressor: quantize={self.quantize!r} applies to the transformers engines "
                             f"only, not {self.engine!r}")
        self.dtype = None

    def word_score(self, values: np.ndarray) -> float:
        return float(values.sum())  # self-information adds up over a word's tokens

    @property
    def lm(self) -> Any:
        """The model's engine (:mod:`rag.generation.engine`), loaded on first use, once per process."""
        from rag.generation.engine import load_engine

        return load_engine(self.model, self.engine, quantize=self.quantize, workload="prompt")

    def token_scores(self, query: str, texts: list[str]) -> tuple[list[list[tuple[int, int]]], list[np.ndarray]]:
        lm = self.lm
        tok = lm.tokenizer
        encoded = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
        prefix: list[int] = []
        if tok.bos_token_id is not None:
            prefix.append(tok.bos_token_id)
        if self.question_aware and query.strip():
            prefix += tok(f"Question: {query.strip()}\nRelevant text:\n", add_special_tokens=False)["input_ids"]
        # The texts read as one stream, in order, a blank line between them: the question is read once per
        # window rather than once per passage, and each passage is read after the ones before it (as
        # LLMLingua and Selective-Context read a whole context). ``origin`` says which text and token each
        # stream position is (-1 for the separators, which are not scored).
        separator = tok("\n\n", add_special_tokens=False)["input_ids"]
        stream: list[int] = []
        origin_text: list[int] = []
        origin_token: list[int] = []
        for number, ids in enumerate(encoded["input_ids"]):
            if number and ids:
                stream += separator
                origin_text += [-1] * len(separator)
                origin_token += [-1] * len(separator)
            stream += ids
            origin_text += [number] * len(ids)
            origin_token += range(len(ids))
        scores = [np.full(len(ids), np.nan) for ids in encoded["input_ids"]]
        # Rows: prefix + up to ``context_tokens`` stream tokens before the window (read, not scored) + the
        # window. Stream token i of row (b, e, c) sits at position len(prefix) + i - c; with no prefix the
        # stream's very first token stays unscored (nothing predicts position 0).
        rows = [(begin, min(begin + self.window_tokens, len(stream)), max(begin - self.context_tokens, 0))
                for begin in range(0, len(stream), self.window_tokens)]
        for first in range(0, len(rows), self.batch_size):
            batch = rows[first:first + self.batch_size]
            values = lm.token_nll([prefix + stream[c:e] for b, e, c in batch],
                                  [len(prefix) + b - c for b, e, c in batch])
            for (b, e, c), row in zip(batch, values):
                for i in range(b, e):
                    value = row[len(prefix) + i - c]
                    if origin_text[i] >= 0 and np.isfinite(value):
                        scores[origin_text[i]][origin_token[i]] = value
        return [list(map(tuple, o)) for o in encoded["offset_mapping"]], scores


@declared_params
class ClassifierCompressor(_Pruner):
    """Keep the words a token classifier (LLMLingua-2 layout) most wants to keep.

    ``model``: a folder or hub id holding an ``AutoModelForTokenClassification`` and its tokenizer;
    ``keep_label``: the label index meaning "keep" (1 in LLMLingua-2); ``window_tokens``: tokens per row
    (at most the model's position limit, special tokens included).
    """

    model: str
    rate: float | None = None
    target_tokens: int | None = None
    keep_label: int = 1
    window_tokens: int = 510
    batch_size: int = 8
    tokenizer: str = DEFAULT_TOKENIZER

    def __post_init__(self) -> None:
        check_budget_params("classifier", self.rate, self.target_tokens)
        _check_windows("classifier", self.window_tokens, self.batch_size)
        if self.keep_label < 0:
            raise InputError(f"classifier compressor: keep_label must be at least 0, got {self.keep_label}")

    def word_score(self, values: np.ndarray) -> float:
        return float(values.mean())

    def _loaded(self) -> tuple[Any, Any]:
        key = self.model
        if key not in _CLASSIFIERS:
            from rag.encoders import resolve_model_path
            from rag.lazy import require

            transformers = require("transformers", "generate")
            path = resolve_model_path(self.model)
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            model = transformers.AutoModelForTokenClassification.from_pretrained(path)
            model.eval()
            if self.keep_label >= model.config.num_labels:
                raise InputError(
                    f"classifier compressor: keep_label {self.keep_label} but {self.model} has "
                    f"{model.config.num_labels} labels"
                )
            _CLASSIFIERS[key] = (tokenizer, model)
        return _CLASSIFIERS[key]

    def token_scores(self, query: str, texts: list[str]) -> tuple[list[list[tuple[int, int]]], list[np.ndarray]]:
        import torch

        tok, model = self._loaded()
        encoded = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 10**9)
        window = max(min(self.window_tokens, limit - 2), 1)
        rows = [(n, b, min(b + window, len(ids))) for n, ids in enumerate(encoded["input_ids"])
                for b in range(0, len(ids), window)]
        scores = [np.full(len(ids), np.nan) for ids in encoded["input_ids"]]
        head = [tok.cls_token_id] if tok.cls_token_id is not None else []
        tail = [tok.sep_token_id] if tok.sep_token_id is not None else []
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        with torch.inference_mode():
            for first in range(0, len(rows), self.batch_size):
                batch = rows[first:first + self.batch_size]
                sequences = [head + encoded["input_ids"][n][b:e] + tail for n, b, e in batch]
                width = max(len(s) for s in sequences)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for r, seq in enumerate(sequences):
                    input_ids[r, :len(seq)] = torch.tensor(seq)
                    mask[r, :len(seq)] = 1
                probs = torch.softmax(model(input_ids=input_ids, attention_mask=mask).logits.float(), dim=-1)
                keep = probs[..., self.keep_label].numpy()
                for r, (n, b, e) in enumerate(batch):
                    scores[n][b:e] = keep[r, len(head):len(head) + e - b]
        return [list(map(tuple, o)) for o in encoded["offset_mapping"]], scores


_CLASSIFIERS: dict[str, tuple[Any, Any]] = {}
