"""Model-free drafters against brute-force references; the combiner; drafter names."""

import random

import pytest

from rag.generation.drafters import (
    CombinedDrafter, CorpusDrafter, PromptLookupDrafter, SuffixAutomaton, SuffixAutomatonDrafter, build_drafter,
)
from rag.errors import InputError


def longest_earlier_suffix(tokens: list[int]) -> tuple[int, int]:
    """Brute force: the longest suffix of ``tokens`` that also ends at an earlier position; (length, first end)."""
    n = len(tokens)
    for length in range(n - 1, 0, -1):
        suffix = tokens[n - length:]
        for end in range(length - 1, n - 1):
            if tokens[end - length + 1: end + 1] == suffix:
                return length, end
    return 0, -1


def test_suffix_automaton_recognises_exactly_the_substrings():
    rng = random.Random(0)
    text = [rng.randrange(4) for _ in range(60)]
    sam = SuffixAutomaton()
    for token in text:
        sam.extend(token)
    substrings = {tuple(text[i:j]) for i in range(len(text)) for j in range(i + 1, len(text) + 1)}
    for _ in range(500):
        probe = tuple(rng.randrange(4) for _ in range(rng.randrange(1, 8)))
        state, found = 0, True
        for token in probe:
            if token not in sam.next[state]:
                found = False
                break
            state = sam.next[state][token]
        assert found == (probe in substrings)
        if found:  # first_end points at the first occurrence
            end = sam.first_end[state]
            assert tuple(text[end - len(probe) + 1: end + 1]) == probe
            assert all(tuple(text[e - len(probe) + 1: e + 1]) != probe for e in range(len(probe) - 1, end))


def test_sam_drafter_matches_the_longest_earlier_suffix_online():
    rng = random.Random(1)
    text = [rng.randrange(5) for _ in range(30)]
    drafter = SuffixAutomatonDrafter()
    drafter.start(text[:10])
    for end in range(10, len(text)):
        draft = drafter.propose(text[: end + 1], 4)
        length, first = longest_earlier_suffix(text[: end + 1])
        assert draft.match_length == length
        if length:
            assert draft.tokens == text[: end + 1][first + 1: first + 5]


def test_sam_drafter_proposes_the_passage_continuation():
    passage = [10, 11, 12, 13, 14, 15, 16, 17]
    prompt = [1, 2] + passage + [3, 4]
    drafter = SuffixAutomatonDrafter()
    drafter.start(prompt)
    draft = drafter.propose(prompt + [11, 12, 13], 3)
    assert draft.tokens == [14, 15, 16] and draft.match_length == 3


def test_prompt_lookup_uses_the_longest_ngram_and_latest_match():
    drafter = PromptLookupDrafter(max_ngram=3)
    tokens = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 2, 3]
    drafter.start(tokens[:10])
    draft = drafter.propose(tokens, 2)
    assert draft.match_length == 2 and draft.tokens == [7, 8]  # "2 3" last seen before "7 8"
    assert drafter.propose(tokens + [42], 2).tokens == []  # an unseen token: nothing to propose
    with pytest.raises(InputError):
        PromptLookupDrafter(max_ngram=1, min_ngram=2)


def test_corpus_drafter_does_not_cross_chunks():
    corpus = [[1, 2, 3, 4], [5, 6, 7]]
    drafter = CorpusDrafter(corpus, min_match=2)
    drafter.start([9, 9])
    assert drafter.propose([9, 9, 2, 3], 5).tokens == [4]  # stops at the end of its chunk
    assert drafter.propose([9, 9, 2, 3, 8], 5).tokens == []


def test_combiner_picks_the_longest_match():
    prompt = [1, 2, 3, 4, 5, 6, 20, 3, 4, 9]
    combined = CombinedDrafter([PromptLookupDrafter(max_ngram=1), SuffixAutomatonDrafter()])
    combined.start(prompt)
    draft = combined.propose(prompt + [2, 3, 4], 2)
    assert draft.source == "sam" and draft.tokens == [5, 6] and draft.match_length == 3


def test_drafter_names_are_checked():
    assert isinstance(build_drafter(["sam"]), SuffixAutomatonDrafter)
    assert isinstance(build_drafter(["sam", "ngram"]), CombinedDrafter)
    with pytest.raises(InputError, match="known: ngram, sam"):
        build_drafter(["suffix"])
    with pytest.raises(InputError, match="draft model"):
        build_drafter(["sam", "model"])
