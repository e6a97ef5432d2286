"""The transformers engine: any Hugging Face checkpoint (pack, path or hub id) in float32 or bfloat16.

On CPUs with AVX512-BF16 or AMX, torch's bfloat16 kernels read a prompt several times faster than float32
and make a 16-wide verification pass cost little more than a one-token pass (the case speculative
decoding needs); on CPUs without them bfloat16 can be slower. Which one wins is measured, not assumed
(:mod:`rag.generation.calibrate`).
"""

from __future__ import annotations

from typing import Any, Sequence

from rag.errors import InputError
from rag.generation.engine import (
    SINK_TOKENS, Engine, Session, check_path, check_stream, eos_ids, score_window, surprisal, tree_depths,
)
from rag.lazy import require
from rag.shared import shared_model

DTYPES = ("float32", "bfloat16")


class TransformersEngine(Engine):
    """A causal LM loaded through transformers. Use :func:`load_causal_lm`, which shares one per model.

    ``model`` is the loaded ``AutoModelForCausalLM`` (in eval mode), public for the components that run
    their own forward passes over its layers (the surprisal pruner reads hidden states).
    """

    def __init__(self, spec: str, model: Any, tokenizer: Any, dtype: str = "float32", quantize: str | None = None,
                 eos_token_ids: frozenset[int] | None = None) -> None:
        self.spec, self.model, self.tokenizer, self.dtype, self.quantize = spec, model, tokenizer, dtype, quantize
        self.name = f"transformers:{dtype}"
        if eos_token_ids is None:
            eos_token_ids = eos_ids(tokenizer, getattr(getattr(model, "generation_config", None), "eos_token_id", None))
        self.eos_token_ids = eos_token_ids

    def new_session(self) -> "TransformersSession":
        return TransformersSession(self)

    def next_token_logits(self, sequences: Sequence[Sequence[int]]) -> Any:
        import torch

        if not sequences or any(len(s) == 0 for s in sequences):
            raise InputError("next_token_logits: every sequence needs at least one token")
        width = max(len(ids) for ids in sequences)
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else next(iter(self.eos_token_ids), 0)
        input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, ids in enumerate(sequences):  # left padding: every sequence ends at the last position
            input_ids[row, width - len(ids):] = torch.tensor(list(ids))
            mask[row, width - len(ids):] = 1
        # A plain forward pass does not derive positions from the mask: left padding needs them given.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False,
                             logits_to_keep=1)
        return out.logits[:, -1].float()


    def token_nll(self, sequences: Sequence[Sequence[int]], first: Sequence[int]) -> list[Any]:
        import numpy as np
        import torch

        if len(first) != len(sequences):
            raise InputError(f"token_nll: {len(sequences)} sequences but {len(first)} first positions")
        out = [np.full(len(ids), np.nan) for ids in sequences]
        # (row, position) of every scored token; its logits come from the hidden state one position earlier.
        where = [(r, p) for r, ids in enumerate(sequences) for p in range(max(first[r], 1), len(ids))]
        if not where:
            return out
        width = max(len(ids) for ids in sequences)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for r, ids in enumerate(sequences):  # right padding: positions count from 0 in every row
            input_ids[r, :len(ids)] = torch.tensor(list(ids))
            mask[r, :len(ids)] = 1
        with torch.inference_mode():
            # The body's hidden states, then the output layer only where a token is scored: cheaper than the
            # model's full forward, whose logits cover every position.
            hidden = self.model.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            rows = torch.tensor([r for r, _ in where])
            positions = torch.tensor([p for _, p in where])
            targets = input_ids[rows, positions]
            values = _head_surprisal(self.model, hidden[rows, positions - 1], targets).tolist()
        for (r, p), value in zip(where, values):
            out[r][p] = value
        return out

    def stream_nll(self, ids: Sequence[int], window_tokens: int, context_tokens: int,
                   sink_tokens: int = SINK_TOKENS) -> Any:
        import numpy as np
        import torch
        from transformers import DynamicCache

        check_stream(window_tokens, context_tokens, sink_tokens)
        ids = list(ids)
        nll = np.full(len(ids), np.nan)
        if not ids:
            return nll
        max_positions = int(getattr(self.model.config, "max_position_embeddings", 0) or 10**9)
        window_tokens = min(window_tokens, max(max_positions // 2, 1))
        context_tokens = min(context_tokens, max(max_positions // 2 - sink_tokens, 0))
        cache, position, last_logits = DynamicCache(), 0, None
        with torch.inference_mode():
            for begin in range(0, len(ids), window_tokens):
                window = ids[begin:begin + window_tokens]
                if position + len(window) > max_positions:
                    cache, position = DynamicCache(), 0
                    if context_tokens:
                        context = ids[max(begin - context_tokens, 0):begin]
                        self.model(input_ids=torch.tensor([context]), past_key_values=cache, use_cache=True)
                        position = len(context)
                positions = torch.arange(position, position + len(window)).unsqueeze(0)
                logits = self.model(input_ids=torch.tensor([window]), past_key_values=cache, position_ids=positions,
                                    use_cache=True).logits[0].float()
                position += len(window)
                last_logits = score_window(nll, begin, window, logits, last_logits)
                _trim_cache(cache, sink_tokens, context_tokens)
        return nll


def _trim_cache(cache: Any, head: int, tail: int) -> None:
    """Keep the first ``head`` and last ``tail`` positions of every layer of a ``DynamicCache``."""
    import torch

    for layer in getattr(cache, "layers", []):
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if keys is None or keys.shape[-2] <= head + tail:
            continue
        keep = lambda t: torch.cat([t[..., :head, :], t[..., t.shape[-2] - tail:, :]], dim=-2)  # noqa: E731
        layer.keys, layer.values = keep(keys), keep(values)


# Output-layer rows per step: bounds the [rows, vocabulary] logits held at once (49,152 floats a row for
# SmolLM2, 151,936 for Qwen2.5).
_HEAD_ROWS = 256


def _head_surprisal(model: Any, hidden: Any, targets: Any) -> Any:
    """``-log p(target)`` from final hidden states through the output layer, ``_HEAD_ROWS`` rows at a time.
    Models that soft-cap their logits (Gemma 2) are capped as their own forward does."""
    import torch

    head, cap = model.get_output_embeddings(), getattr(model.config, "final_logit_softcapping", None)
    out = []
    for start in range(0, len(hidden), _HEAD_ROWS):
        logits = head(hidden[start:start + _HEAD_ROWS]).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        out.append(surprisal(logits, targets[start:start + _HEAD_ROWS]))
    return torch.cat(out)


class TransformersSession(Session):
    """A transformers ``DynamicCache`` over one sequence."""

    def __init__(self, engine: TransformersEngine) -> None:
        from transformers import DynamicCache

        self.engine = engine
        self.cache = DynamicCache()
        self.tokens: list[int] = []
        self.passes = 0
        self._tree: tuple[int, list[int]] | None = None  # (base, parents) of the tree fed last

    def feed_all(self, token_ids: Sequence[int], last_only: bool = False) -> Any:
        import torch

        if not token_ids:
            raise InputError("Session.feed: no tokens to feed")
        with torch.inference_mode():
            out = self.engine.model(input_ids=torch.tensor([list(token_ids)]), past_key_values=self.cache,
                                    use_cache=True, logits_to_keep=1 if last_only else 0)
        self.cache = out.past_key_values
        self.tokens.extend(int(t) for t in token_ids)
        self.passes += 1
        return out.logits[0]

    def crop(self, length: int) -> None:
        self._check_crop(length)
        if length < self.length:
            self.cache.crop(length - self.length)  # transformers 5 takes minus the number of tokens to drop
            del self.tokens[length:]
        self._tree = None

    @property
    def supports_tree(self) -> bool:  # type: ignore[override]
        # A custom 4D mask and explicit positions reach every attention implementation of a decoder, but
        # the mask replaces the model's own: models with sliding-window attention would lose their window.
        # The cache must be plain per-layer tensors for keep_path to gather from.
        config = self.engine.model.config
        sliding = "sliding_attention" in (getattr(config, "layer_types", None) or []) or bool(
            getattr(config, "use_sliding_window", True) and getattr(config, "sliding_window", None))
        layers = getattr(self.cache, "layers", [])
        return not sliding and all(type(layer).__name__ == "DynamicLayer" for layer in layers)

    def feed_tree(self, token_ids: Sequence[int], parents: Sequence[int]) -> Any:
        import torch

        if not token_ids or len(parents) != len(token_ids):
            raise InputError(f"feed_tree: {len(token_ids)} tokens with {len(parents)} parents")
        depths = tree_depths(parents)
        base, n = self.length, len(token_ids)
        allowed = torch.zeros(n, base + n, dtype=torch.bool)
        allowed[:, :base] = True
        for i, parent in enumerate(parents):
            allowed[i, base + i] = True
            if parent >= 0:
                allowed[i, base:base + i] |= allowed[parent, base:base + i]
        dtype = self.engine.model.dtype
        mask = torch.zeros(1, 1, n, base + n, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
        positions = torch.tensor([[base + d for d in depths]])
        with torch.inference_mode():
            out = self.engine.model(input_ids=torch.tensor([list(token_ids)]), past_key_values=self.cache,
                                    attention_mask=mask, position_ids=positions, use_cache=True)
        self.cache = out.past_key_values
        self.tokens.extend(int(t) for t in token_ids)
        self.passes += 1
        self._tree = (base, list(parents))
        return out.logits[0]

    def keep_path(self, nodes: Sequence[int]) -> None:
        import torch

        if self._tree is None:
            raise InputError("keep_path: no tree was fed since the last crop")
        base, parents = self._tree
        check_path(nodes, parents)
        keep = torch.tensor(list(range(base)) + [base + node for node in nodes])
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(-2, keep)
            layer.values = layer.values.index_select(-2, keep)
        self.tokens = self.tokens[:base] + [self.tokens[base + node] for node in nodes]
        self._tree = None

    def copy(self) -> "TransformersSession":
        import copy

        twin = TransformersSession.__new__(TransformersSession)
        twin.engine, twin.cache, twin.tokens, twin.passes = self.engine, copy.deepcopy(self.cache), list(self.tokens), 0
        twin._tree = None
        return twin


def load_causal_lm(model: str, dtype: str = "float32", quantize: str | None = None) -> TransformersEngine:
    """Load (once per process) a causal LM through transformers by pack name, local path or hub id.

    ``dtype`` is ``float32`` or ``bfloat16``. ``quantize="int8"`` applies torch dynamic int8 quantisation
    to the Linear layers: several times faster decoding on CPU but lossy (answers change), so it is only
    ever applied when asked for.
    """
    if quantize not in (None, "int8"):
        raise InputError(f"load_causal_lm({model!r}): quantize must be None or 'int8', got {quantize!r}")
    if dtype not in DTYPES:
        raise InputError(f"load_causal_lm({model!r}): dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")

    def load() -> TransformersEngine:
        torch = require("torch", "generate")
        transformers = require("transformers", "generate")
        from rag.models import resolve_model

        path = resolve_model(model)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        lm = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        lm.eval()
        if quantize == "int8":
            lm = torch.ao.quantization.quantize_dynamic(lm, {torch.nn.Linear}, dtype=torch.qint8)
        return TransformersEngine(model, lm, tokenizer, dtype, quantize)

    return shared_model(("causal-lm", model, dtype, quantize), load)
