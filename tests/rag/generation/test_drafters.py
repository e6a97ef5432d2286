"""Model-free drafters against brute-force references; the combiner; drafter names."""

import random

import pytest

from rag.generation.drafters import (
    CombinedDrafter, CorpusDrafter, PromptLookupDrafter, RecycleTable, RecyclingDrafter, SuffixAutomaton,
    SuffixAutomatonDrafter, build_drafter,
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


def test_recycle_table_keeps_the_latest_top_candidates_after_each_token():
    import torch

    table = RecycleTable(k=2)
    logits = torch.zeros(3, 10)
    logits[0, 7], logits[0, 4] = 5.0, 3.0  # after token 1: 7 then 4
    logits[1, 2], logits[1, 9] = 5.0, 4.0  # after token 7: 2 then 9
    logits[2, 1] = 5.0  # after token 2: 1 (then the first of the ties)
    table.update([1, 7, 2], logits)
    assert table.table.shape == (10, 2) and table.table[1].tolist() == [7, 4] and table.table[7].tolist() == [2, 9]
    assert table.path(1, 2) == [7, 2] and table.path(1, 10)[:4] == [7, 2, 1, 7]  # a chain may cycle
    assert table.path(5, 3) == []  # never seen after 5
    newer = torch.zeros(1, 12)
    newer[0, 11] = 1.0
    table.update([1], newer)  # the latest pass wins; the table grows to a wider vocabulary
    assert table.table.shape == (12, 2) and table.path(1, 1) == [11] and table.table[7].tolist() == [2, 9]
    drafter = RecyclingDrafter(table)
    drafter.start([1, 2, 3])
    draft = drafter.propose([4, 7], 3)
    assert draft.source == "recycling" and draft.tokens == [2, 1, 11] and draft.match_length == 1
    assert drafter.propose([5], 3).tokens == []


def test_recycle_table_counts_rank_hits_at_the_first_token_fed_and_drafts_trees_best_first():
    import torch

    table = RecycleTable(k=2)
    assert table.rank_probs() == pytest.approx([1 / 3, 1 / 3])  # no lookups yet: the even prior
    assert table.tree(1, 4) == ([], [], [])
    logits = torch.zeros(3, 10)
    logits[0, 7], logits[0, 4] = 5.0, 3.0  # after 1: 7, 4
    logits[1, 2], logits[1, 9] = 5.0, 4.0  # after 7: 2, 9
    logits[2, 1], logits[2, 3] = 5.0, 4.0  # after 4: 1, 3
    table.update([1, 7, 4], logits)
    assert table.lookups == 0  # rows were unseen
    again = torch.zeros(2, 10)
    again[0, 4], again[0, 7] = 5.0, 3.0  # after 1 the target now says 4: rank 1 of the old row [7, 4]
    again[1, 5], again[1, 6] = 5.0, 4.0  # position 2 follows a draft token: not counted
    table.update([1, 7], again)
    assert (table.lookups, table.rank_hits) == (1, [0, 1])
    probs = table.rank_probs()
    assert probs == pytest.approx([(0 + 1 / 3) / 2, (1 + 1 / 3) / 2])
    # the row of 1 is now [4, 7]; of 4: [1, 3]; of 7: [5, 6]. Rank 1 hits more often than rank 0 so far,
    # so 7 (rank 1 after 1) comes first, then 6 (rank 1 after 7: 0.67 x 0.67), then 4 (rank 0 after 1).
    tokens, parents, values = table.tree(1, 4)
    assert tokens[:3] == [7, 6, 4] and parents[:3] == [-1, 0, -1]
    assert all(p < i for i, p in enumerate(parents))  # every prefix is a tree
    assert values == sorted(values, reverse=True)  # best first
    for i, parent in enumerate(parents):  # a node's estimate is its parent's times its rank's hit rate
        row = table.table[1 if parent < 0 else tokens[parent]].tolist()
        assert values[i] == pytest.approx((1.0 if parent < 0 else values[parent]) * probs[row.index(tokens[i])])
    drafter = RecyclingDrafter(table, tree=True)
    draft = drafter.propose([9, 1], 3)
    assert (draft.tokens, draft.parents, draft.confidence) == (tokens[:3], parents[:3], values[:3])
    assert not RecyclingDrafter(table).propose([9, 1], 3).parents  # path drafts by default


def test_recycling_is_the_fallback_where_no_passage_matches():
    import torch

    combined = build_drafter(["sam", "ngram", "recycling"])
    assert isinstance(combined, CombinedDrafter) and isinstance(combined.fallback, RecyclingDrafter)
    prompt = [1, 2, 3, 4, 5]
    combined.start(prompt)
    logits = torch.zeros(2, 50)
    logits[0, 40], logits[1, 41] = 1.0, 1.0
    combined.observe([30, 40], logits)  # the target said 40 after 30, 41 after 40
    assert combined.propose(prompt + [30], 3).tokens[:2] == [40, 41]  # 30 is in no passage: recycled
    assert combined.propose(prompt + [30, 2, 3], 2).tokens == [4, 5]  # a passage match of 2 wins
    with pytest.raises(InputError, match="name one of them"):
        build_drafter(["sam", "recycling", "model"], draft_lm=object())
    with pytest.raises(InputError, match="name one of them"):
        build_drafter(["recycling", "recycling-tree"])
    assert build_drafter(["sam", "recycling-tree"]).fallback.tree


def test_drafter_names_are_checked():
    assert isinstance(build_drafter(["sam"]), SuffixAutomatonDrafter)
    assert isinstance(build_drafter(["sam", "ngram"]), CombinedDrafter)
    with pytest.raises(InputError, match="known: ngram, sam"):
        build_drafter(["suffix"])
    with pytest.raises(InputError, match="draft model"):
        build_drafter(["sam", "model"])
