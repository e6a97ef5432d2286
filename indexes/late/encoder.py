"""The token encoder: one L2-normalised vector per token of a text, from a BERT-like model or a ColBERT.

**Which token vectors.** No trained ColBERT weights exist offline (see ``MODELS.md``). With the default
``model="minilm"`` the token vectors are **MiniLM token vectors, not a trained ColBERT**: the last hidden
states of the bundled all-MiniLM-L6-v2 (384-d), L2-normalised, with ``[CLS]``, ``[SEP]`` and padding
dropped; a document is ``title + " " + text`` (:func:`text_of`) and documents and queries alike are cut at
``max_length`` (256) word pieces, special tokens included. Any sentence-transformers or plain BERT folder
works the same way. A folder in the ColBERT layout is loaded and encoded as a real ColBERT
(:mod:`indexes.late.colbert`). ``dtype="bfloat16"`` (every late-interaction class) runs the encoder network
in bfloat16 (``"auto"``: the faster of the two here, :func:`rag.encoders.choose_dtype`); the vectors are
normalised and returned in float32 as before (``eval/results/encoders.md`` measures speed and quality).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from indexes.late.colbert import COLBERT_QUERY_LENGTH, ColBERT, colbert_key, is_colbert_checkpoint
from rag.encoders import warn_long_queries
from rag.errors import InputError
from rag.registry import declared_params
from rag.lazy import require
from rag.protocols import text_batch
from rag.shared import shared_model
from rag.types import Chunk

# Below this many texts a progress bar is noise.
PROGRESS_THRESHOLD = 200


@declared_params
class TokenEncoder:
    """Per-token vectors (L2-normalised float32 arrays, one per text) from a BERT-like model.

    ``model`` is a pack name (``"minilm"``), a local folder or a hub id. A ColBERT-layout folder is
    encoded as ColBERT (projection, markers, query augmentation); anything else gives the transformer's
    last hidden states with special tokens and padding dropped, which for ``"minilm"`` are **MiniLM token
    vectors, not a trained ColBERT**. Texts are cut at ``max_length`` word pieces (special tokens
    included). Models load on first use and are shared per process. ``dtype="bfloat16"`` runs the network
    in bfloat16 (faster on CPUs with AVX512-BF16 or AMX); vectors are normalised and returned in float32.

        >>> enc = TokenEncoder("minilm")
        >>> [v.shape for v in enc.encode_documents(["a short text"])]      # doctest: +SKIP
        [(3, 384)]
    """

    model: str = "minilm"
    max_length: int = 256
    batch_size: int = 32
    show_progress: bool | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        from rag.encoders import check_dtype

        check_dtype(self.model, self.dtype)
        if self.max_length < 3:
            raise InputError(f"token encoder {self.model!r}: max_length must be at least 3, got {self.max_length}")
        if self.batch_size < 1:
            raise InputError(f"token encoder {self.model!r}: batch_size must be at least 1, got {self.batch_size}")

    @property
    def backend(self) -> Any:
        """The loaded model: a ``ColBERT`` or a ``SentenceTransformer`` (loads it on first access)."""
        from rag.encoders import load_sentence_transformer, resolve_model_path

        path = resolve_model_path(self.model)
        dtype = self.resolved_dtype
        if is_colbert_checkpoint(path):
            def load() -> ColBERT:
                require("transformers", "dense")
                colbert = ColBERT(Path(path))
                if dtype != "float32":
                    import torch

                    colbert.bert.to(getattr(torch, dtype))
                    colbert.linear.to(getattr(torch, dtype))
                return colbert

            return shared_model(colbert_key(path, dtype), load)
        return load_sentence_transformer(self.model, dtype=dtype)

    @property
    def resolved_dtype(self) -> str:
        """``dtype``, or for ``"auto"`` the dtype measured to be faster here (:func:`rag.encoders.choose_dtype`)."""
        from rag.encoders import AUTO, choose_dtype, forget_sentence_transformer, resolve_model_path
        from rag.shared import forget

        if self.dtype != AUTO:
            return self.dtype
        path = resolve_model_path(self.model)

        def release(dtype: str) -> None:
            if is_colbert_checkpoint(path):
                forget(colbert_key(path, dtype))
            else:
                forget_sentence_transformer(self.model, None, dtype)

        return choose_dtype(
            "token", self.model,
            lambda dtype: TokenEncoder(self.model, self.max_length, self.batch_size, show_progress=False, dtype=dtype),
            release,
        )

    @property
    def is_colbert(self) -> bool:
        return isinstance(self.backend, ColBERT)

    @property
    def kind(self) -> str:
        """``"colbert"`` for a ColBERT checkpoint, ``"token-embeddings"`` for plain transformer hidden states."""
        return "colbert" if self.is_colbert else "token-embeddings"

    @property
    def dimension(self) -> int:
        backend = self.backend
        if isinstance(backend, ColBERT):
            return backend.dimension
        return int(backend[0].auto_model.config.hidden_size)

    def encode_documents(self, texts: str | Sequence[str]) -> list[np.ndarray]:
        """One ``(tokens, dimension)`` float32 array per text; an empty text gives zero rows."""
        return self._encode(texts, query=False)

    def encode_queries(self, texts: str | Sequence[str]) -> list[np.ndarray]:
        """One ``(tokens, dimension)`` float32 array per query."""
        return self._encode(texts, query=True)

    def _encode(self, texts: str | Sequence[str], query: bool) -> list[np.ndarray]:
        import torch

        texts = text_batch(texts, f"token encoder {self.model!r}", "text")
        out: list[np.ndarray] = [np.zeros((0, 0), np.float32)] * len(texts)
        if not texts:
            return out
        backend = self.backend
        colbert = isinstance(backend, ColBERT)
        tokenizer = backend.tokenizer
        if query:  # a ColBERT query has a fixed length, one position of which is its marker
            window = COLBERT_QUERY_LENGTH - 1 if colbert else self.max_length
            warn_long_queries(tokenizer, texts, window, f"token encoder {self.model!r}")
        # Longest first, so that each batch pads to similar lengths and the bar's estimate is pessimistic.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        from tqdm import tqdm

        progress = self.show_progress if self.show_progress is not None else (
            len(texts) > PROGRESS_THRESHOLD and sys.stderr.isatty()
        )
        with torch.inference_mode(), tqdm(
            total=len(texts), desc="token vectors", unit="text", disable=not progress, leave=False
        ) as bar:
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                vectors = (
                    backend.encode_batch([texts[i] for i in batch], query, self.max_length)
                    if colbert
                    else self._plain_batch(backend, tokenizer, [texts[i] for i in batch])
                )
                for i, v in zip(batch, vectors):
                    out[i] = v
                bar.update(len(batch))
        return out

    def _plain_batch(self, backend: Any, tokenizer: Any, texts: list[str]) -> list[np.ndarray]:
        import torch

        encoded = tokenizer(
            texts, max_length=self.max_length, truncation=True, padding=True,
            return_special_tokens_mask=True, return_tensors="pt",
        )
        special = encoded.pop("special_tokens_mask").bool()
        model = backend[0].auto_model
        hidden = model(**{k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
        hidden = torch.nn.functional.normalize(hidden.last_hidden_state.float(), dim=-1)
        keep = encoded["attention_mask"].bool() & ~special
        return [np.ascontiguousarray(hidden[row][keep[row]].numpy(), dtype=np.float32) for row in range(len(texts))]

    def __repr__(self) -> str:
        return (f"TokenEncoder(model={self.model!r}, max_length={self.max_length}, batch_size={self.batch_size}, "
                f"dtype={self.dtype!r})")


def text_of(chunk: Chunk) -> str:
    """The text encoded for ``chunk``: ``title + " " + text`` when it has a title."""
    return f"{chunk.title} {chunk.text}" if chunk.title else chunk.text


def query_vectors(encoder: TokenEncoder, name: str, queries: str | Sequence[str]) -> list[np.ndarray]:
    """``encoder``'s token vectors of ``queries`` (one str is one query) for index or reranker ``name``; a
    query without tokens is an error, since MaxSim has nothing to score it with."""
    queries = text_batch(queries, f"index {name!r}")
    vectors = encoder.encode_queries(queries)
    for number, (query, v) in enumerate(zip(queries, vectors)):
        if len(v) == 0:
            raise InputError(f"index {name!r}: query {number} ({query!r}) has no tokens to score with MaxSim")
    return vectors
