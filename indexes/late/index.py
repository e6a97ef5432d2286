"""Late interaction: one vector per token, documents scored by MaxSim (ColBERT), searched PLAID-style.

    >>> from indexes.late import LateInteractionIndex, LateRerankIndex, MaxSimReranker
    >>> from rag.types import Chunk
    >>> index = LateInteractionIndex()                                 # cheap; the model loads on first use
    >>> index.add([Chunk("c1", "d1", "Aspirin thins the blood.", 0, 24)])   # doctest: +SKIP
    >>> index.search(["what thins blood?"], k=1)[0][0].chunk.id                # doctest: +SKIP
    'c1'
    >>> index.compression_ratio()                                              # doctest: +SKIP
    1.98

**Which token vectors.** No trained ColBERT weights exist offline (see ``MODELS.md``). With the default
``model="minilm"`` the token vectors are **MiniLM token vectors, not a trained ColBERT**: the last hidden
states of the bundled all-MiniLM-L6-v2 (384-d), L2-normalised, with ``[CLS]``, ``[SEP]`` and padding
dropped; a document is ``title + " " + text`` and documents and queries alike are cut at ``max_length``
(256) word pieces, special tokens included. Any sentence-transformers or plain BERT folder works the same
way. A folder in the ColBERT layout (colbertv2.0: ``config.json``, BERT weights under ``bert.*`` and the
projection ``linear.weight`` in ``model.safetensors`` or ``pytorch_model.bin``, the tokenizer files) is
loaded as a real ColBERT: BERT, then the linear projection, then L2 normalisation, with ColBERT's
``[unused0]``/``[unused1]`` query/document markers after ``[CLS]``, queries padded with ``[MASK]`` to 32
tokens (query augmentation; the mask tokens are not attended to, as in colbertv2.0, but their output
vectors are kept) and documents keeping every non-padding token (ColBERT's punctuation skip list is not
applied). ``dtype="bfloat16"`` (every class here) runs the encoder network in bfloat16 (``"auto"``: the
faster of the two here, :func:`rag.encoders.choose_dtype`); the vectors are normalised and stored as
before (``eval/results/encoders.md`` measures speed and quality).

**MaxSim.** ``score(q, d) = sum_i max_j <q_i, d_j>`` over the query's and the document's token vectors.

**Search** (:class:`LateInteractionIndex`), in two stages as PLAID does it:

1. candidate generation: the token vectors are clustered with faiss k-means into ``nlist`` centroids; each
   token keeps its centroid id and each centroid an inverted list of the documents that have a token there.
   Each query token probes its ``nprobe`` most similar centroids (one small query x centroids product); a
   document found in a probed list gets, for that query token, the best score among its probed centroids,
   and otherwise the best unprobed centroid's score (an upper bound of what it can have elsewhere). The sum
   over query tokens approximates MaxSim ("centroid interaction"); the best ``candidates`` documents go on;
2. MaxSim of the query against each candidate's stored token vectors, skipping the tokens whose centroid no
   query token probed (PLAID-style pruning: such tokens are rarely any query token's best match; with
   ``nprobe >= nlist`` nothing is skipped and the scores are exact). The rows are converted to float32 and
   multiplied a cache-sized block at a time, which makes this stage cost about what a float32 product does.

``exhaustive=True`` skips stage 1 and scores every document exactly (brute-force MaxSim, the reference).
The defaults (``nlist`` the power of two nearest ``4 * sqrt(tokens)``, 4,096 for SciFact; ``nprobe=128``,
``candidates=512``) are chosen on SciFact's 809 train queries (``python -m eval.bench_late --split train
--grid``, which prints the choice): they keep about 0.966 of brute force's top 100 at about a fifteenth of
its CPU time there, and 0.965 at 14.9x on the 300 test queries (``eval/results/late.md``); raise
``candidates`` (or ``nprobe``) when recall matters more than speed. An index saved with fewer centroids (1,024, the earlier default for SciFact) still
loads and searches; its measured setting was ``nprobe=32``, ``candidates=1024`` (recall 0.95 at about 9x).

**Storage.** Token vectors are kept compressed: ``storage="int8"`` (the default: one signed byte per
dimension plus a float32 scale per token, about a quarter of float32) or ``"float16"`` (half). Both leave
MaxSim within about 1e-2 of float32; int8 is also the faster one to score here, because converting
gathered int8 rows to float32 costs numpy about a fifth of what float16 rows cost. :meth:`LateInteractionIndex.compression_ratio` compares float32 token vectors with everything
the index stores (vectors, centroid ids, offsets, centroids); the manifest records it too.

:class:`LateRerankIndex` is BM25 (Lucene, flat) top ``depth`` reranked by exact MaxSim on stored vectors;
:class:`MaxSimReranker` reranks any hits by MaxSim, encoding their texts on the fly.

On disk (format version 1) a saved :class:`LateInteractionIndex` is a directory holding ``manifest.json``
(see :mod:`indexes.manifest`; adds ``model``, ``encoder``, ``dimension``, ``storage``, ``tokens``,
``nlist``, ``trained_tokens``, ``token_bytes_float32``, ``stored_bytes`` and ``compression_ratio``),
``chunks.jsonl`` (one ``Chunk.to_dict()`` per line, in storage order), ``offsets.npy`` (int64, documents
+ 1: document ``i`` owns token rows ``offsets[i]:offsets[i+1]``), ``tokens.npy`` (float16 or int8,
tokens x dimension), ``scales.npy`` (int8 storage only), ``centroids.npy`` (float32) and ``codes.npy``
(int32 centroid id per token). A :class:`LateRerankIndex` saves the same token files (no centroids) and its
BM25 index under ``bm25/``. All arrays are plain ``.npy`` files (no pickle).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from indexes.bm25 import BM25Index
from indexes.manifest import MANIFEST, SavedIndex, check_new_ids, read_chunks, write_chunks
from rag.encoders import warn_long_queries
from rag.errors import InputError
from rag.lazy import require
from rag.protocols import text_batch
from rag.registry import Component
from rag.shared import shared_model
from rag.types import Chunk, Hit

FORMAT_VERSION = 1
KIND = "late"
RERANK_KIND = "late-rerank"
STORAGES = ("float16", "int8")
CHUNKS = "chunks.jsonl"
OFFSETS = "offsets.npy"
TOKENS = "tokens.npy"
SCALES = "scales.npy"
CENTROIDS = "centroids.npy"
CODES = "codes.npy"
BM25_DIR = "bm25"
# Below this many texts a progress bar is noise.
PROGRESS_THRESHOLD = 200
# Chosen on SciFact's train queries (eval/bench_late.py --split train --grid; eval/results/late.md; 4,096
# centroids): recall@100 against brute force about 0.966, about 15x faster than brute-force MaxSim.
DEFAULT_NPROBE = 128
DEFAULT_CANDIDATES = 512
# Centroids per sqrt(tokens) (see default_nlist): finer centroids make centroid interaction and the pruning of
# stage 2 sharper, so fewer candidates and fewer of their tokens reach exact scoring for the same recall.
CENTROIDS_PER_SQRT_TOKEN = 4
# Retrain the centroids when the index holds this many times the tokens they were trained on.
RETRAIN_GROWTH = 4
KMEANS_ITERATIONS = 10
KMEANS_POINTS_PER_CENTROID = 32
# Token rows converted to float32 at a time by brute-force MaxSim and centroid assignment.
BLOCK_TOKENS = 32768
# Token rows converted to float32 at a time by exact scoring of candidates (fits in cache).
SCORE_BLOCK = 1024

# ColBERT (colbertv2.0) conventions, used only for checkpoints in the ColBERT layout.
COLBERT_QUERY_MARKER = "[unused0]"
COLBERT_DOC_MARKER = "[unused1]"
COLBERT_QUERY_LENGTH = 32



# -- token encoders ----------------------------------------------------------------------------------


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


class _ColBERT:
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


def _colbert_key(path: str, dtype: str) -> tuple[str, str, str]:
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

    def __init__(
        self,
        model: str = "minilm",
        max_length: int = 256,
        batch_size: int = 32,
        show_progress: bool | None = None,
        dtype: str = "float32",
    ) -> None:
        from rag.encoders import check_dtype

        check_dtype(model, dtype)
        if max_length < 3:
            raise InputError(f"token encoder {model!r}: max_length must be at least 3, got {max_length}")
        if batch_size < 1:
            raise InputError(f"token encoder {model!r}: batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.dtype = dtype

    @property
    def backend(self) -> Any:
        """The loaded model: a ``_ColBERT`` or a ``SentenceTransformer`` (loads it on first access)."""
        from rag.encoders import load_sentence_transformer, resolve_model_path

        path = resolve_model_path(self.model)
        dtype = self.resolved_dtype
        if is_colbert_checkpoint(path):
            def load() -> _ColBERT:
                require("transformers", "dense")
                colbert = _ColBERT(Path(path))
                if dtype != "float32":
                    import torch

                    colbert.bert.to(getattr(torch, dtype))
                    colbert.linear.to(getattr(torch, dtype))
                return colbert

            return shared_model(_colbert_key(path, dtype), load)
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
                forget(_colbert_key(path, dtype))
            else:
                forget_sentence_transformer(self.model, None, dtype)

        return choose_dtype(
            "token", self.model,
            lambda dtype: TokenEncoder(self.model, self.max_length, self.batch_size, show_progress=False, dtype=dtype),
            release,
        )

    @property
    def is_colbert(self) -> bool:
        return isinstance(self.backend, _ColBERT)

    @property
    def kind(self) -> str:
        """``"colbert"`` for a ColBERT checkpoint, ``"token-embeddings"`` for plain transformer hidden states."""
        return "colbert" if self.is_colbert else "token-embeddings"

    @property
    def dimension(self) -> int:
        backend = self.backend
        if isinstance(backend, _ColBERT):
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
        colbert = isinstance(backend, _ColBERT)
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
                    self._colbert_batch(backend, [texts[i] for i in batch], query)
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

    def _colbert_batch(self, backend: _ColBERT, texts: list[str], query: bool) -> list[np.ndarray]:
        import torch

        tokenizer = backend.tokenizer
        marker = COLBERT_QUERY_MARKER if query else COLBERT_DOC_MARKER
        length = COLBERT_QUERY_LENGTH if query else self.max_length
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
        hidden = backend.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        vectors = torch.nn.functional.normalize(backend.linear(hidden).float(), dim=-1)
        return [np.ascontiguousarray(vectors[row][keep[row]].numpy(), dtype=np.float32) for row in range(len(texts))]

    def __repr__(self) -> str:
        return (f"TokenEncoder(model={self.model!r}, max_length={self.max_length}, batch_size={self.batch_size}, "
                f"dtype={self.dtype!r})")


# -- MaxSim --------------------------------------------------------------------------------------------


def maxsim(query: np.ndarray, documents: Sequence[np.ndarray]) -> np.ndarray:
    """MaxSim of one query's token vectors against each document's: ``sum_i max_j <q_i, d_j>``.

    A document without token vectors scores 0. Returns float32, one score per document.
    """
    query = np.asarray(query, dtype=np.float32)
    lengths = np.array([len(d) for d in documents], dtype=np.int64)
    if not len(documents):
        return np.zeros(0, np.float32)
    rows = [np.asarray(d, dtype=np.float32).reshape(-1, query.shape[1]) for d in documents]
    return _segment_maxsim(query, np.concatenate(rows) if rows else np.zeros((0, query.shape[1]), np.float32), lengths)


def _segment_maxsim(
    query: np.ndarray, tokens: np.ndarray, lengths: np.ndarray, scales: np.ndarray | None = None
) -> np.ndarray:
    """MaxSim against consecutive documents whose token rows are stacked in ``tokens`` (``lengths`` each);
    ``scales`` multiplies each token row (int8 storage), applied to the similarities (fewer numbers)."""
    scores = np.zeros(len(lengths), dtype=np.float32)
    nonempty = lengths > 0
    if not nonempty.any() or len(query) == 0:
        return scores
    sims = query @ tokens.T  # (query tokens, document tokens)
    if scales is not None:
        sims *= scales
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[nonempty]
    scores[nonempty] = np.maximum.reduceat(sims, starts, axis=1).sum(axis=0)
    return scores


class _TokenStore:
    """Token vectors of documents, compressed, stacked in document order: document ``i`` owns rows
    ``offsets[i]:offsets[i+1]``."""

    def __init__(self, storage: str, dimension: int = 0) -> None:
        self.storage = storage
        self.dimension = dimension
        self.offsets = np.zeros(1, dtype=np.int64)
        dtype = np.float16 if storage == "float16" else np.int8
        self.tokens = np.zeros((0, dimension), dtype=dtype)
        self.scales = np.zeros(0, dtype=np.float32)  # int8 only

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def compress(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.storage == "float16":
            return vectors.astype(np.float16), np.zeros(0, np.float32)
        scale = np.abs(vectors).max(axis=1) / 127.0 if len(vectors) else np.zeros(0, np.float32)
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        return np.clip(np.rint(vectors / scale[:, None]), -127, 127).astype(np.int8), scale

    def extended(self, documents: list[np.ndarray]) -> "_TokenStore":
        """A new store with ``documents`` appended (this one is left unchanged)."""
        dimension = self.dimension or next((d.shape[1] for d in documents if d.size), 0)
        stacked = [d.reshape(-1, dimension) for d in documents]
        vectors = np.concatenate(stacked) if stacked else np.zeros((0, dimension), np.float32)
        codes, scales = self.compress(vectors.astype(np.float32, copy=False))
        new = _TokenStore(self.storage, dimension)
        lengths = np.array([len(d) for d in stacked], dtype=np.int64)
        new.offsets = np.concatenate([self.offsets, self.offsets[-1] + np.cumsum(lengths)])
        new.tokens = np.concatenate([self.tokens.reshape(-1, dimension), codes]) if len(self.tokens) else codes
        new.scales = np.concatenate([self.scales, scales]) if self.storage == "int8" else self.scales
        return new

    def without(self, rows: np.ndarray) -> "_TokenStore":
        """A new store without the documents at ``rows``."""
        keep_docs = np.ones(len(self), dtype=bool)
        keep_docs[rows] = False
        lengths = np.diff(self.offsets)
        keep_tokens = np.repeat(keep_docs, lengths)
        new = _TokenStore(self.storage, self.dimension)
        new.offsets = np.concatenate([[0], np.cumsum(lengths[keep_docs])]).astype(np.int64)
        new.tokens = self.tokens[keep_tokens]
        new.scales = self.scales[keep_tokens] if self.storage == "int8" else self.scales
        return new

    def token_rows(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The token row indices of documents ``docs`` (in that order) and each document's length."""
        starts, lengths = self.offsets[docs], self.offsets[docs + 1] - self.offsets[docs]
        total = int(lengths.sum())
        shift = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        return np.arange(total, dtype=np.int64) + shift, lengths

    def decode(self, rows: np.ndarray | slice) -> np.ndarray:
        """Token vectors at ``rows`` as float32."""
        if self.storage == "float16":
            return self.tokens[rows].astype(np.float32)
        return self.tokens[rows].astype(np.float32) * self.scales[rows][:, None]

    def scores(
        self, query: np.ndarray, docs: np.ndarray, codes: np.ndarray | None = None, keep: np.ndarray | None = None
    ) -> np.ndarray:
        """Exact MaxSim (on the stored vectors) of one query against documents ``docs``.

        With ``codes`` (centroid id per token row) and ``keep`` (bool per centroid), only the tokens whose
        centroid is kept are scored (a document with none left scores 0). Rows are gathered and converted to
        float32 a block of ``SCORE_BLOCK`` at a time, so that the float32 copy stays in cache.
        """
        query = np.asarray(query, dtype=np.float32)
        rows, lengths = self.token_rows(np.asarray(docs, dtype=np.int64))
        if keep is not None and codes is not None:
            mask = keep[codes[rows]]
            lengths = np.bincount(np.repeat(np.arange(len(lengths)), lengths)[mask], minlength=len(lengths))
            rows = rows[mask]
        total = len(rows)
        scores = np.zeros(len(lengths), dtype=np.float32)
        if total == 0 or len(query) == 0:
            return scores
        sims = np.empty((len(query), total), dtype=np.float32)
        block = np.empty((min(SCORE_BLOCK, total), self.dimension), dtype=np.float32)
        for begin in range(0, total, SCORE_BLOCK):
            end = min(begin + SCORE_BLOCK, total)
            np.copyto(block[: end - begin], self.tokens[rows[begin:end]], casting="unsafe")
            np.matmul(query, block[: end - begin].T, out=sims[:, begin:end])
        if self.storage == "int8":
            sims *= self.scales[rows]
        nonempty = lengths > 0
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[nonempty]
        scores[nonempty] = np.maximum.reduceat(sims, starts, axis=1).sum(axis=0)
        return scores

    def all_scores(self, queries: list[np.ndarray]) -> np.ndarray:
        """Brute-force MaxSim of every query against every document, ``(queries, documents)`` float32.

        Token rows are decoded one block at a time and scored against all query tokens at once.
        """
        n_docs = len(self)
        result = np.zeros((len(queries), n_docs), dtype=np.float32)
        if not queries or n_docs == 0:
            return result
        stacked = np.concatenate(queries)
        qlens = np.array([len(q) for q in queries])
        qstarts = np.concatenate([[0], np.cumsum(qlens)[:-1]])
        lengths = np.diff(self.offsets)
        doc = 0
        while doc < n_docs:
            # Whole documents per block, at least one.
            end = int(np.searchsorted(self.offsets, self.offsets[doc] + BLOCK_TOKENS, side="right")) - 1
            end = min(max(end, doc + 1), n_docs)
            rows = slice(int(self.offsets[doc]), int(self.offsets[end]))
            block = self.tokens[rows].astype(np.float32)
            block_lengths = lengths[doc:end]
            nonempty = np.flatnonzero(block_lengths > 0)
            if len(nonempty) and len(block):
                sims = stacked @ block.T
                if self.storage == "int8":
                    sims *= self.scales[rows]
                starts = (self.offsets[doc:end] - self.offsets[doc])[nonempty]
                per_token = np.maximum.reduceat(sims, starts, axis=1)  # (query tokens, documents)
                result[:, doc + nonempty] = np.add.reduceat(per_token, qstarts, axis=0)
            doc = end
        return result

    @property
    def stored_bytes(self) -> int:
        return int(self.tokens.nbytes + self.scales.nbytes + self.offsets.nbytes)

    def save(self, directory: Path) -> list[str]:
        np.save(directory / OFFSETS, self.offsets, allow_pickle=False)
        np.save(directory / TOKENS, np.ascontiguousarray(self.tokens), allow_pickle=False)
        names = [OFFSETS, TOKENS]
        if self.storage == "int8":
            np.save(directory / SCALES, self.scales, allow_pickle=False)
            names.append(SCALES)
        return names

    @classmethod
    def read(cls, directory: Path, storage: str, n_docs: int) -> "_TokenStore":
        store = cls(storage)
        store.offsets = _load_array(directory / OFFSETS, np.int64)
        tokens = _load_array(directory / TOKENS, np.float16 if storage == "float16" else np.int8)
        if tokens.ndim != 2:
            raise InputError(f"{directory / TOKENS}: expected a 2-d array, got shape {tokens.shape}")
        store.tokens, store.dimension = tokens, int(tokens.shape[1])
        if storage == "int8":
            store.scales = _load_array(directory / SCALES, np.float32)
        if (
            len(store.offsets) != n_docs + 1 or store.offsets[0] != 0 or np.any(np.diff(store.offsets) < 0)
            or store.offsets[-1] != len(tokens) or (storage == "int8" and len(store.scales) != len(tokens))
        ):
            raise InputError(
                f"{directory}: {OFFSETS} ({len(store.offsets)} entries), {TOKENS} ({len(tokens)} rows) and "
                f"{CHUNKS} ({n_docs} chunks) do not agree"
            )
        return store


def _load_array(path: Path, dtype: Any) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    if array.dtype != dtype:
        raise InputError(f"{path}: holds {array.dtype}, expected {np.dtype(dtype)}")
    return array


def text_of(chunk: Chunk) -> str:
    """The text encoded for ``chunk``: ``title + " " + text`` when it has a title."""
    return f"{chunk.title} {chunk.text}" if chunk.title else chunk.text


def _encode_queries(encoder: TokenEncoder, name: str, queries: str | Sequence[str]) -> list[np.ndarray]:
    queries = text_batch(queries, f"index {name!r}")
    vectors = encoder.encode_queries(queries)
    for number, (query, v) in enumerate(zip(queries, vectors)):
        if len(v) == 0:
            raise InputError(f"index {name!r}: query {number} ({query!r}) has no tokens to score with MaxSim")
    return vectors


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores, best first (ties by position)."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return part[np.lexsort((part, -scores[part]))]


def default_nlist(n_tokens: int, per_sqrt_token: float = CENTROIDS_PER_SQRT_TOKEN) -> int:
    """Centroids for ``n_tokens`` token vectors: the power of two nearest ``per_sqrt_token * sqrt(n_tokens)``
    (4 by default: 4,096 for SciFact's 1.23M tokens; PLAID uses about ``16 * sqrt``), at most ``n_tokens / 8``
    (k-means needs several points per centroid), at least 1. ``eval/bench_late.py`` compares factors."""
    if n_tokens <= 0:
        return 1
    target = 2 ** int(round(np.log2(max(per_sqrt_token * np.sqrt(n_tokens), 1.0))))
    return int(max(1, min(target, n_tokens // 8)))


# -- the index -----------------------------------------------------------------------------------------


class LateInteractionIndex(SavedIndex):
    """Multi-vector index searched by MaxSim, PLAID-style (see the module doc).

    Offline, with ``model="minilm"``, these are MiniLM token vectors, not a trained ColBERT; give a
    ColBERT checkpoint folder as ``model`` for the real thing. ``nprobe`` centroids are probed per query
    token and the best ``candidates`` documents by centroid interaction are scored by MaxSim (on the tokens
    of probed centroids); ``nlist=None``
    picks :func:`default_nlist`. ``exhaustive=True`` scores every document exactly instead. ``name`` is
    the ``source`` of the hits.
    """

    manifest_kind = KIND
    manifest_version = FORMAT_VERSION
    # what the stored vectors depend on; search settings (nprobe, candidates, exhaustive) are the loading index's
    saved_params = ("model", "storage", "max_length")

    def __init__(
        self,
        model: str = "minilm",
        storage: str = "int8",
        nlist: int | None = None,
        nprobe: int = DEFAULT_NPROBE,
        candidates: int = DEFAULT_CANDIDATES,
        exhaustive: bool = False,
        max_length: int = 256,
        batch_size: int = 32,
        name: str = "late",
        dtype: str = "float32",
    ) -> None:
        if storage not in STORAGES:
            raise InputError(f"late index {name!r}: storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        if nlist is not None and nlist < 1 or nprobe < 1 or candidates < 1:
            raise InputError(
                f"late index {name!r}: need nlist >= 1 (or None), nprobe >= 1 and candidates >= 1; "
                f"got nlist={nlist}, nprobe={nprobe}, candidates={candidates}"
            )
        self._encoder = TokenEncoder(model, max_length=max_length, batch_size=batch_size, dtype=dtype)
        self.model = model
        self.storage = storage
        self.nlist = nlist
        self.nprobe = nprobe
        self.candidates = candidates
        self.exhaustive = exhaustive
        self.max_length = max_length
        self.batch_size = batch_size
        self.name = name
        self.dtype = dtype
        self._chunks: list[Chunk] = []  # in storage order
        self._rows: dict[str, int] = {}  # chunk id -> row
        self._store = _TokenStore(storage)
        self._centroids: np.ndarray | None = None
        self._codes = np.zeros(0, dtype=np.int32)  # centroid id per token row
        self._trained_tokens = 0
        self._lists: tuple[np.ndarray, np.ndarray] | None = None  # centroid -> documents (CSR), derived
        self._quantizer: Any = None  # derived from the centroids

    # -- the Index protocol ------------------------------------------------------------------------

    def add(self, chunks: Iterable[Chunk]) -> None:
        """Encode and add ``chunks``. A chunk id already present (or twice in ``chunks``) is an error.

        Everything is encoded before the index changes, so a failure leaves it as it was. New tokens are
        assigned to the existing centroids; the centroids are (re)trained on the first add and whenever
        the index has grown to ``RETRAIN_GROWTH`` times the tokens they were trained on.
        """
        chunks = list(chunks)
        if not chunks:
            return
        check_new_ids(self.name, self._rows, chunks)
        vectors = self._encoder.encode_documents([text_of(c) for c in chunks])
        self._check_dimension(vectors)
        self.add_encoded(chunks, vectors)

    def add_encoded(self, chunks: list[Chunk], vectors: list[np.ndarray]) -> None:
        """Add chunks whose token vectors were computed already (by this index's encoder: see
        :meth:`encode_chunks`); benchmarks use it to build several variants from one encoding."""
        chunks = list(chunks)
        check_new_ids(self.name, self._rows, chunks)
        if len(vectors) != len(chunks):
            raise InputError(f"late index {self.name!r}: {len(chunks)} chunks but {len(vectors)} token matrices")
        self._check_dimension(vectors)
        store = self._store.extended(list(vectors))
        centroids, codes, trained = self._centroids, self._codes, self._trained_tokens
        if centroids is None or store.n_tokens >= RETRAIN_GROWTH * max(trained, 1):
            centroids, trained = _train_centroids(store, self.nlist), store.n_tokens
            codes = _assign(store, centroids, 0)
        else:
            codes = np.concatenate([codes, _assign(store, centroids, self._store.n_tokens)])
        self._store, self._centroids, self._codes, self._trained_tokens = store, centroids, codes, trained
        start = len(self._chunks)
        self._chunks.extend(chunks)
        self._rows.update((c.id, start + i) for i, c in enumerate(chunks))
        self._derive()

    def encode_chunks(self, chunks: Sequence[Chunk]) -> list[np.ndarray]:
        """The token vectors this index would store for ``chunks`` (float32, before compression)."""
        return self._encoder.encode_documents([text_of(c) for c in chunks])

    def encode_queries(self, queries: str | Sequence[str]) -> list[np.ndarray]:
        """The query token vectors :meth:`search` uses (one str is one query)."""
        return _encode_queries(self._encoder, self.name, queries)

    def search(self, queries: str | Sequence[str], k: int = 10) -> list[list[Hit]]:
        """The ``k`` best chunks for each query by MaxSim, best first (ties by storage order).

        One str is one query (a batch of one), not one query per character.
        """
        if k < 1:
            raise InputError(f"late index {self.name!r}: k must be at least 1, got {k}")
        queries = text_batch(queries, f"late index {self.name!r}")
        if not queries:
            return []
        vectors = self.encode_queries(queries)
        if len(self) == 0:
            return [[] for _ in queries]
        return self.search_encoded(vectors, k, exhaustive=self.exhaustive)

    def search_encoded(
        self, queries: list[np.ndarray], k: int, exhaustive: bool | None = None,
        nprobe: int | None = None, candidates: int | None = None,
    ) -> list[list[Hit]]:
        """Search with query token vectors from :meth:`encode_queries`; ``None`` overrides mean this index's settings."""
        ranked = self.rank(queries, k, exhaustive=exhaustive, nprobe=nprobe, candidates=candidates)
        return [[Hit(chunk=self._chunks[r], score=float(s), source=self.name) for r, s in row] for row in ranked]

    def rank(
        self, queries: list[np.ndarray], k: int, exhaustive: bool | None = None,
        nprobe: int | None = None, candidates: int | None = None,
    ) -> list[list[tuple[int, float]]]:
        """``(row, score)`` pairs per query, best first: the search without building hits."""
        exhaustive = self.exhaustive if exhaustive is None else exhaustive
        if len(self) == 0:
            return [[] for _ in queries]
        if exhaustive:
            results = []
            for start in range(0, len(queries), 64):  # bounds the (query tokens x block) similarity matrix
                scores = self._store.all_scores(list(queries[start:start + 64]))
                results.extend([(int(r), float(row[r])) for r in _top(row, k)] for row in scores)
            return results
        nprobe = self.nprobe if nprobe is None else nprobe
        candidates = self.candidates if candidates is None else candidates
        return [self._rank_one(np.asarray(q, dtype=np.float32), k, nprobe, candidates) for q in queries]

    def candidate_rows(self, query: np.ndarray, nprobe: int | None = None, candidates: int | None = None) -> np.ndarray:
        """Stage 1 for one query: the rows of the documents that go on to exact MaxSim (sorted)."""
        return self._candidates(np.asarray(query, dtype=np.float32), nprobe, candidates)[0]

    def _candidates(
        self, query: np.ndarray, nprobe: int | None, candidates: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidate rows (sorted) and the probed centroids of each query token, ``(query tokens, nprobe)``.

        Centroid interaction: per query token, a document scores its best probed centroid's similarity, or,
        with no token in a probed centroid, the best unprobed centroid's (an upper bound); the sum over query
        tokens ranks the documents found in a probed list.
        """
        nlist = len(self._centroids)
        nprobe = min(self.nprobe if nprobe is None else nprobe, nlist)
        candidates = self.candidates if candidates is None else candidates
        list_offsets, list_docs = self._lists
        sims = query @ self._centroids.T  # (query tokens, centroids)
        n_tokens, n_docs = len(query), len(self)
        if nprobe < nlist:
            part = np.argpartition(-sims, nprobe, axis=1)[:, : nprobe + 1]
        else:
            part = np.repeat(np.arange(nlist)[None, :], n_tokens, axis=0)
        part_scores = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        part, part_scores = np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)
        probes, probe_scores = part[:, :nprobe], part_scores[:, :nprobe]
        floor = part_scores[:, nprobe] if nprobe < nlist else part_scores[:, -1]
        approx = np.repeat(floor[:, None], n_docs, axis=1)
        # Every (query token, probed centroid) list at once, lowest score first per token, so that where a
        # document is in several probed lists of a token the best score is written last.
        lists = probes[:, ::-1].ravel()
        values = probe_scores[:, ::-1].ravel()
        token_of = np.repeat(np.arange(n_tokens, dtype=np.int64), nprobe)
        starts = list_offsets[lists]
        lengths = list_offsets[lists + 1] - starts
        total = int(lengths.sum())
        shift = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        docs = list_docs[np.arange(total, dtype=np.int64) + shift]
        approx.ravel()[np.repeat(token_of * n_docs, lengths) + docs] = np.repeat(values, lengths)
        found = np.zeros(n_docs, dtype=bool)
        found[docs] = True
        pool = np.flatnonzero(found)
        if len(pool) > candidates:
            pool = np.sort(pool[_top(approx[:, pool].sum(axis=0), candidates)])
        return pool, probes

    def _rank_one(self, query: np.ndarray, k: int, nprobe: int, candidates: int) -> list[tuple[int, float]]:
        rows, probes = self._candidates(query, nprobe, candidates)
        if len(rows) == 0:
            return []
        keep = None
        if probes.shape[1] < len(self._centroids):
            # Only tokens in a centroid probed by some query token are scored (PLAID-style pruning).
            keep = np.zeros(len(self._centroids), dtype=bool)
            keep[probes.ravel()] = True
        scores = self._store.scores(query, rows, codes=self._codes, keep=keep)
        return [(int(rows[i]), float(scores[i])) for i in _top(scores, k)]

    def delete(self, chunk_ids: Iterable[str]) -> int:
        """Remove the chunks with these ids; returns how many were removed (unknown ids are skipped)."""
        rows = sorted({self._rows[c] for c in chunk_ids if c in self._rows})
        if not rows:
            return 0
        drop = np.asarray(rows, dtype=np.int64)
        keep_tokens = np.ones(self._store.n_tokens, dtype=bool)
        for r in rows:
            keep_tokens[self._store.offsets[r]:self._store.offsets[r + 1]] = False
        store, codes = self._store.without(drop), self._codes[keep_tokens]
        gone = set(rows)
        chunks = [c for i, c in enumerate(self._chunks) if i not in gone]
        self._store, self._codes, self._chunks = store, codes, chunks
        self._rows = {c.id: i for i, c in enumerate(chunks)}
        if not chunks:
            self._centroids, self._codes, self._trained_tokens = None, np.zeros(0, np.int32), 0
        self._derive()
        return len(rows)

    def __len__(self) -> int:
        return len(self._chunks)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._rows

    # -- sizes -------------------------------------------------------------------------------------

    @property
    def n_tokens(self) -> int:
        """Token vectors stored."""
        return self._store.n_tokens

    @property
    def token_bytes_float32(self) -> int:
        """Bytes the token vectors would take uncompressed (float32)."""
        return int(self._store.n_tokens * self._store.dimension * 4)

    @property
    def stored_bytes(self) -> int:
        """Bytes of everything the index keeps for search: vectors, scales, offsets, centroid ids, centroids."""
        centroids = self._centroids.nbytes if self._centroids is not None else 0
        return int(self._store.stored_bytes + self._codes.nbytes + centroids)

    def compression_ratio(self) -> float:
        """Uncompressed float32 token vectors / :attr:`stored_bytes` (0 when empty)."""
        stored = self.stored_bytes
        return round(self.token_bytes_float32 / stored, 3) if stored and self.n_tokens else 0.0

    # -- persistence -------------------------------------------------------------------------------

    def write_files(self, staging: Path) -> tuple[list[str], dict[str, Any]]:
        write_chunks(staging / CHUNKS, self._chunks, self.name)
        files = [CHUNKS, *self._store.save(staging)]
        if self._centroids is not None:
            np.save(staging / CENTROIDS, self._centroids, allow_pickle=False)
            np.save(staging / CODES, self._codes, allow_pickle=False)
            files += [CENTROIDS, CODES]
        return files, dict(
            model=self.model,
            encoder="colbert" if self._loaded_colbert() else "token-embeddings",
            dimension=self._store.dimension,
            storage=self.storage,
            tokens=self.n_tokens,
            nlist=0 if self._centroids is None else len(self._centroids),
            trained_tokens=self._trained_tokens,
            token_bytes_float32=self.token_bytes_float32,
            stored_bytes=self.stored_bytes,
            compression_ratio=self.compression_ratio(),
        )

    def read_files(self, directory: Path, manifest: dict[str, Any]) -> None:
        chunks = list(read_chunks(directory / CHUNKS).values())
        store = _TokenStore.read(directory, self.storage, len(chunks))
        centroids, codes = None, np.zeros(0, dtype=np.int32)
        if (directory / CENTROIDS).is_file():
            centroids = _load_array(directory / CENTROIDS, np.float32)
            codes = _load_array(directory / CODES, np.int32)
            if len(codes) != store.n_tokens or centroids.ndim != 2 or centroids.shape[1] != store.dimension or (
                len(codes) and (codes.min() < 0 or codes.max() >= len(centroids))
            ):
                raise InputError(f"{directory}: {CENTROIDS} and {CODES} do not match {TOKENS}")
        elif chunks:
            raise InputError(f"{directory}: {len(chunks)} chunks but no {CENTROIDS}")
        self._chunks, self._store, self._centroids, self._codes = chunks, store, centroids, codes
        self._rows = {c.id: i for i, c in enumerate(chunks)}
        self._trained_tokens = int(manifest.get("trained_tokens", store.n_tokens))
        self._derive()

    # -- helpers -----------------------------------------------------------------------------------

    @property
    def encoder(self) -> TokenEncoder:
        return self._encoder

    def warm_up(self) -> None:
        """Load the model now, so that the first ``add`` or ``search`` does not pay for it."""
        self._encoder.backend
        require("faiss", "dense", "faiss-cpu")

    def text_of(self, chunk: Chunk) -> str:
        return text_of(chunk)

    def _loaded_colbert(self) -> bool:
        from rag.encoders import resolve_model_path

        return is_colbert_checkpoint(resolve_model_path(self.model))

    def _check_dimension(self, vectors: Sequence[np.ndarray]) -> None:
        dims = {v.shape[1] for v in vectors if v.size}
        if self._store.dimension:
            dims.add(self._store.dimension)
        if len(dims) > 1:
            raise InputError(f"late index {self.name!r}: token vectors of widths {sorted(dims)}; one model per index")

    def _derive(self) -> None:
        """Rebuild the inverted lists (centroid -> documents) and the faiss quantizer from codes and centroids."""
        if self._centroids is None or len(self) == 0:
            self._lists, self._quantizer = None, None
            return
        faiss = require("faiss", "dense", "faiss-cpu")
        quantizer = faiss.IndexFlatIP(self._centroids.shape[1])
        quantizer.add(self._centroids)
        nlist, n_docs = len(self._centroids), len(self)
        doc_of_token = np.repeat(np.arange(n_docs, dtype=np.int64), np.diff(self._store.offsets))
        pairs = np.unique(self._codes.astype(np.int64) * n_docs + doc_of_token)
        list_codes, list_docs = pairs // n_docs, (pairs % n_docs).astype(np.int64)
        list_offsets = np.searchsorted(list_codes, np.arange(nlist + 1))
        self._lists, self._quantizer = (list_offsets, list_docs), quantizer


def _train_centroids(store: _TokenStore, nlist: int | None) -> np.ndarray:
    """faiss spherical k-means on a fixed-seed sample of the stored token vectors."""
    faiss = require("faiss", "dense", "faiss-cpu")
    n = store.n_tokens
    if n == 0:
        raise InputError("late index: no token vectors to train centroids on (all texts are empty)")
    nlist = min(nlist or default_nlist(n), n)
    sample_size = min(n, nlist * KMEANS_POINTS_PER_CENTROID)
    rows = np.sort(np.random.default_rng(0).choice(n, size=sample_size, replace=False))
    sample = np.ascontiguousarray(store.decode(rows))
    if nlist == 1:
        centroid = sample.mean(axis=0, keepdims=True)
        return (centroid / max(np.linalg.norm(centroid), 1e-12)).astype(np.float32)
    kmeans = faiss.Kmeans(
        store.dimension, nlist, niter=KMEANS_ITERATIONS, seed=1234, spherical=True,
        max_points_per_centroid=KMEANS_POINTS_PER_CENTROID, min_points_per_centroid=1, verbose=False,
    )
    kmeans.train(sample)
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def _assign(store: _TokenStore, centroids: np.ndarray, start: int) -> np.ndarray:
    """The nearest centroid (inner product) of every stored token from row ``start`` on, int32."""
    faiss = require("faiss", "dense", "faiss-cpu")
    quantizer = faiss.IndexFlatIP(centroids.shape[1])
    quantizer.add(centroids)
    out = []
    for begin in range(start, store.n_tokens, BLOCK_TOKENS):
        block = np.ascontiguousarray(store.decode(slice(begin, min(begin + BLOCK_TOKENS, store.n_tokens))))
        out.append(quantizer.search(block, 1)[1][:, 0].astype(np.int32))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int32)


# -- BM25 + MaxSim reranking ---------------------------------------------------------------------------


class LateRerankIndex(SavedIndex):
    """BM25 (Lucene, flat) top ``depth`` reranked by exact MaxSim on the stored token vectors.

    ``add`` indexes chunks in BM25 and stores their token vectors (compressed as ``storage``); ``search``
    returns at most ``max(depth, k)`` BM25 candidates, reordered by MaxSim, cut at ``k``. Offline the
    token vectors are MiniLM token vectors, not a trained ColBERT (see the module doc).
    """

    manifest_kind = RERANK_KIND
    manifest_version = FORMAT_VERSION
    saved_params = ("model", "storage", "max_length")

    def __init__(
        self,
        model: str = "minilm",
        depth: int = 100,
        k1: float = 0.9,
        b: float = 0.4,
        storage: str = "int8",
        max_length: int = 256,
        batch_size: int = 32,
        name: str = "late-rerank",
        dtype: str = "float32",
    ) -> None:
        if storage not in STORAGES:
            raise InputError(f"late-rerank index {name!r}: storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        if depth < 1:
            raise InputError(f"late-rerank index {name!r}: depth must be at least 1, got {depth}")
        self._encoder = TokenEncoder(model, max_length=max_length, batch_size=batch_size, dtype=dtype)
        self._bm25 = BM25Index(k1=k1, b=b, fields="flat", name=f"{name}-bm25")
        self.model = model
        self.depth = depth
        self.k1 = k1
        self.b = b
        self.storage = storage
        self.max_length = max_length
        self.batch_size = batch_size
        self.name = name
        self.dtype = dtype
        self._chunks: list[Chunk] = []
        self._rows: dict[str, int] = {}
        self._store = _TokenStore(storage)

    def add(self, chunks: Iterable[Chunk]) -> None:
        """Index ``chunks`` in BM25 and store their token vectors; all or nothing."""
        chunks = list(chunks)
        if not chunks:
            return
        check_new_ids(self.name, self._rows, chunks)
        vectors = self._encoder.encode_documents([text_of(c) for c in chunks])
        self.add_encoded(chunks, vectors)

    def add_encoded(self, chunks: list[Chunk], vectors: list[np.ndarray]) -> None:
        """Add chunks with token vectors computed already (benchmarks reuse one encoding)."""
        chunks = list(chunks)
        check_new_ids(self.name, self._rows, chunks)
        store = self._store.extended(list(vectors))
        self._bm25.add(chunks)
        self._store = store
        start = len(self._chunks)
        self._chunks.extend(chunks)
        self._rows.update((c.id, start + i) for i, c in enumerate(chunks))

    def search(self, queries: str | Sequence[str], k: int = 10) -> list[list[Hit]]:
        """BM25's top ``max(depth, k)`` per query, reranked by MaxSim, best first (ties by BM25 rank).

        One str is one query (a batch of one), not one query per character.
        """
        if k < 1:
            raise InputError(f"late-rerank index {self.name!r}: k must be at least 1, got {k}")
        queries = text_batch(queries, f"late-rerank index {self.name!r}")
        if not queries:
            return []
        vectors = _encode_queries(self._encoder, self.name, queries)
        return self.search_encoded(queries, vectors, k)

    def search_encoded(self, queries: list[str], vectors: list[np.ndarray], k: int) -> list[list[Hit]]:
        """Search with the query texts (for BM25) and their token vectors (for MaxSim)."""
        first = self._bm25.search(queries, max(self.depth, k)) if len(self) else [[] for _ in queries]
        results = []
        for query, hits in zip(vectors, first):
            rows = np.array([self._rows[h.chunk.id] for h in hits], dtype=np.int64)
            if len(rows) == 0:
                results.append([])
                continue
            scores = self._store.scores(np.asarray(query, np.float32), rows)
            results.append(
                [Hit(chunk=self._chunks[rows[i]], score=float(scores[i]), source=self.name) for i in _top(scores, k)]
            )
        return results

    def delete(self, chunk_ids: Iterable[str]) -> int:
        """Remove the chunks with these ids from BM25 and the token store; returns how many were removed."""
        rows = sorted({self._rows[c] for c in chunk_ids if c in self._rows})
        if not rows:
            return 0
        ids = [self._chunks[r].id for r in rows]
        store = self._store.without(np.asarray(rows, dtype=np.int64))
        self._bm25.delete(ids)
        gone = set(rows)
        self._store = store
        self._chunks = [c for i, c in enumerate(self._chunks) if i not in gone]
        self._rows = {c.id: i for i, c in enumerate(self._chunks)}
        return len(rows)

    def __len__(self) -> int:
        return len(self._chunks)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._rows

    def compression_ratio(self) -> float:
        """Uncompressed float32 token vectors / stored token bytes (0 when empty)."""
        raw = self._store.n_tokens * self._store.dimension * 4
        return round(raw / self._store.stored_bytes, 3) if self._store.n_tokens else 0.0

    def write_files(self, staging: Path) -> tuple[list[str], dict[str, Any]]:
        self._bm25.save(staging / BM25_DIR)
        write_chunks(staging / CHUNKS, self._chunks, self.name)
        return [CHUNKS, f"{BM25_DIR}/{MANIFEST}", *self._store.save(staging)], dict(
            model=self.model,
            dimension=self._store.dimension,
            storage=self.storage,
            tokens=self._store.n_tokens,
            compression_ratio=self.compression_ratio(),
        )

    def read_files(self, directory: Path, manifest: dict[str, Any]) -> None:
        chunks = list(read_chunks(directory / CHUNKS).values())
        store = _TokenStore.read(directory, self.storage, len(chunks))
        bm25 = BM25Index(k1=self.k1, b=self.b, fields="flat", name=f"{self.name}-bm25")
        bm25.load(directory / BM25_DIR)
        if len(bm25) != len(chunks) or any(c.id not in bm25 for c in chunks):
            raise InputError(f"{directory}: {BM25_DIR}/ and {CHUNKS} hold different chunks")
        self._bm25, self._store, self._chunks = bm25, store, chunks
        self._rows = {c.id: i for i, c in enumerate(chunks)}

    @property
    def bm25(self) -> BM25Index:
        """The first-stage BM25 index (read-only for callers)."""
        return self._bm25

    def warm_up(self) -> None:
        self._encoder.backend
        self._bm25.warm_up()


class MaxSimReranker(Component):
    """Reranks any hits by MaxSim with a token encoder, encoding the hits' texts on the fly (nothing cached).

    Offline with ``model="minilm"`` these are MiniLM token vectors, not a trained ColBERT.

        >>> reranker = MaxSimReranker()
        >>> reranker.rerank("what thins blood?", bm25_hits, k=3)      # doctest: +SKIP
    """

    role = "reranker"

    def __init__(
        self, model: str = "minilm", max_length: int = 256, batch_size: int = 32, name: str = "maxsim",
        dtype: str = "float32",
    ) -> None:
        self._encoder = TokenEncoder(model, max_length=max_length, batch_size=batch_size, dtype=dtype)
        self.model = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.name = name
        self.dtype = dtype

    def rerank(self, query: str, hits: list[Hit], k: int) -> list[Hit]:
        """The ``k`` best of ``hits`` by MaxSim, best first (ties keep the input order); a chunk id that
        appears more than once is scored once, at its first position."""
        if k < 1:
            raise InputError(f"reranker {self.name!r}: k must be at least 1, got {k}")
        if not isinstance(query, str):
            raise InputError(f"reranker {self.name!r}: query is a {type(query).__name__}, not a str")
        unique: dict[str, Hit] = {}
        for number, hit in enumerate(hits):
            if not isinstance(hit, Hit):
                raise InputError(f"reranker {self.name!r}: hit {number} is a {type(hit).__name__}, not a Hit")
            unique.setdefault(hit.chunk.id, hit)
        if not unique:
            return []
        (q,) = _encode_queries(self._encoder, self.name, [query])
        chunks = [h.chunk for h in unique.values()]
        docs = self._encoder.encode_documents([text_of(c) for c in chunks])
        scores = maxsim(q, [d.reshape(-1, q.shape[1]) for d in docs])
        return [Hit(chunk=chunks[i], score=float(scores[i]), source=self.name) for i in _top(scores, k)]

    def warm_up(self) -> None:
        self._encoder.backend
