"""The transformers engine: any Hugging Face checkpoint (pack, path or hub id) in float32 or bfloat16.

On CPUs with AVX512-BF16 or AMX, torch's bfloat16 kernels read a prompt several times faster than float32
and make a 16-wide verification pass cost little more than a one-token pass (the case speculative
decoding needs); on CPUs without them bfloat16 can be slower. Which one wins is measured, not assumed
(:mod:`rag.generation.calibrate`).
"""

from __future__ import annotations

from typing import Any, Sequence

from rag.errors import InputError
from rag.generation.engine import Engine, Session, eos_ids
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


class TransformersSession(Session):
    """A transformers ``DynamicCache`` over one sequence."""

    def __init__(self, engine: TransformersEngine) -> None:
        from transformers import DynamicCache

        self.engine = engine
        self.cache = DynamicCache()
        self.tokens: list[int] = []
        self.passes = 0

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

    def copy(self) -> "TransformersSession":
        import copy

        twin = TransformersSession.__new__(TransformersSession)
        twin.engine, twin.cache, twin.tokens, twin.passes = self.engine, copy.deepcopy(self.cache), list(self.tokens), 0
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
