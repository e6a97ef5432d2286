"""The SPLADE encoder: any Hugging Face masked-LM SPLADE checkpoint (the ``splade-tiny`` pack by default) turns
texts into sparse vocabulary weights, ``max_t log(1 + relu(logits[t, j]))`` over the non-padding tokens ``t``,
as ``scipy.sparse.csr_matrix`` rows; :func:`quantize` rounds them to the integers a Lucene impact index holds.
The index that stores and searches them is :mod:`indexes.splade`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from rag.encoders import PROGRESS_THRESHOLD, warn_long_queries
from rag.errors import InputError
from rag.lazy import require
from rag.protocols import text_batch
from rag.registry import declared_params
from rag.shared import shared_model

DEFAULT_SCALE = 100
EXTRA = "dense"  # torch + transformers come with the dense extra (sentence-transformers)

__all__ = ["SpladeEncoder", "quantize"]


def _load_model(model: str, dtype: str = "float32") -> tuple[Any, Any, list[str]]:
    """Tokenizer, masked-LM model (eval mode, in ``dtype``) and vocabulary for ``model``, loaded once per process."""
    path, key = _model_key(model, dtype)

    def load() -> tuple[Any, Any, list[str]]:
        require("torch", EXTRA)
        transformers = require("transformers", EXTRA)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        tokenizer.padding_side = "right"  # the encoder masks padding by position (our own copy: safe to set)
        network = transformers.AutoModelForMaskedLM.from_pretrained(path).eval()
        if dtype != "float32":
            network = network.to(getattr(require("torch", EXTRA), dtype))
        width = int(network.get_output_embeddings().weight.shape[0])
        vocabulary = [str(t) for t in tokenizer.convert_ids_to_tokens(list(range(width)))]
        _check_vocabulary(model, vocabulary)
        return tokenizer, network, vocabulary

    return shared_model(key, load)


def _model_key(model: str, dtype: str) -> tuple[str, tuple[str, str, str]]:
    """The resolved path of ``model`` and its key in the shared model cache (by real path, so that two
    spellings of one folder share one model)."""
    from rag.models import resolve_model

    path = resolve_model(model)
    return path, ("splade", str(Path(path).resolve()) if Path(path).exists() else path, dtype)


def _check_vocabulary(model: str, vocabulary: list[str]) -> None:
    # Terms go to Lucene as whitespace-separated, case-sensitive tokens: each must be one distinct token.
    for token_id, token in enumerate(vocabulary):
        if not token or token != "".join(token.split()):
            raise InputError(
                f"SPLADE model {model!r}: vocabulary entry {token_id} ({token!r}) is empty or holds whitespace"
            )
    if len(set(vocabulary)) != len(vocabulary):
        raise InputError(f"SPLADE model {model!r}: its vocabulary holds the same token string twice")


@declared_params
class SpladeEncoder:
    """SPLADE term weights from a masked-LM checkpoint, as ``scipy.sparse.csr_matrix`` (float32) rows.

    ``model`` is a pack name (``"splade-tiny"``), a local folder or a hub id. Texts are truncated to
    ``max_length`` tokens and encoded in batches of at most ``batch_size`` texts and ``max_batch_tokens``
    padded tokens (texts are sorted by length first, so little is padded; the MLM logits of a batch take
    ``max_batch_tokens * vocab_size * 4`` bytes). ``show_progress=None`` shows a bar only for long jobs on a
    terminal. ``dtype="bfloat16"`` runs the network in bfloat16 (faster on CPUs with AVX512-BF16 or AMX;
    ``"auto"`` measures which is faster here); the weights come out in float32. Constructing is cheap: the model loads on first use and is shared
    within the process.

        >>> enc = SpladeEncoder()                                  # doctest: +SKIP
        >>> enc.encode_queries(["aspirin and blood clots"]).shape  # doctest: +SKIP
        (1, 30522)
    """

    model: str = "splade-tiny"
    batch_size: int = 32
    max_length: int = 512
    max_batch_tokens: int = 4096
    show_progress: bool | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        from rag.encoders import check_dtype

        check_dtype(self.model, self.dtype)
        if self.batch_size < 1 or self.max_length < 2 or self.max_batch_tokens < self.max_length:
            raise InputError(
                f"SPLADE encoder {self.model!r}: need batch_size >= 1, max_length >= 2 and max_batch_tokens >= max_length, "
                f"got {self.batch_size}, {self.max_length}, {self.max_batch_tokens}"
            )

    @property
    def vocabulary(self) -> list[str]:
        """The token string of each column (loads the model)."""
        return _load_model(self.model, self.resolved_dtype)[2]

    @property
    def resolved_dtype(self) -> str:
        """``dtype``, or for ``"auto"`` the dtype measured to be faster here (:func:`rag.encoders.choose_dtype`)."""
        from rag.encoders import AUTO, choose_dtype
        from rag.shared import forget

        if self.dtype != AUTO:
            return self.dtype
        return choose_dtype(
            "splade", self.model,
            lambda dtype: SpladeEncoder(self.model, self.batch_size, self.max_length, self.max_batch_tokens,
                                        show_progress=False, dtype=dtype),
            lambda dtype: forget(_model_key(self.model, dtype)[1]),
        )

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def encode_documents(self, texts: str | Sequence[str]) -> Any:
        """Term weights of corpus texts: a ``(len(texts), vocab_size)`` float32 CSR matrix, rows in input order."""
        return self._encode(texts, "documents")

    def encode_queries(self, texts: str | Sequence[str]) -> Any:
        """Term weights of queries, as :meth:`encode_documents` (SPLADE encodes both sides alike)."""
        return self._encode(texts, "queries")

    def top_terms(self, row: Any, top: int = 20) -> list[tuple[str, float]]:
        """The ``top`` heaviest ``(term, weight)`` pairs of one encoded row, heaviest first (ties by term)."""
        if top < 1:
            raise InputError(f"SPLADE encoder {self.model!r}: top must be at least 1, got {top}")
        row = row.tocsr()
        vocabulary = self.vocabulary
        pairs = [(vocabulary[j], float(w)) for j, w in zip(row.indices.tolist(), row.data.tolist()) if w > 0]
        return sorted(pairs, key=lambda pair: (-pair[1], pair[0]))[:top]

    def _encode(self, texts: str | Sequence[str], what: str) -> Any:
        sparse = require("scipy.sparse", EXTRA, "scipy")
        texts = text_batch(texts, f"SPLADE encoder {self.model!r}", f"{what} item")
        tokenizer, network, vocabulary = _load_model(self.model, self.resolved_dtype)
        if not texts:
            return sparse.csr_matrix((0, len(vocabulary)), dtype=np.float32)
        torch = require("torch", EXTRA)
        if what == "queries":
            warn_long_queries(tokenizer, texts, self.max_length, f"SPLADE encoder {self.model!r}")
        tokenized = tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(tokenized[i]))
        parts: list[Any] = []
        done: list[int] = []
        tqdm = require("tqdm", EXTRA).tqdm
        with tqdm(total=len(texts), desc=f"SPLADE {what}", unit="text", disable=not self._progress(len(texts))) as bar:
            with torch.inference_mode():
                for batch in self._batches(order, [len(t) for t in tokenized]):
                    padded = tokenizer.pad({"input_ids": [tokenized[i] for i in batch]}, return_tensors="pt")
                    mask = padded["attention_mask"]
                    logits = network(input_ids=padded["input_ids"], attention_mask=mask).logits
                    # log(1 + relu(x)) is monotonic: take the masked max of the logits, then transform (B, V).
                    # Padding is right-hand; only those positions are touched (one pass over the logits saved).
                    for row, length in enumerate(mask.sum(dim=1).tolist()):
                        logits[row, length:] = float("-inf")
                    weights = torch.log1p(torch.relu(logits.amax(dim=1).float())).numpy()
                    parts.append(sparse.csr_matrix(weights, dtype=np.float32))
                    done.extend(batch)
                    bar.update(len(batch))
        # Rows come in length order; put them back in input order.
        return sparse.vstack(parts, format="csr", dtype=np.float32)[np.argsort(np.asarray(done))]

    def _batches(self, order: list[int], lengths: list[int]) -> Iterable[list[int]]:
        # ``order`` is sorted by length, so a batch's padded size is its last text's length times its size.
        batch: list[int] = []
        for i in order:
            if batch and (len(batch) >= self.batch_size or (len(batch) + 1) * lengths[i] > self.max_batch_tokens):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    def _progress(self, n: int) -> bool:
        if self.show_progress is not None:
            return self.show_progress
        return n > PROGRESS_THRESHOLD and sys.stderr.isatty()

    def __repr__(self) -> str:
        return (f"SpladeEncoder(model={self.model!r}, batch_size={self.batch_size}, max_length={self.max_length}, "
                f"dtype={self.dtype!r})")


def quantize(vectors: Any, scale: int = DEFAULT_SCALE) -> Any:
    """``round(weight * scale)`` as an int32 CSR matrix, entries that round to 0 removed."""
    quantized = vectors.tocsr().astype(np.float64)
    quantized.data = np.rint(quantized.data * scale)
    quantized.eliminate_zeros()
    return quantized.astype(np.int32)


# -- the index ---------------------------------------------------------------------------------------
