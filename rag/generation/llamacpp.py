"""The llama.cpp engine: the packs' GGUF files run as shipped (no conversion) through llama-cpp-python.

We drive llama.cpp through llama-cpp-python's low-level batch API (``llama_decode`` on our own
``llama_batch``) rather than its ``Llama.eval``/``generate``: speculative verification needs logits at
chosen positions only (``eval`` keeps none unless ``logits_all``, and then converts the whole score matrix
to Python on each call), KV rollback to any length (``llama_memory_seq_rm``), several sequences in one
context and tokens that belong to several sequences at once (a draft tree). The high-level ``Llama`` object
only loads the model; the context is our own, with several sequences over one unified KV cache (``Llama``
offers one sequence unless it embeds).

Sessions are views of the engine's context. The context has :data:`SLOTS` sequences ("slots"), each holding
one token list; a session runs in the slot it last used while no other session has taken it (else in the
least recently used one), and before it runs, its slot is brought to hold exactly its tokens: the longest
common prefix with what any slot holds is kept (copied between sequences, which in a unified cache only
marks the cells as shared) and the rest is read. Copying a session is therefore free, alternating sessions
(context-aware decoding's prompt with and without passages) costs nothing, and a prefix read once (the
system prompt) is shared by every session that starts with it.

A tree of draft tokens is verified in one ``llama_decode``: each leaf gets a sequence (the session's slot
for the first, scratch sequences for the others, each first sharing the slot's cells), and each node is
placed in the sequences of the leaves below it at the position its depth gives, so llama.cpp's own
per-sequence causal mask is exactly the tree's attention mask. Keeping the accepted path copies that
branch's cells into the slot and frees the scratch sequences.

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
    check_path,
    check_stream,
    common_prefix,
    eos_ids,
    score_window,
    surprisal,
    tree_depths,
)
from rag.lazy import require
from rag.shared import shared_model

# Logical and physical batch: tokens per llama_decode call. 512 is llama.cpp's own default.
BATCH_TOKENS = 512
# Context length: enough for a long RAG prompt plus its answer; capped by the model's training length. The
# cache is unified: every sequence draws its cells from these, a prefix shared by sequences counts once.
MAX_CONTEXT = 8192
# Sequences that hold sessions' tokens: context-aware decoding's two prompts, a cached system prompt that
# questions copy, and the scoring calls each keep one (least recently used goes first).
SLOTS = 4
# Scratch sequences for the leaves of draft trees beyond each tree's first (two trees may be pending at once:
# context-aware decoding feeds its tree to both sessions before keeping a path).
TREE_SEQUENCES = 64


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


def _free_llama(llama_cpp: Any, batch: Any, context: Any, llama: Any) -> None:
    """Free the batch buffer, the context and the model of a LlamaCppEngine (its finalizer)."""
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(context)
    llama.close()


class LlamaCppEngine(Engine):
    """A GGUF model in one llama.cpp context of several sequences. Use :func:`load_llama`, which shares one
    per model."""

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
        # ``Llama`` loads the model (and logs, and initialises the backend once); its own context is kept
        # minimal and unused, since it can hold only one sequence.
        self._llama = llama_cpp.Llama(model_path=str(gguf), n_ctx=64, n_batch=64, n_ubatch=64, n_threads=1,
                                      logits_all=False, verbose=False)
        params = llama_cpp.llama_context_params.from_buffer_copy(self._llama.context_params)
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, BATCH_TOKENS, BATCH_TOKENS
        params.n_threads = params.n_threads_batch = self.threads
        params.n_seq_max, params.kv_unified = SLOTS + TREE_SEQUENCES, True
        self._ctx = llama_cpp.llama_init_from_model(self._llama.model, params)
        if not self._ctx:
            self._llama.close()
            raise EngineError(f"llama.cpp: could not create a context of {n_ctx} tokens for {spec}")
        self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        self.n_vocab = self._llama.n_vocab()
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self._llama.model)
        # A recurrent state cannot be cut at a position nor shared by two branches.
        self.supports_tree = not (llama_cpp.llama_model_is_recurrent(self._llama.model)
                                  or llama_cpp.llama_model_is_hybrid(self._llama.model))
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(BATCH_TOKENS, 0, TREE_SEQUENCES + 1)
        self._held: list[list[int]] = [[] for _ in range(SLOTS)]  # the tokens each slot holds now
        self._owner: list[object | None] = [None] * SLOTS  # the session (key) each slot belongs to
        self._used = [0] * SLOTS  # when each slot last ran (a counter), for least-recently-used choice
        self._clock = 0
        self.tokens_read = 0  # tokens run through llama_decode since loading (prompts, drafts, trees)
        self._scratch = list(range(SLOTS + TREE_SEQUENCES - 1, SLOTS - 1, -1))  # free tree sequences
        self._scoring = object()  # the owner of the slot that scoring calls run in
        self._tree_slots: set[int] = set()  # slots with a tree fed and no path kept yet: never evicted
        self._lock = threading.RLock()
        # A finalizer rather than __del__: it also runs at interpreter exit, before module teardown, when
        # llama_cpp's functions still exist (__del__ then found them None and printed tracebacks).
        weakref.finalize(self, _free_llama, llama_cpp, self._batch, self._ctx, self._llama)

    def new_session(self) -> "LlamaCppSession":
        return LlamaCppSession(self)

    def next_token_logits(self, sequences: Sequence[Sequence[int]]) -> Any:
        import torch

        if not sequences or any(len(s) == 0 for s in sequences):
            raise InputError("next_token_logits: every sequence needs at least one token")
        rows = []
        with self._lock:
            for ids in sequences:  # one after another in one slot, each reusing its common prefix
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
            # The stream uses the context on its own (in sequence 0): positions with gaps (the trimmed
            # middle) are no token list a session could share, so the context is emptied before and after.
            self._clear()
            try:
                position, last_logits = 0, None
                for begin in range(0, len(ids), window_tokens):
                    window = ids[begin:begin + window_tokens]
                    if position + len(window) > max_positions:
                        self._clear()
                        context = ids[max(begin - context_tokens, 0):begin] if context_tokens else []
                        if context:
                            self._decode(0, context, 0, len(context))
                        position = len(context)
                    logits = torch.from_numpy(self._decode(0, window, position, 0))
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
        """Empty the whole context (every slot; pending trees' scratch sequences are left to their sessions)."""
        for slot in range(SLOTS):
            self._ll.llama_memory_seq_rm(self._memory, slot, -1, -1)
            self._held[slot] = []

    def retain(self, tokens: Sequence[int]) -> None:
        with self._lock:
            for slot in range(SLOTS):
                self._cut(slot, common_prefix(self._held[slot], list(tokens)))

    def _cut(self, slot: int, length: int) -> int:
        """Drop the slot's tokens from ``length`` on; the length it holds afterwards."""
        if length < len(self._held[slot]):
            if not self._ll.llama_memory_seq_rm(self._memory, slot, length, -1):
                self._ll.llama_memory_seq_rm(self._memory, slot, -1, -1)  # a cache that cannot be cut is re-read
                length = 0
            del self._held[slot][length:]
        return length

    def _slot_for(self, owner: object, slot: int | None) -> int:
        """The slot ``owner`` runs in: ``slot`` while it is still the owner's, else the least recently used."""
        if slot is None or self._owner[slot] is not owner:
            free = [s for s in range(SLOTS) if s not in self._tree_slots] or list(range(SLOTS))
            slot = min(free, key=self._used.__getitem__)
            self._owner[slot] = owner
        self._clock += 1
        self._used[slot] = self._clock
        return slot

    def _hold(self, slot: int, tokens: list[int], limit: int) -> int:
        """Bring ``slot`` to hold a prefix of ``tokens`` of at most ``limit`` tokens, as long as some slot's
        cached tokens allow (copied from that slot, whose cells the two then share); its length."""
        own = common_prefix(self._held[slot], tokens)
        if own < limit and self.supports_tree:  # another slot may hold more (a recurrent state cannot be shared)
            best, source = own, slot
            for other in range(SLOTS):
                if other != slot and len(self._held[other]) > best:
                    length = common_prefix(self._held[other], tokens)
                    if length > best:
                        best, source = length, other
            best = min(best, limit)
            if source != slot and best > own:
                self._ll.llama_memory_seq_rm(self._memory, slot, -1, -1)
                self._ll.llama_memory_seq_cp(self._memory, source, slot, 0, best)
                self._held[slot] = self._held[source][:best]
                return best
        return self._cut(slot, min(own, limit))

    def run(self, history: Sequence[int], new: Sequence[int], last_only: bool,
            session: "LlamaCppSession | None" = None) -> Any:
        """Bring a slot (``session``'s, or the scoring calls') to ``history`` and read ``new`` after it: numpy
        logits ``[n, vocab]`` at the new positions (or at the last position only). ``new`` may be empty: then
        ``history`` ends at the logits."""
        tokens = list(history) + list(new)
        wanted = 1 if last_only or not new else len(new)
        if len(tokens) > self.n_ctx:
            raise EngineError(f"llama.cpp: {len(tokens)} tokens do not fit the context of {self.n_ctx} ({self.spec})")
        with self._lock:
            if session is None:
                slot = self._slot_for(self._scoring, None if self._owner.count(self._scoring) == 0
                                      else self._owner.index(self._scoring))
            else:
                slot = session.slot = self._slot_for(session, session.slot)
            # Positions whose logits are wanted are always run, even when the context already holds them.
            common = self._hold(slot, tokens, len(tokens) - wanted)
            pending = tokens[common:]
            logits = self._decode(slot, pending, common, len(pending) - wanted)
            self._held[slot].extend(pending)
        return logits

    def _fill(self, j: int, token: int, position: int, sequences: Sequence[int], wanted: bool) -> None:
        batch = self._batch
        batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.logits[j] = token, position, len(sequences), wanted
        for k, sequence in enumerate(sequences):
            batch.seq_id[j][k] = sequence

    def _run_batch(self, n_tokens: int, outputs: int, keep: int) -> Any:
        """``llama_decode`` on the first ``n_tokens`` of the batch; the ``outputs`` logits rows (or None). A
        full cache is made room in by dropping every slot's tokens but those of slot ``keep`` and retried."""
        ll = self._ll
        self._batch.n_tokens = n_tokens
        self.tokens_read += n_tokens
        code = ll.llama_decode(self._ctx, self._batch)
        others = [s for s in range(SLOTS) if s != keep and s not in self._tree_slots and self._held[s]]
        if code == 1 and others:  # no free cells: evict the other slots and retry
            for slot in others:
                ll.llama_memory_seq_rm(self._memory, slot, -1, -1)
                self._held[slot] = []
            code = ll.llama_decode(self._ctx, self._batch)
        if code != 0:
            raise EngineError(f"llama.cpp: llama_decode returned {code} ({self.spec})")
        if not outputs:
            return None
        return self._np.ctypeslib.as_array(ll.llama_get_logits(self._ctx), shape=(outputs, self.n_vocab)).copy()

    def _decode(self, slot: int, pending: list[int], start: int, first_output: int) -> Any:
        """``llama_decode`` over ``pending`` in sequence ``slot`` (positions from ``start``) in batches; logits
        from index ``first_output`` of ``pending`` on (None when that is past its end)."""
        np = self._np
        rows = []
        for begin in range(0, len(pending), BATCH_TOKENS):
            chunk = pending[begin:begin + BATCH_TOKENS]
            outputs = 0
            for j, token in enumerate(chunk):
                wanted = begin + j >= first_output
                self._fill(j, token, start + begin + j, (slot,), wanted)
                outputs += wanted
            try:
                logits = self._run_batch(len(chunk), outputs, slot)
            except EngineError as error:
                self._ll.llama_memory_seq_rm(self._memory, slot, start, -1)
                del self._held[slot][start:]
                raise EngineError(f"{error} at position {start + begin}") from None
            if logits is not None:
                rows.append(logits)
        if not rows:
            return None
        return np.concatenate(rows) if len(rows) > 1 else rows[0]

    def run_tree(self, session: "LlamaCppSession", token_ids: list[int], parents: list[int]) -> tuple[Any, "PendingTree"]:
        """Read a draft tree after ``session``'s tokens in one ``llama_decode`` (see the module docstring):
        logits at every node, and the tree's bookkeeping for :meth:`keep_tree_path`."""
        depths = tree_depths(parents)
        if not token_ids or len(parents) != len(token_ids):
            raise InputError(f"feed_tree: {len(token_ids)} tokens with {len(parents)} parents")
        if len(token_ids) > BATCH_TOKENS:
            raise InputError(f"feed_tree: {len(token_ids)} nodes; llama.cpp reads at most {BATCH_TOKENS} in one pass")
        has_child = set(parents)
        leaves = [i for i in range(len(token_ids)) if i not in has_child]
        with self._lock:
            if len(leaves) - 1 > len(self._scratch):
                raise InputError(f"feed_tree: {len(leaves)} leaves; {len(self._scratch) + 1} sequences are free")
            history = list(session.tokens)
            base = len(history)
            if base + max(depths) + 1 > self.n_ctx:
                raise EngineError(f"llama.cpp: the tree does not fit the context of {self.n_ctx} ({self.spec})")
            slot = session.slot = self._slot_for(session, session.slot)
            common = self._hold(slot, history, base)
            self._decode(slot, history[common:], common, base)
            self._held[slot] = history
            scratch = [self._scratch.pop() for _ in leaves[1:]]
            sequences = [slot, *scratch]
            for sequence in scratch:  # each leaf's sequence sees the session's tokens (shared cells)
                self._ll.llama_memory_seq_cp(self._memory, slot, sequence, -1, -1)
            node_sequences: list[list[int]] = [[] for _ in token_ids]
            for sequence, leaf in zip(sequences, leaves):
                node = leaf
                while node >= 0:
                    node_sequences[node].append(sequence)
                    node = parents[node]
            for j, token in enumerate(token_ids):
                self._fill(j, token, base + depths[j], node_sequences[j], True)
            tree = PendingTree(slot, base, list(parents), leaves, sequences)
            self._tree_slots.add(slot)
            try:
                logits = self._run_batch(len(token_ids), len(token_ids), slot)
            except EngineError:
                self.drop_tree(tree)
                raise
            node, first_branch = leaves[0], []  # the slot now holds the first leaf's branch
            while node >= 0:
                first_branch.append(token_ids[node])
                node = parents[node]
            self._held[slot] = history + first_branch[::-1]
        return logits, tree

    def keep_tree_path(self, tree: "PendingTree", nodes: Sequence[int], tokens: list[int]) -> None:
        """Make the tree's slot hold its tokens before the tree and then ``nodes`` (a root path, whose tokens
        are ``tokens``); free the tree's scratch sequences."""
        ll, memory, slot, base = self._ll, self._memory, tree.slot, tree.base
        with self._lock:
            leaf = next((i for i, leaf in enumerate(tree.leaves) if nodes and _under(tree.parents, leaf, nodes[-1])), 0)
            source = tree.sequences[leaf]
            if source != slot:  # the path lies on another leaf's branch: its cells become the slot's
                ll.llama_memory_seq_rm(memory, slot, base, -1)
                ll.llama_memory_seq_cp(memory, source, slot, base, base + len(nodes))
            else:
                ll.llama_memory_seq_rm(memory, slot, base + len(nodes), -1)
            self._held[slot] = self._held[slot][:base] + list(tokens)
            self.drop_tree(tree, keep_slot=True)

    def drop_tree(self, tree: "PendingTree", keep_slot: bool = False) -> None:
        """Free a tree's scratch sequences; unless ``keep_slot``, also drop the tree from its slot."""
        with self._lock:
            for sequence in tree.sequences[1:]:
                self._ll.llama_memory_seq_rm(self._memory, sequence, -1, -1)
                self._scratch.append(sequence)
            tree.sequences = tree.sequences[:1]
            self._tree_slots.discard(tree.slot)
            if not keep_slot:
                self._ll.llama_memory_seq_rm(self._memory, tree.slot, tree.base, -1)
                del self._held[tree.slot][tree.base:]


def _under(parents: Sequence[int], node: int, ancestor: int) -> bool:
    """Whether ``ancestor`` is ``node`` or one of its ancestors in the tree ``parents``."""
    while node > ancestor:
        node = parents[node]
    return node == ancestor


class PendingTree:
    """A tree fed by :meth:`LlamaCppEngine.run_tree` and not yet reduced to a path: the slot it was read in,
    the number of tokens before it, its parents, its leaves and each leaf's sequence (the slot's first)."""

    def __init__(self, slot: int, base: int, parents: list[int], leaves: list[int], sequences: list[int]) -> None:
        self.slot, self.base, self.parents, self.leaves, self.sequences = slot, base, parents, leaves, sequences


class LlamaCppSession(Session):
    """A token sequence on a :class:`LlamaCppEngine`'s context (see the module docstring)."""

    def __init__(self, engine: LlamaCppEngine, tokens: list[int] | None = None) -> None:
        self.engine = engine
        self.tokens = list(tokens or [])
        self.passes = 0
        self.slot: int | None = None  # the slot this session ran in last (it may have been taken since)
        self._tree: PendingTree | None = None

    @property
    def supports_tree(self) -> bool:  # type: ignore[override]
        return self.engine.supports_tree

    def feed_all(self, token_ids: Sequence[int], last_only: bool = False) -> Any:
        import torch

        if not token_ids:
            raise InputError("Session.feed: no tokens to feed")
        self._abandon_tree()
        logits = self.engine.run(self.tokens, token_ids, last_only, session=self)
        self.tokens.extend(int(t) for t in token_ids)
        self.passes += 1
        return torch.from_numpy(logits)

    def feed_tree(self, token_ids: Sequence[int], parents: Sequence[int]) -> Any:
        import torch

        if not self.supports_tree:
            raise NotImplementedError(f"{self.engine.spec} on llama.cpp cannot verify a tree (a recurrent model)")
        self._abandon_tree()
        token_ids = [int(t) for t in token_ids]
        logits, self._tree = self.engine.run_tree(self, token_ids, list(parents))
        self.tokens.extend(token_ids)
        self.passes += 1
        return torch.from_numpy(logits)

    def keep_path(self, nodes: Sequence[int]) -> None:
        if self._tree is None:
            raise InputError("keep_path: no tree was fed since the last crop")
        check_path(nodes, self._tree.parents)
        tree, self._tree = self._tree, None
        kept = [self.tokens[tree.base + node] for node in nodes]
        if self.engine._owner[tree.slot] is self:
            self.engine.keep_tree_path(tree, nodes, kept)
        else:  # another session took the slot meanwhile: the next run reads what the slot lost
            self.engine.drop_tree(tree, keep_slot=True)
        self.tokens = self.tokens[:tree.base] + kept

    def _abandon_tree(self) -> None:
        if self._tree is not None:
            tree, self._tree = self._tree, None
            self.engine.drop_tree(tree, keep_slot=True)  # the slot's tokens are its held list: cut lazily
            del self.tokens[tree.base:]

    def crop(self, length: int) -> None:
        self._check_crop(length)
        if self._tree is not None:
            tree, self._tree = self._tree, None
            self.engine.drop_tree(tree, keep_slot=True)
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
