"""The engine layer: one small protocol over the libraries that run a causal LM.

Everything in specrag that runs a causal LM (the grounded generator and its speculative loop, the draft
model, LLM rerankers, LM-based chunkers and pruners) talks to an :class:`Engine`: it tokenizes and renders
chats (always with the model's Hugging Face tokenizer, so every engine reads the same token ids), opens
:class:`Session` objects that hold a KV cache over one token sequence, and scores text. A session feeds
tokens and returns logits at the positions asked for, crops its cache to a length (speculative rollback)
and copies itself (a cached system-prompt prefix reused for each question); where the engine can, it also
feeds a tree of draft tokens in one pass and keeps the accepted branch (``supports_tree``: transformers,
with a tree attention mask; llama.cpp, with a sequence per leaf). Scoring: next-token logits
after a batch of prompts (rerankers, the margin chunker), each token's surprisal in a batch of rows (the
surprisal pruner) and in one long stream read with a bounded cache (the perplexity chunker).

Engines, by name (:func:`load_engine`):

- ``transformers`` / ``transformers:float32`` and ``transformers:bfloat16``: any HF checkpoint (pack, path
  or hub id) through transformers, in the dtype named (:mod:`rag.generation.hf`);
- ``llama.cpp``: the pack's GGUF file (or a ``.gguf`` path) through llama-cpp-python's low-level batch API
  (:mod:`rag.generation.llamacpp`);
- ``auto`` (the default of the generator and the LLM rerankers): the engine a short measurement on this
  machine found fastest for a typical RAG answer, cached per machine and model
  (:mod:`rag.generation.calibrate`). The chunkers and the pruner default to ``transformers:float32``: what
  they produce is stored (chunk boundaries, kept words), so it must not depend on the machine.

The same model in two engines (or two dtypes) can choose a different token where two logits nearly tie:
losslessness of speculative decoding is always judged against the same engine's own plain greedy decoding.
"""

from __future__ import annotations

from typing import Any, Sequence

from rag.errors import InputError

# Positions at the start of a stream that a bounded cache always keeps (:meth:`Engine.stream_nll`): models
# put much attention mass on the first positions ("attention sinks", Xiao et al. 2023) and degrade when
# those keys are dropped.
SINK_TOKENS = 4

# Engine names a user can give; ``auto`` picks one of the others by measurement.
ENGINE_NAMES: tuple[str, ...] = ("auto", "transformers", "transformers:float32", "transformers:bfloat16", "llama.cpp")


def tree_depths(parents: Sequence[int]) -> list[int]:
    """Each node's depth (0 for a child of the root) in a tree given as parent indices; checks the tree."""
    depths: list[int] = []
    for i, parent in enumerate(parents):
        if not -1 <= parent < i:
            raise InputError(f"tree: node {i} has parent {parent}; a parent must be -1 or an earlier node")
        depths.append(0 if parent < 0 else depths[parent] + 1)
    return depths


def check_path(nodes: Sequence[int], parents: Sequence[int]) -> None:
    """That ``nodes`` is a path from the root down the tree ``parents`` (see :meth:`Session.keep_path`)."""
    previous = -1
    for node in nodes:
        if not 0 <= node < len(parents) or parents[node] != previous:
            raise InputError(f"keep_path: {list(nodes)} is not a path from the root of a tree of {len(parents)} nodes")
        previous = node


def canonical_engine(name: str) -> str:
    """The canonical spelling of an engine name (``transformers`` is ``transformers:float32``)."""
    name = (name or "").strip().lower()
    aliases = {"transformers": "transformers:float32", "hf": "transformers:float32", "llamacpp": "llama.cpp",
               "llama-cpp": "llama.cpp", "transformers:bf16": "transformers:bfloat16",
               "transformers:fp32": "transformers:float32"}
    name = aliases.get(name, name)
    if name not in ENGINE_NAMES:
        raise InputError(f"unknown engine {name!r}; known engines: {', '.join(ENGINE_NAMES)}")
    return name


class Session:
    """A KV cache over one token sequence of an engine. ``tokens`` always mirrors what the cache holds.

    Subclasses implement :meth:`feed_all`, :meth:`crop` and :meth:`copy`; the base supplies :meth:`feed`
    and :meth:`prefill`. Logits come back as torch tensors (``[positions, vocab]``).
    """

    engine: "Engine"
    tokens: list[int]
    passes: int = 0

    @property
    def length(self) -> int:
        return len(self.tokens)

    def feed_all(self, token_ids: Sequence[int], last_only: bool = False) -> Any:
        """Append ``token_ids`` in one forward pass; logits at every new position, or at the last only."""
        raise NotImplementedError

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on (KV-cache rollback)."""
        raise NotImplementedError

    def copy(self) -> "Session":
        """An independent session holding the same tokens."""
        raise NotImplementedError

    # Tree verification (optional): engines that can attend along a tree in one pass set ``supports_tree``.
    supports_tree: bool = False

    def feed_tree(self, token_ids: Sequence[int], parents: Sequence[int]) -> Any:
        """Append a tree of tokens in one forward pass; logits at every node (``[nodes, vocab]``).

        ``parents[i]`` is the index of node ``i``'s parent (smaller than ``i``), or -1 for a node that follows
        the session's last token; each node attends to the session's tokens and its own ancestors only, at
        the position its depth gives. Until :meth:`keep_path`, ``tokens`` lists the nodes in order (a tree,
        not a text), so call it before anything else.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot verify a tree in one pass")

    def keep_path(self, nodes: Sequence[int]) -> None:
        """After :meth:`feed_tree`: keep only ``nodes`` (a root-to-node path of the tree, in order) and drop
        the rest, so the session holds its earlier tokens followed by that path."""
        raise NotImplementedError(f"{type(self).__name__} cannot verify a tree in one pass")

    def feed(self, token_ids: Sequence[int]) -> Any:
        """Append ``token_ids`` and return the logits for the token after them (1-D tensor)."""
        return self.feed_all(token_ids, last_only=True)[-1]

    def prefill(self, token_ids: Sequence[int]) -> Any:
        """Make the session hold exactly ``token_ids``, reusing the longest cached common prefix; return
        the logits after the last token. At least one token is always run (the logits are not cached)."""
        token_ids = list(token_ids)
        if not token_ids:
            raise InputError("Session.prefill: no tokens to read")
        common = min(common_prefix(self.tokens, token_ids), len(token_ids) - 1)
        self.crop(common)
        return self.feed(token_ids[common:])

    def _check_crop(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise InputError(f"{type(self).__name__}.crop: length {length} outside 0..{self.length}")


class Engine:
    """A loaded causal LM behind one engine. Subclasses implement :meth:`new_session` and
    :meth:`next_token_logits`; tokenization and chat rendering are shared (the HF tokenizer).

    ``spec`` is the model as the user named it, ``name`` the canonical engine name, ``tokenizer`` the model's
    Hugging Face tokenizer and ``eos_token_ids`` the ids that end an answer.
    """

    name: str = ""
    spec: str
    tokenizer: Any
    eos_token_ids: frozenset[int]

    def new_session(self) -> Session:
        """An empty session (KV cache) on this engine."""
        raise NotImplementedError

    def next_token_logits(self, sequences: Sequence[Sequence[int]]) -> Any:
        """Float32 logits (``[len(sequences), vocab]``) of the token after each sequence (batched scoring,
        used by rerankers and chunkers). Sequences are independent: nothing is cached between calls."""
        raise NotImplementedError

    def token_nll(self, sequences: Sequence[Sequence[int]], first: Sequence[int]) -> list[Any]:
        """Surprisal of each token given the tokens before it in its own sequence, ``-log p`` in nats.

        One float64 numpy array per sequence, NaN before position ``first[i]`` (and always at position 0,
        which nothing predicts). Sequences are independent and may be scored in one padded batch (used by
        the surprisal pruner). Logits are computed only where a token is scored.
        """
        raise NotImplementedError

    def stream_nll(self, ids: Sequence[int], window_tokens: int, context_tokens: int,
                   sink_tokens: int = SINK_TOKENS) -> Any:
        """Surprisal (nats) of each token of one long token stream given the text before it; NaN at 0.

        The stream is read in windows of ``window_tokens``, one forward pass each; between windows the
        cache keeps the first ``sink_tokens`` positions and the last ``context_tokens`` (StreamingLLM's
        attention sinks), so each token sees at most that much preceding text and nothing is read twice.
        Positions keep counting (relative distances stay true); when they would pass the model's trained
        length, the cache is rebuilt from the last ``context_tokens`` tokens at fresh positions. Used by
        the perplexity chunker.
        """
        raise NotImplementedError

    def retain(self, tokens: Sequence[int]) -> None:
        """Keep cached state only for the longest common prefix with ``tokens``. Engines whose sessions share
        one context (llama.cpp) reuse whatever it holds, so a benchmark calls this to give every method the
        same start (the system prompt cached, the question not); engines with private sessions ignore it."""

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat rendered with the model's own template, ready for the assistant's turn."""
        if getattr(self.tokenizer, "chat_template", None):
            rendered = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:  # base models without a template: plain role-prefixed text
            rendered = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return self.tokenizer(rendered, add_special_tokens=False)["input_ids"]

    def describe(self) -> str:
        return f"{self.spec} on {self.name}"


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def eos_ids(tokenizer: Any, generation_eos: Any = None) -> frozenset[int]:
    """The end-of-sequence ids of a model: its tokenizer's, plus those of its generation config."""
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if isinstance(generation_eos, int):
        eos.add(generation_eos)
    elif generation_eos:
        eos.update(generation_eos)
    return frozenset(eos)


def load_engine(model: str, engine: str = "auto", *, quantize: str | None = None, workload: str = "answer") -> Engine:
    """The engine ``engine`` with ``model`` loaded (once per process; later calls share it).

    ``model`` is a pack name, a local path or a hub id; ``engine`` one of :data:`ENGINE_NAMES`. ``auto``
    resolves to the engine that :mod:`rag.generation.calibrate` measured fastest on this machine for this
    model (measuring once and caching the choice). ``quantize="int8"`` (transformers only) applies dynamic
    int8 quantisation: faster but lossy. ``workload`` tells ``auto`` what the engine is for: ``answer``
    (prompt reading plus speculative decoding, the generator's case) or ``prompt`` (reading only: rerankers).
    """
    name = canonical_engine(engine)
    if name == "auto":
        if quantize is not None:  # a quantised model is a transformers-only, explicitly lossy choice
            name = "transformers:float32"
        else:
            from rag.generation.calibrate import choose_engine

            name = choose_engine(model).engine_for(workload)
    if quantize is not None and not name.startswith("transformers"):
        raise InputError(f"engine {name!r}: quantize={quantize!r} applies to the transformers engine only")
    if name.startswith("transformers"):
        from rag.generation.hf import load_causal_lm

        return load_causal_lm(model, name.split(":", 1)[1], quantize)
    from rag.generation.llamacpp import load_llama

    return load_llama(model)


def surprisal(logits: Any, targets: Any) -> Any:
    """``-log softmax(logits)[target]`` per row (float32 torch tensors in, out): the logsumexp of a row minus
    its target's logit, without a vocabulary-wide log-softmax copy."""
    import torch

    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - logits.gather(1, targets[:, None]).squeeze(1)


def score_window(nll: Any, begin: int, window: Sequence[int], logits: Any, last_logits: Any) -> Any:
    """:meth:`Engine.stream_nll`'s bookkeeping, shared by the engines: write the surprisal of the window's
    tokens into ``nll`` from its logits (position k predicts token k + 1; the window's first token was
    predicted by the previous window's last logits); return the last logits for the next window."""
    import torch

    if last_logits is not None:
        logits_for, targets, first = torch.cat([last_logits.unsqueeze(0), logits[:-1]]), torch.tensor(list(window)), begin
    else:
        logits_for, targets, first = logits[:-1], torch.tensor(list(window[1:])), begin + 1
    if len(targets):
        nll[first:first + len(targets)] = surprisal(logits_for, targets).numpy()
    return logits[-1]


def check_stream(window_tokens: int, context_tokens: int, sink_tokens: int) -> None:
    """The arguments of :meth:`Engine.stream_nll`, checked the same way by every engine."""
    if window_tokens < 1 or context_tokens < 0 or sink_tokens < 0:
        raise InputError(f"stream_nll: window_tokens must be at least 1 and context_tokens, sink_tokens at "
                         f"least 0, got {window_tokens}, {context_tokens}, {sink_tokens}")


def engine_param(owner: str, engine: str, dtype: str | None = None) -> str:
    """A component's ``engine`` parameter, canonical, with the ``dtype`` parameter of earlier rounds (the
    chunkers' and the pruner's; deprecated, kept so that saved configs still load) mapped onto it."""
    if dtype is not None:
        import warnings

        warnings.warn(f"{owner}: dtype={dtype!r} is deprecated; use engine='transformers:{dtype}'",
                      DeprecationWarning, stacklevel=3)
        engine = f"transformers:{dtype}"
    return canonical_engine(engine)


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first position where two token sequences differ (or where one ends early); None if equal."""
    if list(a) == list(b):
        return None
    return common_prefix(a, b)
