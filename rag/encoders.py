"""Shared text encoders: sentence-transformers models loaded once per process and reused by every component.

    >>> from rag.encoders import SentenceEncoder
    >>> enc = SentenceEncoder("minilm")          # cheap: nothing is loaded yet
    >>> enc.encode_documents(["a text"]).shape   # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rag.errors import InputError, TruncatedInputWarning
from rag.lazy import require
from rag.protocols import text_batch
from rag.registry import declared_params
from rag.shared import shared_model

DEVICE = "cpu"
# Below this many texts a progress bar is noise; above it, encoding takes seconds to minutes on a CPU.
PROGRESS_THRESHOLD = 1000
# UTF-8 has at most 4 bytes a character, so even a byte-level tokenizer makes at most 4 tokens of one.
MAX_TOKENS_PER_CHARACTER = 4


def warn_long_queries(tokenizer: Any, queries: Sequence[str], window: int, owner: str) -> None:
    """Warn (:class:`TruncatedInputWarning`) when queries have more tokens than ``window``, special tokens included.

    Every transformer encoder cuts its input at its window; the encoders here do so on purpose (a query of
    100,000 characters is searched by its first ``window`` tokens, not refused by the model), and this
    says so instead of hiding it. Only queries long enough to possibly exceed the window are tokenized.
    """
    long = [i for i, query in enumerate(queries) if len(query) * MAX_TOKENS_PER_CHARACTER + 2 > window]
    if not long:
        return
    lengths = [len(ids) for ids in tokenizer([queries[i] for i in long], add_special_tokens=True)["input_ids"]]
    over = [(i, n) for i, n in zip(long, lengths) if n > window]
    if over:
        number, longest = max(over, key=lambda pair: pair[1])
        warnings.warn(
            f"{owner}: {len(over)} of {len(queries)} queries are longer than the model's window of {window} tokens "
            f"(the longest, query {number}, has {longest}); each is searched by its first {window} tokens",
            TruncatedInputWarning,
            stacklevel=3,
        )



def resolve_model_path(model: str) -> str:
    """A model spec (pack name, local path or hub id) as something ``SentenceTransformer`` can open."""
    if Path(model).exists():
        return model
    from rag.models import resolve_model

    return resolve_model(model)


DTYPES = ("float32", "bfloat16")
AUTO = "auto"
# "auto" picks bfloat16 only when it encodes at least this much faster: float32 is the reference arithmetic,
# and a smaller gain is within what the calibration's noise can fake.
AUTO_MIN_SPEEDUP = 1.2
CALIBRATION_TEXTS = 32
DTYPE_FORMAT_VERSION = 1


def check_dtype(model: str, dtype: str) -> None:
    """Refuse an encoder dtype other than :data:`DTYPES` or ``"auto"``, naming the model it was asked for."""
    if dtype not in DTYPES and dtype != AUTO:
        raise InputError(f"encoder {model!r}: dtype must be one of {', '.join(DTYPES)} or {AUTO!r}, got {dtype!r}")


_DTYPE_MEMO: dict[tuple[str, str, int, str], str] = {}  # (kind, model, threads, cache) -> dtype, this process
_DTYPE_LOCK = threading.Lock()


def _dtype_choice_file(kind: str, model: str, facts: dict[str, Any]) -> Path:
    from rag.machine import machine_key
    from rag.models import cache_dir

    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{kind}-{model}")
    return cache_dir() / "encoders" / machine_key(facts) / f"{safe}.json"


def choose_dtype(kind: str, model: str, make: Callable[[str], Any], release: Callable[[str], None]) -> str:
    """``dtype="auto"``: the faster of float32 and bfloat16 for this encoder on this machine.

    Measured once per machine, thread count, encoder kind and model (``make(dtype)`` builds the encoder;
    :data:`CALIBRATION_TEXTS` passages of the stdlib corpus are encoded twice in each dtype, alternately,
    the best time kept), cached as JSON under ``<specrag cache>/encoders/<machine key>/``. bfloat16 is chosen
    when it is at least :data:`AUTO_MIN_SPEEDUP` times faster (CPUs with AVX512-BF16 or AMX); on CPUs
    without BF16 support it is slower and float32 stays. ``release(dtype)`` drops the model not chosen. The
    retrieval quality of bfloat16 is measured by ``python -m bench.encoders`` (``eval/results/encoders.md``).
    """
    import torch

    from rag.machine import machine_facts
    from rag.models import cache_dir

    # Encoders ask on every encode call: within a process only the thread count (and the cache folder) can
    # change what the choice file says, so the memo is keyed by those, and the machine facts (about 20 ms:
    # /proc/cpuinfo, package versions) are read only on a miss.
    memo_key = (kind, model, torch.get_num_threads(), str(cache_dir()))
    with _DTYPE_LOCK:  # one measurement at a time: two at once would each time the other's load
        if memo_key not in _DTYPE_MEMO:
            facts = machine_facts()
            path = _dtype_choice_file(kind, model, facts)
            _DTYPE_MEMO[memo_key] = _read_or_measure_dtype(path, kind, model, facts, make, release)
        return _DTYPE_MEMO[memo_key]


def _read_or_measure_dtype(
    path: Path, kind: str, model: str, facts: dict[str, Any], make: Callable[[str], Any], release: Callable[[str], None]
) -> str:
    import json

    from rag.io import atomic_write_json
    from rag.machine import load_average, say

    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("format_version") == DTYPE_FORMAT_VERSION and cached.get("dtype") in DTYPES:
            return cached["dtype"]
    except (OSError, ValueError, AttributeError):
        pass  # missing or unreadable: measure again
    from rag.stdlib_corpus import stdlib_documents

    texts = [d.text[:600] for d in stdlib_documents() if len(d.text) >= 300][:CALIBRATION_TEXTS]
    say(f"measuring float32 and bfloat16 for the {kind} encoder {model} on this machine (once; cached in {path.parent})")
    load = load_average()
    encoders = {dtype: make(dtype) for dtype in DTYPES}
    seconds = {dtype: float("inf") for dtype in DTYPES}
    for encoder in encoders.values():
        encoder.encode_documents(texts[:4])  # loads and warms up, not timed
    for round_ in range(2):
        for dtype in DTYPES if round_ == 0 else DTYPES[::-1]:
            started = time.perf_counter()
            encoders[dtype].encode_documents(texts)
            seconds[dtype] = min(seconds[dtype], time.perf_counter() - started)
    rate = {dtype: len(texts) / seconds[dtype] for dtype in DTYPES}
    speedup = rate["bfloat16"] / rate["float32"]
    chosen = "bfloat16" if speedup >= AUTO_MIN_SPEEDUP else "float32"
    reason = (f"{chosen}: bfloat16 encodes {speedup:.2f}x float32's {rate['float32']:.1f} texts/s "
              f"(bfloat16 needs {AUTO_MIN_SPEEDUP}x), {facts.get('threads')} threads")
    atomic_write_json(path, {"format_version": DTYPE_FORMAT_VERSION, "kind": kind, "model": model, "dtype": chosen,
                             "reason": reason, "texts_per_second": rate, "machine": facts, "load_average": load,
                             "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")})
    release("bfloat16" if chosen == "float32" else "float32")
    say(f"dtype for the {kind} encoder {model}: {reason}")
    return chosen


def load_sentence_transformer(model: str, max_seq_length: int | None = None, dtype: str = "float32") -> Any:
    """The ``SentenceTransformer`` for ``model``, loaded on first request and shared afterwards.

    Models are cached per resolved path (and sequence length and dtype, properties of the loaded model),
    so several indexes and chunkers built from the same spec hold one copy of the weights. ``bfloat16``
    runs the network in bfloat16 (several times faster on CPUs with AVX512-BF16 or AMX, slower on others);
    embeddings are always returned as float32.
    """
    check_dtype(model, dtype)
    if dtype == AUTO:
        raise InputError(f"encoder {model!r}: resolve dtype 'auto' first (SentenceEncoder.resolved_dtype)")
    path = resolve_model_path(model)
    key = _sentence_transformer_key(path, max_seq_length, dtype)

    def load() -> Any:
        st = require("sentence_transformers", "dense")
        loaded = st.SentenceTransformer(path, device=DEVICE)
        if dtype != "float32":
            import torch

            loaded = loaded.to(getattr(torch, dtype))
        if max_seq_length is not None:
            loaded.max_seq_length = max_seq_length
        return loaded

    return shared_model(key, load)


def _sentence_transformer_key(path: str, max_seq_length: int | None, dtype: str) -> tuple[Any, ...]:
    # Key by the real path so "./m", "m" and a pack name resolving to the same folder share one model.
    return ("sentence-transformer", str(Path(path).resolve()) if Path(path).exists() else path, max_seq_length, dtype)


def forget_sentence_transformer(model: str, max_seq_length: int | None, dtype: str) -> None:
    """Drop a loaded model from the shared cache (its memory goes once nothing else holds it)."""
    from rag.shared import forget

    forget(_sentence_transformer_key(resolve_model_path(model), max_seq_length, dtype))


@declared_params
class SentenceEncoder:
    """Dense text embeddings from a sentence-transformers model, as float32 numpy arrays.

    ``model`` is a pack name (``"minilm"``), a local folder or a hub id. With ``normalize`` (the default)
    rows are L2-normalised, so an inner product is a cosine similarity. ``show_progress=None`` shows a
    bar only for long jobs on a terminal. ``dtype="bfloat16"`` runs the network in bfloat16 (output stays
    float32); ``dtype="auto"`` measures which of the two is faster here, once (:func:`choose_dtype`).
    float32 is the default (README: why not ``"auto"`` yet).
    """

    model: str = "minilm"
    batch_size: int = 64
    normalize: bool = True
    max_seq_length: int | None = None
    show_progress: bool | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"encoder {self.model!r}: batch_size must be at least 1, got {self.batch_size}")
        check_dtype(self.model, self.dtype)

    @property
    def model_id(self) -> str:
        """The model spec this encoder was configured with (not the resolved path)."""
        return self.model

    @property
    def backend(self) -> Any:
        """The loaded ``SentenceTransformer`` (loads it on first access)."""
        return load_sentence_transformer(self.model, self.max_seq_length, self.resolved_dtype)

    @property
    def resolved_dtype(self) -> str:
        """``dtype``, or for ``"auto"`` the dtype measured to be faster here (:func:`choose_dtype`)."""
        if self.dtype != AUTO:
            return self.dtype
        return choose_dtype(
            "sentence-transformer", self.model,
            lambda dtype: SentenceEncoder(self.model, batch_size=self.batch_size, normalize=self.normalize,
                                          max_seq_length=self.max_seq_length, show_progress=False, dtype=dtype),
            lambda dtype: forget_sentence_transformer(self.model, self.max_seq_length, dtype),
        )

    @property
    def dimension(self) -> int:
        """The embedding width (loads the model)."""
        backend = self.backend
        get = getattr(backend, "get_embedding_dimension", None) or backend.get_sentence_embedding_dimension
        return int(get())

    def encode_documents(self, texts: str | Sequence[str]) -> np.ndarray:
        """Embeddings of corpus texts, shape ``(len(texts), dimension)``, float32."""
        return self._encode(texts, self.backend.encode_document)

    def encode_queries(self, texts: str | Sequence[str]) -> np.ndarray:
        """Embeddings of queries (the model's query prompt, if it has one), float32.

        A query longer than the model's window is cut to its first tokens, with a :class:`TruncatedInputWarning`.
        """
        texts = text_batch(texts, f"encoder {self.model!r}", "text")
        backend = self.backend
        if backend.max_seq_length:
            warn_long_queries(backend.tokenizer, texts, int(backend.max_seq_length), f"encoder {self.model!r}")
        return self._encode(texts, backend.encode_query)

    def _encode(self, texts: str | Sequence[str], method: Any) -> np.ndarray:
        # One str is one text: sentence-transformers would return a 1-D vector for it, and list() would
        # split it into characters; either way the (len(texts), dimension) shape would be broken.
        texts = text_batch(texts, f"encoder {self.model!r}", "text")
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = method(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=False,
            show_progress_bar=self._progress(len(texts)),
            convert_to_tensor=True,
        )
        # Normalised here, in float32 (the same operation sentence-transformers applies): a bfloat16 network's
        # vectors normalised in bfloat16 have norms up to about 0.4% off one. bfloat16 tensors have no numpy
        # dtype anyway, so the conversion goes through float32.
        vectors = vectors.float()
        if self.normalize:
            import torch

            vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return np.ascontiguousarray(vectors.cpu().numpy(), dtype=np.float32)

    def _progress(self, n: int) -> bool:
        if self.show_progress is not None:
            return self.show_progress
        return n > PROGRESS_THRESHOLD and sys.stderr.isatty()

    def __repr__(self) -> str:
        return f"SentenceEncoder(model={self.model!r}, batch_size={self.batch_size}, normalize={self.normalize})"
