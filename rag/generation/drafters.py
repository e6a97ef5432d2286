"""Drafters for speculative decoding: where the guessed continuation comes from.

A RAG answer copies phrases from its passages, so most drafts here are looked up rather than generated:

- :class:`PromptLookupDrafter`: the last ``n`` tokens (``n`` = 3, 2, 1) matched in the prompt (which
  holds the passages) and the answer so far; the tokens after the most recent match are the draft.
- :class:`SuffixAutomatonDrafter`: SAM-Decoding. A suffix automaton over prompt and answer, extended
  token by token, tracks the *longest* suffix of the text that occurred before, in amortised constant
  time per token; the draft is what followed its first occurrence.
- :class:`CorpusDrafter`: the same matching against a fixed automaton over every indexed chunk's tokens
  (a REST-style datastore, for answers that reuse corpus phrasing not in the retrieved passages).
- :class:`DraftModelDrafter`: a small model with the same tokenizer and its own KV cache, rolled back
  with the target's. It stops drafting when its own confidence drops (SVIP-style): a token the draft
  model itself doubts is likely to be rejected, and the width policy uses the confidences as acceptance
  estimates.
- :class:`RecyclingDrafter`: Token Recycling (Luo et al., 2024). The target's own candidates are kept:
  after every pass, each token fed gets the top ``k`` tokens the target predicted after it (an adjacency
  table, ``vocabulary x k`` int32, kept across answers), and the draft follows the top candidates from the
  last token. Model-free and cheap; it drafts the parts of an answer that are not copied from a passage.
- :class:`CombinedDrafter`: per step the model-free drafter with the longest match, falling back to the
  draft model (or to token recycling) when no match is long enough.

Every drafter has ``start(prompt_ids, temperature, generator)`` and ``propose(tokens, k) -> Draft``,
where ``tokens`` is the whole sequence so far (prompt and accepted output), which only grows. A drafter
that learns from the target's passes also has ``observe(fed, logits)``: the tokens of a pass and the
target's logits at each of them (the speculative loop calls it after every pass).
"""

from __future__ import annotations

from typing import Any

from rag.errors import InputError
from rag.generation.speculative import Draft


class PromptLookupDrafter:
    """n-gram prompt lookup over the prompt (passages included) and the answer so far.

        >>> d = PromptLookupDrafter(); d.start([5, 6, 7, 8, 9]); d.propose([5, 6, 7, 8, 9, 6, 7], 2).tokens
        [8, 9]
    """

    name = "ngram"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise InputError(f"prompt lookup: need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self._tokens: list[int] = []
        self._last: dict[tuple[int, ...], int] = {}  # n-gram -> end index of its latest occurrence with a successor

    def start(self, prompt_ids: list[int], temperature: float = 0.0, generator: Any = None) -> None:
        self._tokens, self._last = [], {}
        self._extend(prompt_ids)

    def _extend(self, new: list[int]) -> None:
        tokens = self._tokens
        for token in new:
            tokens.append(token)
            end = len(tokens) - 2  # n-grams ending here now have a successor
            for n in range(1, self.max_ngram + 1):
                if end - n + 1 < 0:
                    break
                self._last[tuple(tokens[end - n + 1: end + 1])] = end

    def propose(self, tokens: list[int], k: int) -> Draft:
        self._extend(tokens[len(self._tokens):])
        for n in range(min(self.max_ngram, len(tokens)), self.min_ngram - 1, -1):
            end = self._last.get(tuple(tokens[-n:]))
            if end is not None:
                return Draft(tokens=self._tokens[end + 1: end + 1 + k], source=self.name, match_length=n)
        return Draft(tokens=[], source=self.name)


class SuffixAutomaton:
    """A suffix automaton over a token sequence, built online (Blumer et al.; SAM-Decoding).

    State 0 is the root. ``first_end[s]`` is the end index of the first occurrence of the strings of
    state ``s``: the continuation of a match is ``text[first_end + 1:]``.
    """

    def __init__(self) -> None:
        self.next: list[dict[int, int]] = [{}]
        self.link: list[int] = [-1]
        self.length: list[int] = [0]
        self.first_end: list[int] = [-1]
        self.text: list[int] = []
        self.last = 0

    def extend(self, token: int) -> None:
        nxt, link, length, first_end = self.next, self.link, self.length, self.first_end
        self.text.append(token)
        cur = len(nxt)
        nxt.append({}), link.append(0), length.append(length[self.last] + 1), first_end.append(len(self.text) - 1)
        p = self.last
        while p != -1 and token not in nxt[p]:
            nxt[p][token] = cur
            p = link[p]
        if p != -1:
            q = nxt[p][token]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:
                clone = len(nxt)
                nxt.append(dict(nxt[q])), link.append(link[q]), length.append(length[p] + 1)
                first_end.append(first_end[q])
                while p != -1 and nxt[p].get(token) == q:
                    nxt[p][token] = clone
                    p = link[p]
                link[q] = link[cur] = clone
        self.last = cur


class _Matcher:
    """The longest suffix of a growing query that occurs in an automaton's text: (state, length)."""

    def __init__(self, automaton: SuffixAutomaton) -> None:
        self.sam, self.state, self.matched = automaton, 0, 0

    def step(self, token: int) -> None:
        sam = self.sam
        while self.state and token not in sam.next[self.state]:
            self.state = sam.link[self.state]
            self.matched = sam.length[self.state]
        if token in sam.next[self.state]:
            self.state = sam.next[self.state][token]
            self.matched += 1
        else:
            self.state, self.matched = 0, 0

    def settle(self) -> None:
        """After the automaton grew, move to the state that now holds the matched length (a clone may
        have split the old state: the shorter strings moved to its suffix link)."""
        sam = self.sam
        while self.state and sam.length[sam.link[self.state]] >= self.matched:
            self.state = sam.link[self.state]

    def continuation(self, k: int, stop_below: int = 0) -> list[int]:
        if not self.matched:
            return []
        start = self.sam.first_end[self.state] + 1
        out = self.sam.text[start: start + k]
        for i, token in enumerate(out):
            if token < stop_below:  # a document separator: the match does not continue past its document
                return out[:i]
        return out


class SuffixAutomatonDrafter:
    """SAM-Decoding over the prompt (passages included) and the text generated so far.

    Each new token first advances the match against the text before it, then extends the automaton:
    the match therefore always points at an earlier occurrence, whose continuation is the draft.
    """

    name = "sam"

    def __init__(self, min_match: int = 1) -> None:
        self.min_match = min_match
        self._sam = SuffixAutomaton()
        self._matcher = _Matcher(self._sam)

    def start(self, prompt_ids: list[int], temperature: float = 0.0, generator: Any = None) -> None:
        self._sam = SuffixAutomaton()
        self._matcher = _Matcher(self._sam)
        self._extend(prompt_ids)

    def _extend(self, new: list[int]) -> None:
        for token in new:
            self._matcher.step(token)
            self._sam.extend(token)
            self._matcher.settle()

    def propose(self, tokens: list[int], k: int) -> Draft:
        self._extend(tokens[len(self._sam.text):])
        if self._matcher.matched < self.min_match:
            return Draft(tokens=[], source=self.name, match_length=self._matcher.matched)
        return Draft(tokens=self._matcher.continuation(k), source=self.name, match_length=self._matcher.matched)


class CorpusDrafter:
    """REST-style datastore: a fixed suffix automaton over many token sequences (every indexed chunk);
    the answer so far is matched against it and the continuation of its longest suffix is the draft.

    Separators between sequences are negative ids, so no draft runs from one chunk into the next.
    """

    name = "corpus"

    def __init__(self, sequences: list[list[int]], min_match: int = 2) -> None:
        self.min_match = min_match
        self._sam = SuffixAutomaton()
        for number, sequence in enumerate(sequences):
            for token in sequence:
                self._sam.extend(int(token))
            self._sam.extend(-1 - number)
        self._matcher = _Matcher(self._sam)
        self._seen = 0

    def start(self, prompt_ids: list[int], temperature: float = 0.0, generator: Any = None) -> None:
        self._matcher = _Matcher(self._sam)
        self._seen = len(prompt_ids)  # only the answer is matched: the passages have their own drafters

    def propose(self, tokens: list[int], k: int) -> Draft:
        for token in tokens[self._seen:]:
            self._matcher.step(token)
        self._seen = len(tokens)
        if self._matcher.matched < self.min_match:
            return Draft(tokens=[], source=self.name, match_length=self._matcher.matched)
        return Draft(tokens=self._matcher.continuation(k, stop_below=0), source=self.name,
                     match_length=self._matcher.matched)


class DraftModelDrafter:
    """A smaller model with the target's tokenizer drafts token by token, with its own KV cache.

    Its cache follows the sequence: tokens it drafted that were rejected are cropped away on the next
    call (``Session.prefill`` keeps the longest common prefix). Drafting stops early when the top
    probability falls below ``min_confidence`` (SVIP-style).
    """

    name = "model"

    def __init__(self, lm: Any, min_confidence: float = 0.4, max_tokens: int = 7) -> None:
        self.lm, self.min_confidence, self.max_tokens = lm, min_confidence, max_tokens
        self._session: Any = None
        self._temperature, self._generator = 0.0, None

    def start(self, prompt_ids: list[int], temperature: float = 0.0, generator: Any = None) -> None:
        if self._session is None:
            self._session = self.lm.new_session()
        self._temperature, self._generator = temperature, generator
        self._logits = self._session.prefill(list(prompt_ids))  # the draft reads the prompt too

    def propose(self, tokens: list[int], k: int) -> Draft:
        import torch

        session = self._session
        if session.tokens != tokens:
            self._logits = session.prefill(list(tokens))
        logits = self._logits
        out: list[int] = []
        probs: list[Any] = []
        confidence: list[float] = []
        for i in range(min(k, self.max_tokens)):
            if self._temperature > 0:
                p = torch.softmax(logits.float() / self._temperature, dim=-1)
                token = int(torch.multinomial(p, 1, generator=self._generator))
                top = float(p.max())
            else:
                p = torch.softmax(logits.float(), dim=-1)
                token = int(torch.argmax(p))
                top = float(p[token])
            if i and top < self.min_confidence:
                break
            out.append(token)
            probs.append(p)
            confidence.append(top)
            if i + 1 < min(k, self.max_tokens):
                logits = session.feed([token])
        # the session now holds part of the draft; the next call crops what the target rejected
        return Draft(tokens=out, source=self.name, match_length=len(out), probs=probs if self._temperature > 0 else None,
                     confidence=confidence)


class RecycleTable:
    """Token Recycling's adjacency table: for each token id, the ``k`` tokens the target last ranked highest
    right after it, best first (-1: never seen). ``vocabulary x k`` int32 (151,936 x 8 is 4.9 MB), grown
    on first use to the width of the logits; one table serves many answers (the paper's hot start).

    It also counts how often the candidate of each rank turned out to be the target's next token (checked
    at every update for the first token fed, before its row is replaced): :meth:`rank_probs`, which orders
    and sizes tree drafts.
    """

    def __init__(self, k: int = 8) -> None:
        if k < 1:
            raise InputError(f"recycle table: k must be at least 1, got {k}")
        self.k = k
        self.table: Any = None
        self.rank_hits = [0] * k  # times the candidate of rank r was the target's next token
        self.lookups = 0  # rows checked that way

    def update(self, fed: list[int], logits: Any) -> None:
        """Row ``fed[i]`` becomes the top ``k`` of ``logits[i]`` (the target's prediction after that token)."""
        import numpy as np
        import torch

        if self.table is None or self.table.shape[0] < logits.shape[-1]:
            grown = np.full((logits.shape[-1], self.k), -1, dtype=np.int32)
            if self.table is not None:
                grown[: self.table.shape[0]] = self.table
            self.table = grown
        top = torch.topk(logits[: len(fed)], self.k, dim=-1).indices.numpy()
        rows = np.asarray(fed, dtype=np.int64)
        # Rank hits are counted at fed[0] only: the pending token, whose context is the accepted text;
        # later positions of a pass may follow rejected draft tokens.
        if self.table[rows[0], 0] >= 0:
            self.lookups += 1
            hit = np.nonzero(self.table[rows[0]] == top[0, 0])[0]
            if len(hit):
                self.rank_hits[int(hit[0])] += 1
        self.table[rows] = top

    def rank_probs(self) -> list[float]:
        """How often the candidate of each rank was the target's next token, with one pseudo-lookup spread
        evenly over the ranks and "none of them" (so an empty table gives ``1 / (k + 1)`` each)."""
        prior = 1.0 / (self.k + 1)
        return [(hits + prior) / (self.lookups + 1) for hits in self.rank_hits]

    def path(self, token: int, length: int) -> list[int]:
        """The chain of best candidates from ``token``: at most ``length`` tokens, stopping at an unseen one."""
        out: list[int] = []
        table = self.table
        while table is not None and len(out) < length and 0 <= token < len(table):
            token = int(table[token, 0])
            if token < 0:
                break
            out.append(token)
        return out

    def tree(self, token: int, size: int) -> tuple[list[int], list[int], list[float]]:
        """A draft tree of at most ``size`` nodes after ``token``: (tokens, parent indices with -1 for
        ``token``, each node's estimated chance of being accepted), best first.

        A node's estimate is its parent's times the hit rate of its rank (:meth:`rank_probs`); nodes are
        added best first (a dynamic tree in the manner of EAGLE-2 or Sequoia, from the table instead of a
        draft model), so every prefix of the node list is itself a tree.
        """
        import heapq
        import itertools

        tokens: list[int] = []
        parents: list[int] = []
        values: list[float] = []
        table = self.table
        if table is None or size < 1:
            return tokens, parents, values
        probs = self.rank_probs()
        frontier: list[tuple[float, int, int, int]] = []  # (-value, order, parent node, token)
        order = itertools.count()  # ties go to the candidate pushed first (the better rank, the older parent)

        def expand(node: int, after: int, value: float) -> None:
            if not 0 <= after < len(table):
                return
            for rank, candidate in enumerate(table[after]):
                if candidate < 0:
                    break
                heapq.heappush(frontier, (-value * probs[rank], next(order), node, int(candidate)))

        expand(-1, token, 1.0)
        while frontier and len(tokens) < size:
            negative, _, parent, candidate = heapq.heappop(frontier)
            tokens.append(candidate)
            parents.append(parent)
            values.append(-negative)
            expand(len(tokens) - 1, candidate, -negative)
        return tokens, parents, values


class RecyclingDrafter:
    """Token Recycling: drafts from the target's best recorded candidates after each token (see
    :class:`RecycleTable`). Give a ``table`` to keep it across answers (hot start).

    ``tree=False`` drafts the chain of best candidates (a path, which every engine verifies); ``tree=True``
    drafts a tree of candidates (:meth:`RecycleTable.tree`), which the speculative loop verifies in one pass
    where the session supports it (:attr:`rag.generation.engine.Session.supports_tree`) and otherwise
    reduces to its main path, the same chain.
    """

    name = "recycling"

    def __init__(self, table: RecycleTable | None = None, tree: bool = False) -> None:
        self.table = table if table is not None else RecycleTable()
        self.tree = tree

    def start(self, prompt_ids: list[int], temperature: float = 0.0, generator: Any = None) -> None:
        pass  # the table carries over from earlier answers; nothing is tied to the prompt

    def observe(self, fed: list[int], logits: Any) -> None:
        self.table.update(fed, logits)

    def propose(self, tokens: list[int], k: int) -> Draft:
        # match_length 1: no matched context backs the guess; the acceptance tracker learns its rate.
        if self.tree and tokens:
            nodes, parents, values = self.table.tree(tokens[-1], k)
            return Draft(tokens=nodes, source=self.name, match_length=1 if nodes else 0, parents=parents,
                         confidence=values)
        draft = self.table.path(tokens[-1], k) if tokens else []
        return Draft(tokens=draft, source=self.name, match_length=1 if draft else 0)


class CombinedDrafter:
    """The model-free drafter with the longest match this step; the fallback when none matches
    ``min_match`` tokens. All drafters see every token (their state must follow the sequence)."""

    name = "combined"

    def __init__(self, drafters: list[Any], fallback: Any = None, min_match: int = 2) -> None:
        if not drafters and fallback is None:
            raise InputError("combined drafter: give at least one drafter or a fallback")
        self.drafters, self.fallback, self.min_match = list(drafters), fallback, min_match

    def start(self, prompt_ids: list[int], temperature: float = 0.0, generator: Any = None) -> None:
        for drafter in self.drafters:
            drafter.start(prompt_ids, temperature=temperature, generator=generator)
        if self.fallback is not None:
            self.fallback.start(prompt_ids, temperature=temperature, generator=generator)

    def observe(self, fed: list[int], logits: Any) -> None:
        for drafter in [*self.drafters, self.fallback]:
            if hasattr(drafter, "observe"):
                drafter.observe(fed, logits)

    def propose(self, tokens: list[int], k: int) -> Draft:
        best = Draft(tokens=[], source=self.name)
        for drafter in self.drafters:
            draft = drafter.propose(tokens, k)
            if draft.tokens and (not best.tokens or draft.match_length > best.match_length):
                best = draft
        if self.fallback is not None and (not best.tokens or best.match_length < self.min_match):
            return self.fallback.propose(tokens, k)
        return best


MODEL_FREE = {"ngram": PromptLookupDrafter, "sam": SuffixAutomatonDrafter}


def build_drafter(names: list[str] | tuple[str, ...], draft_lm: Any = None, corpus: list[list[int]] | None = None,
                  recycle: RecycleTable | None = None) -> Any:
    """A drafter from names (``"ngram"``, ``"sam"``, ``"corpus"``, ``"recycling"``, ``"recycling-tree"``,
    ``"model"``). Several are combined: the matching drafters compete by match length, and the fallback for
    a step where none matches two tokens is the draft model (``draft_lm``) or token recycling (path drafts,
    or tree drafts with ``"recycling-tree"``; its ``recycle`` table, if given, carries over between
    answers), whichever is named."""
    known = [*MODEL_FREE, "corpus", "recycling", "recycling-tree", "model"]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise InputError(f"drafters {list(names)!r}: unknown {unknown or 'empty list'}; known: {', '.join(known)}")
    model_free: list[Any] = []
    for name in names:
        if name in MODEL_FREE:
            model_free.append(MODEL_FREE[name]())
        elif name == "corpus":
            if corpus is None:
                raise InputError("drafter 'corpus' needs the corpus token sequences")
            model_free.append(CorpusDrafter(corpus))
    fallback = None
    if "model" in names:
        if draft_lm is None:
            raise InputError("drafter 'model' needs a draft model (draft_model=...)")
        fallback = DraftModelDrafter(draft_lm)
    recycling = [n for n in names if n.startswith("recycling")]
    if recycling:
        if fallback is not None or len(recycling) > 1:
            raise InputError(f"drafters {['model'] * (fallback is not None) + recycling} are all fallbacks (for "
                             "steps where no passage matches); name one of them")
        fallback = RecyclingDrafter(recycle, tree=recycling[0] == "recycling-tree")
    if len(model_free) == 1 and fallback is None:
        return model_free[0]
    if not model_free:
        return fallback
    return CombinedDrafter(model_free, fallback=fallback)
