"""Shared tokenizer loading: one tokenizer object per model spec, resolved through the model packs."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from rag.lazy import require


@lru_cache(maxsize=8)
def load_tokenizer(model: str) -> Any:
    """A (fast) Hugging Face tokenizer for a pack name, a local path or a hub id; cached per spec."""
    transformers = require("transformers", "generate")
    from rag.models import resolve_model

    tokenizer = transformers.AutoTokenizer.from_pretrained(resolve_model(model))
    # Chunkers and compressors tokenise whole documents only to count and locate tokens, never to feed
    # a model, so the model's maximum length must not trigger truncation warnings.
    tokenizer.model_max_length = 10**9
    return tokenizer
