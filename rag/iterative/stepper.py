"""Greedy decoding in steps over a context that may change between steps, reproducibly.

Iterative retrieval-augmented generation decodes a few tokens, retrieves again, and goes on with the new
passages in the prompt. :class:`StepDecoder` does that decoding. What it computes is a function of the
*logical history* only (which passages were in the prompt from which answer position on, and the tokens
generated), never of detours taken on the way: speculative retrieval (:mod:`rag.iterative.ralm`) decodes
ahead with guessed passages and rolls back on a wrong guess, and its answer must equal, token for token,
the answer of retrieving for real at every step. Floating point makes that a matter of *how* the KV cache
was built, not only of which tokens it holds: reading 40 tokens in one pass and reading them one at a time
give logits that differ in the last bits, enough to flip a near-tie. So the cache is always built the same
way for the same history:

- when the passages change at answer position ``n`` (a *change*), a copy of the generator's cached system
  prompt reads the new prompt and the ``n`` answer tokens so far in one pass;
- every token generated after that is read alone, right after it is chosen.

A rollback to position ``n`` restores exactly that state: if the session built for the change in force at
``n`` is still held, it is cropped and the token before ``n`` read again alone (the same computation as
the first time); otherwise the change's one-pass read is redone and the tokens since read one at a time.
The decoder keeps the sessions of the last three changes, so a wrong guess that changed the passages costs
one crop, not a re-read of the prompt.

Hand-written rather than built on :func:`rag.generation.decode.decode`: that loop owns its session and reads
a prompt with whatever prefix the cache holds, which is exactly the history-dependence this must avoid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

from rag.generation.decode import TextStream

# Sessions kept per decoder: the one in use and those of the two changes before it (what a rollback past a
# wrong guess returns to). More would mostly hold KV caches that are never read again.
KEPT_SESSIONS = 3


@dataclass(frozen=True)
class Change:
    """From answer position ``start`` on, the prompt is ``prompt_ids`` (its passages identified by ``key``)."""

    start: int
    key: Hashable
    prompt_ids: tuple[int, ...]


@dataclass
class StepStats:
    """Work done by a decoder: model passes, tokens read in prompt passes, and seconds."""

    rebuilds: int = 0  # one-pass reads of a prompt (a change, or a rollback that lost its session)
    rebuild_tokens: int = 0
    replayed_tokens: int = 0  # answer tokens read again one at a time after a rollback
    decoded_tokens: int = 0  # tokens chosen (discarded ones included)
    seconds: float = 0.0


@dataclass
class StepDecoder:
    """Greedy decoding of one answer, ``step`` by ``step``, with the prompt allowed to change between steps.

    ``generator`` is a grounded generator (it gives the engine, the cached system prompt, the stop strings
    and the answer length); ``lm`` its loaded engine. ``generated`` holds the answer's token ids so far and
    ``done`` whether it has ended (end of sequence, a stop string, or the length limit).
    """

    generator: Any
    lm: Any
    generated: list[int] = field(default_factory=list)
    done: bool = False
    changes: list[Change] = field(default_factory=list)
    stats: StepStats = field(default_factory=StepStats)
    _sessions: dict[Change, Any] = field(default_factory=dict)  # change -> session built for it
    _logits: Any = None  # the logits after the last token the current session read
    _stream: Any = None  # token ids -> text
    _text: str = ""
    _cut: int | None = None  # where a stop string cut the text

    @property
    def text(self) -> str:
        """The answer so far, cut at a stop string."""
        return self._text if self._cut is None else self._text[: self._cut]

    def step(self, key: Hashable, prompt_ids: Sequence[int], max_tokens: int) -> list[int]:
        """Decode up to ``max_tokens`` more tokens with the prompt ``prompt_ids`` (identified by ``key``:
        the same key must always come with the same prompt); returns the new tokens."""
        if self.done:
            return []
        started = time.perf_counter()
        if not self.changes or self.changes[-1].key != key:
            self._apply(Change(len(self.generated), key, tuple(prompt_ids)))
        new: list[int] = []
        import torch

        limit = self.generator.new_tokens
        while len(new) < max_tokens and not self.done:
            token = int(torch.argmax(self._logits))
            if token in self.lm.eos_token_ids:
                self.done = True
                break
            self.generated.append(token)
            new.append(token)
            self.stats.decoded_tokens += 1
            self._update_text()
            if self._cut is not None or len(self.generated) >= limit:
                self.done = True
                break
            self._logits = self._current().feed([token])
        self.stats.seconds += time.perf_counter() - started
        return new

    def rewind(self, length: int) -> None:
        """Go back to the state after the first ``length`` answer tokens, as if nothing after had happened."""
        if not 0 <= length <= len(self.generated):
            raise ValueError(f"rewind to {length} outside 0..{len(self.generated)}")
        started = time.perf_counter()
        del self.generated[length:]
        self.done = False
        while self.changes and self.changes[-1].start >= length:  # made by the steps being undone
            self.changes.pop()
        self._recompute_text()
        if self.changes:
            self._restore(self.changes[-1], length)
        self.stats.seconds += time.perf_counter() - started

    # -- the cache discipline ------------------------------------------------------------------------

    def _apply(self, change: Change) -> None:
        """Start a change: a fresh copy of the system prompt reads the prompt and the answer so far at once."""
        self.changes.append(change)
        session = self.generator.session(self.lm)
        sequence = list(change.prompt_ids) + self.generated[: change.start]
        self._logits = session.prefill(sequence)
        self.stats.rebuilds += 1
        self.stats.rebuild_tokens += len(sequence)
        self._keep(change, session)

    def _restore(self, change: Change, length: int) -> None:
        """The state ``change`` gives after ``length`` answer tokens (``length >= change.start``)."""
        session = self._sessions.get(change)
        prompt = len(change.prompt_ids)
        if session is not None and length > change.start and session.length >= prompt + length - 1:
            session.crop(prompt + length - 1)  # then read the last kept token alone, as it first was
            self._logits = session.feed([self.generated[length - 1]])
            self.stats.replayed_tokens += 1
            self._keep(change, session)
            return
        self.changes.pop()
        self._apply(change)  # reads the answer up to change.start in one pass, as the change first did
        session = self._sessions[change]
        for token in self.generated[change.start:length]:
            self._logits = session.feed([token])
            self.stats.replayed_tokens += 1

    def _current(self) -> Any:
        return self._sessions[self.changes[-1]]

    def _keep(self, change: Change, session: Any) -> None:
        self._sessions.pop(change, None)
        self._sessions[change] = session  # most recent last
        while len(self._sessions) > KEPT_SESSIONS:
            del self._sessions[next(iter(self._sessions))]

    # -- text and stop strings ---------------------------------------------------------------------

    def _update_text(self) -> None:
        if self._stream is None:
            self._recompute_text()
            return
        self._text += self._stream.push(self.generated[-1])
        self._find_stop()

    def _recompute_text(self) -> None:
        self._stream = TextStream(self.lm.tokenizer)
        self._text = "".join(self._stream.push(token) for token in self.generated)
        self._find_stop()

    def _find_stop(self) -> None:
        from rag.generation.generator import _stop_at

        self._cut = _stop_at(self._text, self.generator.stops)

