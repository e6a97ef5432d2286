"""The llama.cpp engine: the packs' GGUF files run as shipped (no conversion) through llama-cpp-python.

We drive llama.cpp through llama-cpp-python's low-level batch API (``llama_decode`` on our own
``llama_batch``) rather than its ``Llama.eval``/``generate``: speculative verification needs logits at
chosen positions only (``eval`` keeps none unless ``logits_all``, and then converts the whole score matrix
to Python on each call), KV rollback to any length (``llama_memory_seq_rm``), and one context shared by
several sessions. The high-level ``Llama`` object is used only to load the model and create the context.

Sessions are views of the engine's one context: a session is its token list, and before it runs, the
context is brought to hold exactly those tokens by keeping the longest common prefix of what it holds and
reading the rest (the same prefix reuse transformers sessions get by copying a cache). Copying a session
is therefore free, and alternating sessions costs only the tokens in which they differ.

Tokens come from the model's Hugging Face tokenizer (the pack's converted folder, or the GGUF's own
tokenizer through transformers), so both engines read identical token ids for the same prompt.
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path
from typing import Any, Sequence

from rag.errors import InputError, SpecragError
from rag.generation.engine import (
    SINK_TOKENS,
    Engine,
    Session,
    check_stream,
    common_prefix,
    eos_ids,
    score_window,
    surprisal,
)
from rag.lazy import require
from rag.shared import shared_model

# Logical and physical batch: tokens per llama_decode call. 512 is llama.cpp's own default.
BATCH_TOKENS = 512
# Context length: enough for a long RAG prompt plus its answer; capped by the model's training length.
MAX_CONTEXT = 8192


class EngineError(SpecragError):
    """The engine failed on input that was valid (for example a full context)."""


def gguf_file(model: str) -> Path:
    """The GGUF file behind ``model``: a pack shipped as GGUF, or a path to a ``.gguf`` file."""
    from rag.models import PACKS, fetch, gguf_path, pack_status

    if model in PACKS:
        if PACKS[model].kind == "folder":
            raise InputError(f"engine 'llama.cpp': model pack {model!r} is not a GGUF pack "
                             f"(GGUF packs: {', '.join(n for n, s in PACKS.items() if s.kind != 'folder')})")
        if pack_status(model).state not in ("verified", "converted"):
            fetch([model])
        return gguf_path(model)
    path = Path(model)
    if path.suffix == ".gguf" and path.is_file():
        return path
    raise InputError(f"engine 'llama.cpp' reads GGUF files: {model!r} is neither a GGUF model pack nor a .gguf "
                     "file; use engine='transformers' for Hugging Face checkpoints")


def _hf_tokenizer(model: str, gguf: Path) -> tuple[Any, Any]:
    """The HF tokenizer of ``model`` and its generation config's eos ids (None if there is none)."""
    transformers = require("transformers", "generate")
    from rag.models import PACKS, resolve_model

    if model in PACKS:
        folder = resolve_model(model)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        try:
            generation_eos = transformers.GenerationConfig.from_pretrained(folder).eos_token_id
        except OSError:
            generation_eos = None
        return tokenizer, generation_eos
    return transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name), None


def _free_llama(llama_cpp: Any, batch: Any, llama: Any) -> None:
    """Free the batch buffer and the model of a LlamaCppEngine (its finalizer)."""
    llama_cpp.llama_batch_free(batch)
    llama.close()


class LlamaCppEngine(Engine):
    """A GGUF model in one llama.cpp context. Use :func:`load_llama`, which shares one per model."""

    name = "llama.cpp"

    def __init__(self, spec: str, gguf: Path, tokenizer: Any, generation_eos: Any = None,
                 threads: int | None = None, n_ctx: int = MAX_CONTEXT) -> None:
        import numpy as np

        self._np = np
        llama_cpp = require("llama_cpp", "llama", package="llama-cpp-python")
        self._ll = llama_cpp
        self.spec, self.gguf, self.tokenizer = spec, gguf, tokenizer
        self.eos_token_ids = eos_ids(tokenizer, generation_eos)
        self.threads = threads or _torch_threads()
        self._llama = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=BATCH_TOKENS, n_ubatch=BATCH_TOKENS,
                                      n_threads=self.threads, n_threads_batch=self.threads, logits_all=False,
                                      verbose=False)
        self.n_ctx = llama_cpp.llama_n_ctx(self._llama.ctx)
        self.n_vocab = self._llama.n_vocab()
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self._llama.model)
        self._memory = llama_cpp.llama_get_memory(self._llama.ctx)
        self._batch = llama_cpp.llama_batch_init(BATCH_TOKENS, 0, 1)
        self._held: list[int] = []  # the tokens the context's sequence 0 holds now
        self._lock = threading.RLock()
        # A finalizer rather than __del__: it also runs at interpreter exit, before module teardown, when
        # llama_cpp's functions still exist (__del__ then found them None and printed tracebacks).
        weakref.finalize(self, _free_llama, llama_cpp, self._batch, self._llama)

    def new_session(self) -> "LlamaCppSession":
        return LlamaCppSession(self)

    def next_token_logits(self, sequences: Sequence[Sequence[int]]) -> Any:
        import torch

        if not sequences or any(len(s) == 0 for s in sequences):
            raise InputError("next_token_logits: every sequence needs at least one token")
        rows = []
        with self._lock:
            for ids in sequences:  # one after another in sequence 0, each reusing its common prefix
                rows.append(self.run(ids, [], last_only=True)[-1])
        return torch.from_numpy(self._np.stack(rows))

    def token_nll(self, sequences: Sequence[Sequence[int]], first: Sequence[int]) -> list[Any]:
        import torch

        if len(first) != len(sequences):
            raise InputError(f"token_nll: {len(sequences)} sequences but {len(first)} first positions")
        out = []
        with self._lock:
            for ids, start in zip(sequences, first):  # one after another, each reusing its common prefix
                ids = list(ids)
                values = self._np.full(len(ids), self._np.nan)
                # Logits at positions p - 1 score tokens p; a block at a time bounds the [tokens, vocabulary]
                # logits held at once.
                for begin in range(max(start, 1), len(ids), BATCH_TOKENS):
                    end = min(begin + BATCH_TOKENS, len(ids))
                    logits = self.run(ids[:begin - 1], ids[begin - 1:end - 1], last_only=False)
                    values[begin:end] = surprisal(torch.from_numpy(logits), torch.tensor(ids[begin:end])).numpy()
                out.append(values)
        return out

    def stream_nll(self, ids: Sequence[int], window_tokens: int, context_tokens: int,
                   sink_tokens: int = SINK_TOKENS) -> Any:
        import torch

        check_stream(window_tokens, context_tokens, sink_tokens)
        ids = list(ids)
        nll = self._np.full(len(ids), self._np.nan)
        if not ids:
            return nll
        # The same limits as the transformers engine's, from the trained length; the context's cells bound
        # what the cache can hold at once.
        max_positions = self.n_ctx_train
        window_tokens = min(window_tokens, max(min(max_positions, self.n_ctx) // 2, 1))
        context_tokens = min(context_tokens, max(min(max_positions, self.n_ctx) // 2 - sink_tokens, 0))
        with self._lock:
            # The stream uses the context on its own: positions with gaps (the trimmed middle) are no token
            # list a session could share, so the context is emptied before and after.
            self._clear()
            try:
                position, last_logits = 0, None
                for begin in range(0, len(ids), window_tokens):
                    window = ids[begin:begin + window_tokens]
                    if position + len(window) > max_positions:
                        self._clear()
                        context = ids[max(begin - context_tokens, 0):begin] if context_tokens else []
                        if context:
                            self._decode(context, 0, len(context))
                        position = len(context)
                    logits = torch.from_numpy(self._decode(window, position, 0))
                    position += len(window)
                    last_logits = score_window(nll, begin, window, logits, last_logits)
                    # Keep the first ``sink_tokens`` positions and the last ``context_tokens``.
                    if position - context_tokens > sink_tokens and not self._ll.llama_memory_seq_rm(
                            self._memory, 0, sink_tokens, position - context_tokens):
                        raise EngineError(f"llama.cpp: the cache of {self.spec} cannot drop positions from its "
                                          "middle (a recurrent or sliding-window model); stream_nll needs that")
            finally:
                self._clear()
        return nll

    def _clear(self) -> None:
        self._ll.llama_memory_clear(self._memory, True)
        del self._held[:]

    def retain(self, tokens: Sequence[int]) -> None:
        with self._lock:
            self._cut(common_prefix(self._held, list(tokens)))

    def _cut(self, length: int) -> int:
        """Drop the context's tokens from ``length`` on; the length it holds afterwards."""
        if length < len(self._held):
            if not self._ll.llama_memory_seq_rm(self._memory, 0, length, -1):
                self._ll.llama_memory_clear(self._memory, True)  # a cache that cannot be cut is re-read
                length = 0
            del self._held[length:]
        return length

    def run(self, history: Sequence[int], new: Sequence[int], last_only: bool) -> Any:
        """Bring the context to ``history`` and read ``new`` after it: numpy logits ``[n, vocab]`` at the new
        positions (or at the last position only). ``new`` may be empty: then ``history`` ends at the logits."""
        tokens = list(history) + list(new)
        wanted = 1 if last_only or not new else len(new)
        with self._lock:
            # Positions whose logits are wanted are always run, even when the context already holds them.
            common = self._cut(min(common_prefix(self._held, tokens), len(tokens) - wanted))
            pending = tokens[common:]
            if len(tokens) > self.n_ctx:
                raise EngineError(f"llama.cpp: {len(tokens)} tokens do not fit the context of {self.n_ctx} "
                                  f"({self.spec})")
            logits = self._decode(pending, common, len(pending) - wanted)
            self._held.extend(pending)
        return logits

    def _decode(self, pending: list[int], start: int, first_output: int) -> Any:
        """``llama_decode`` over ``pending`` (positions from ``start``) in batches; logits from index
        ``first_output`` of ``pending`` on (None when that is past its end)."""
        np, ll, batch = self._np, self._ll, self._batch
        rows = []
        for begin in range(0, len(pending), BATCH_TOKENS):
            chunk = pending[begin:begin + BATCH_TOKENS]
            outputs = 0
            for j, token in enumerate(chunk):
                batch.token[j] = token
                batch.pos[j] = start + begin + j
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = 0
                wanted = begin + j >= first_output
                batch.logits[j] = wanted
                outputs += wanted
            batch.n_tokens = len(chunk)
            code = ll.llama_decode(self._llama.ctx, batch)
            if code != 0:
                self._ll.llama_memory_seq_rm(self._memory, 0, start, -1)
                del self._held[start:]
                raise EngineError(f"llama.cpp: llama_decode returned {code} at position {start + begin} ({self.spec})")
            if outputs:
                rows.append(np.ctypeslib.as_array(ll.llama_get_logits(self._llama.ctx),
                                                  shape=(outputs, self.n_vocab)).copy())
        if not rows:
            return None
        return np.concatenate(rows) if len(rows) > 1 else rows[0]


class LlamaCppSession(Session):
    """A token sequence on a :class:`LlamaCppEngine`'s context (see the module docstring)."""

    def __init__(self, engine: LlamaCppEngine, tokens: list[int] | None = None) -> None:
        self.engine = engine
        self.tokens = list(tokens or [])
        self.passes = 0

    def feed_all(self, token_ids: Sequence[int], last_only: bool = False) -> Any:
        import torch

        if not token_ids:
            raise InputError("Session.feed: no tokens to feed")
        logits = self.engine.run(self.tokens, token_ids, last_only)
        self.tokens.extend(int(t) for t in token_ids)
        self.passes += 1
        return torch.from_numpy(logits)

    def crop(self, length: int) -> None:
        self._check_crop(length)
        del self.tokens[length:]  # the context is cut lazily, on the next run

    def copy(self) -> "LlamaCppSession":
        return LlamaCppSession(self.engine, self.tokens)


def _torch_threads() -> int:
    try:
        import torch

        return max(1, torch.get_num_threads())
    except ImportError:
        return max(1, min(os.cpu_count() or 1, 8))


def load_llama(model: str, threads: int | None = None) -> LlamaCppEngine:
    """Load (once per process and thread count) ``model``'s GGUF file into a llama.cpp context."""
    threads = threads or _torch_threads()

    def load() -> LlamaCppEngine:
        gguf = gguf_file(model)
        tokenizer, generation_eos = _hf_tokenizer(model, gguf)
        return LlamaCppEngine(model, gguf, tokenizer, generation_eos, threads=threads)

    return shared_model(("llama.cpp", model, threads), load)
