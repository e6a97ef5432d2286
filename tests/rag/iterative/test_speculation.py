"""The guess cache ranks cached chunks as the real index would, and verifies guesses with the encodings
the guesses used; the stride scheduler speculates further the more guesses come out right."""

import pytest

from rag.iterative.speculation import ChunkCache, StrideScheduler, steps_per_second
from rag.registry import build
from rag.types import Chunk, Hit
from tests.test_contracts import CORPUS

TEXTS = CORPUS  # the contract suite's six one-topic chunks
QUERIES = ["what lowers blood sugar?", "a string instrument from Cremona", "the river through the capital of France"]


@pytest.mark.parametrize("kind", ["dense", "late", "bm25s"])
def test_a_full_cache_guesses_what_the_index_returns(kind):
    index = build("index", kind)
    chunks = [Chunk(id=f"{n}#0", doc_id=n, text=t, start=0, end=len(t), title=n) for n, t in TEXTS.items()]
    index.add(chunks)
    cache = ChunkCache(index)
    cache.add([Hit(chunk=c, score=0.0, source=kind) for c in chunks])  # every chunk
    assert cache.scored and cache.by_vector == (kind != "bm25s")
    guesses = [cache.top(q, 3) for q in QUERIES]
    truth = cache.search(QUERIES, 3)  # one batched call, with the guesses' encodings
    alone = [index.search(q, 3)[0] for q in QUERIES]
    # Lexical kinds return only chunks sharing a term with the query; the cache ranks every cached chunk,
    # so past the matching ones its guess has more (a guess that is then simply wrong, never an error).
    assert [[h.chunk.id for h in row][: len(real)] for row, real in zip(guesses, alone)] == [
        [h.chunk.id for h in row] for row in alone]
    assert [[h.chunk.id for h in row] for row in truth] == [[h.chunk.id for h in row] for row in alone]
    assert [[h.score for h in row] for row in truth] == [[h.score for h in row] for row in alone]
    assert not cache.vectors  # encodings are dropped once verified


def test_the_scheduler_speculates_further_when_guesses_are_right():
    assert steps_per_second(1, 0.0, 1.0, 1.0) > steps_per_second(4, 0.0, 1.0, 1.0)
    assert steps_per_second(6, 0.95, 1.0, 2.0) > steps_per_second(1, 0.95, 1.0, 2.0)
    scheduler = StrideScheduler(max_stride=8)
    assert scheduler.next_stride() == 0  # nothing measured yet: a real step times a step and a search
    scheduler.record_verification(0.5, right=1, guessed=1)
    assert scheduler.next_stride() == 0
    scheduler.record_step(0.2)  # searching costs more than a step: guessing several steps pays
    for _ in range(20):
        scheduler.record_verification(0.5, right=4, guessed=4)
    assert scheduler.next_stride() > 2
    for _ in range(5000):  # guesses now almost never right: searching for real at every step is best
        scheduler.record_verification(0.5, right=0, guessed=1)
    assert scheduler.next_stride() == 0
    assert StrideScheduler(fixed=3).next_stride() == 3


def test_the_scheduler_does_not_speculate_when_searching_is_cheap():
    # One guessed step is never faster than a real one (the redo of a wrong guess costs a step, the search is
    # still one search); this machine's multi-hop runs: a step ~10 s, a search ~0.05 s, guesses right 94%.
    for gamma in (0.5, 0.9, 0.99):
        assert steps_per_second(1, gamma, 1.0, 0.5) < 1 / (1.0 + 0.5)
    scheduler = StrideScheduler(max_stride=8)
    scheduler.record_step(10.0)
    scheduler.record_verification(0.05, right=94, guessed=100)
    assert scheduler.next_stride() == 0
    scheduler.record_verification(20.0, right=0, guessed=0)  # a slow search: now 10 s on average, as a step
    assert scheduler.next_stride() >= 2
