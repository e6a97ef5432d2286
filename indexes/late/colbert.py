"""ColBERT checkpoints: recognising a folder in the ColBERT layout, loading it, and encoding a batch with it.

A folder in the ColBERT layout (colbertv2.0: ``config.json``, BERT weights under ``bert.*`` and the
projection ``linear.weight`` in ``model.safetensors`` or ``pytorch_model.bin``, the tokenizer files) is
loaded as a real ColBERT: BERT, then the linear projection, then L2 normalisation, with ColBERT's
``[unused0]``/``[unused1]`` query/document markers after ``[CLS]``, queries padded with ``[MASK]`` to 32
tokens (query augmentation; the mask tokens are not attended to, as in colbertv2.0, but their output
vectors are kept) and documents keeping every non-padding token (ColBERT's punctuation skip list is not
applied). :class:`~indexes.late.encoder.TokenEncoder` uses this for any model folder where
:func:`is_colbert_checkpoint` holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import InputError

# ColBERT (colbertv2.0) conventions, used only for checkpoints in the ColBERT layout.
COLBERT_QUERY_MARKER = "[unused0]"
COLBERT_DOC_MARKER = "[unused1]"
COLBERT_QUERY_LENGTH = 32


def is_colbert_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a folder in the ColBERT layout: BERT weights plus a ``linear.weight`` projection."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    return "linear.weight" in _weight_names(folder)


def _weight_names(folder: Path) -> set[str]:
    safetensors_file = folder / "model.safetensors"
    if safetensors_file.is_file():
        from safetensors import safe_open

        with safe_open(str(safetensors_file), framework="pt") as handle:
            return set(handle.keys())
    bin_file = folder / "pytorch_model.bin"
    if bin_file.is_file():
        import torch

        return set(torch.load(bin_file, map_location="cpu", weights_only=True))
    return set()


class ColBERT:
    """A ColBERT checkpoint: a ``BertModel`` and the ``linear`` projection (no bias), loaded from a folder."""

    def __init__(self, folder: Path) -> None:
        import torch
        from transformers import AutoConfig, AutoTokenizer, BertModel

        config = AutoConfig.from_pretrained(folder)
        state = _load_state(folder)
        if "linear.weight" not in state:
            raise InputError(f"{folder}: no 'linear.weight' in the weights; not a ColBERT checkpoint")
        bert_state = {k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.")}
        if not bert_state:
            raise InputError(f"{folder}: no 'bert.*' weights; expected the colbertv2.0 layout (bert.* and linear.weight)")
        self.bert = BertModel(config, add_pooling_layer=False)
        missing, _ = self.bert.load_state_dict(bert_state, strict=False)
        missing = [m for m in missing if not m.startswith("pooler.") and "position_ids" not in m]
        if missing:
            raise InputError(f"{folder}: the checkpoint lacks BERT weights {missing[:5]}")
        weight = state["linear.weight"]
        self.linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.linear.weight.data.copy_(weight)
        if weight.shape[1] != config.hidden_size:
            raise InputError(
                f"{folder}: linear.weight takes {weight.shape[1]} inputs, but BERT's hidden size is {config.hidden_size}"
            )
        self.bert.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.dimension = int(weight.shape[0])

    def encode_batch(self, texts: list[str], query: bool, max_length: int) -> list[np.ndarray]:
        """One L2-normalised float32 ``(tokens, dimension)`` array per text, with ColBERT's markers; a query
        is padded with ``[MASK]`` to ``COLBERT_QUERY_LENGTH`` tokens, a document cut at ``max_length``."""
        import torch

        tokenizer = self.tokenizer
        marker = COLBERT_QUERY_MARKER if query else COLBERT_DOC_MARKER
        length = COLBERT_QUERY_LENGTH if query else max_length
        # The marker takes one position after [CLS]: tokenize with one position less, then insert it.
        encoded = tokenizer(
            texts, max_length=length - 1, truncation=True, return_tensors="pt",
            padding="max_length" if query else True,
        )
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        marker_id = tokenizer.convert_tokens_to_ids(marker)
        ids = torch.cat([ids[:, :1], torch.full_like(ids[:, :1], marker_id), ids[:, 1:]], dim=1)
        mask = torch.cat([mask[:, :1], torch.ones_like(mask[:, :1]), mask[:, 1:]], dim=1)
        if query:
            keep = torch.ones_like(mask, dtype=torch.bool)
            ids = torch.where(mask.bool(), ids, torch.full_like(ids, tokenizer.mask_token_id))
        else:
            keep = mask.bool()
        hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        vectors = torch.nn.functional.normalize(self.linear(hidden).float(), dim=-1)
        return [np.ascontiguousarray(vectors[row][keep[row]].numpy(), dtype=np.float32) for row in range(len(texts))]


def colbert_key(path: str, dtype: str) -> tuple[str, str, str]:
    """A ColBERT checkpoint's key in the shared model cache."""
    return ("colbert", str(Path(path).resolve()), dtype)


def _load_state(folder: Path) -> dict[str, Any]:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        import torch

        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise InputError(f"{folder}: no model.safetensors or pytorch_model.bin")
