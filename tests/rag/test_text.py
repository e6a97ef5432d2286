"""Token starts of long texts: read in pieces with bounded memory, the same as reading the text whole."""

from __future__ import annotations

import pytest

from rag import text as text_module
from rag.text import token_starts_many

PARAGRAPH = ("Insulin lowers blood glucose by helping cells absorb sugar. Naïve café-goers paid €5, ¥300 or 🙂!\n\n"
             "  Indented   spaces\tand\ttabs; code_like_identifiers(x=1) and CamelCaseWords.  ")


def whole(tokenizer: str, text: str) -> list[int]:
    from rag.tokenizers import load_tokenizer

    offsets = load_tokenizer(tokenizer)(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [start for start, end in offsets if end > start]


@pytest.mark.parametrize("tokenizer", ["minilm", "qwen2.5-0.5b"])
def test_a_text_read_in_pieces_has_the_starts_of_the_whole_text(monkeypatch, tokenizer):
    monkeypatch.setattr(text_module, "PIECE_CHARACTERS", 300)  # many pieces, cut at every kind of gap
    monkeypatch.setattr(text_module, "BATCH_CHARACTERS", 700)
    long = PARAGRAPH * 40
    short = "A short text."
    starts = token_starts_many(tokenizer, [short, long, short])
    assert len(text_module._pieces(long)) > 10
    assert list(starts[1]) == whole(tokenizer, long)
    assert list(starts[0]) == list(starts[2]) == whole(tokenizer, short)


def test_pieces_cover_the_text_and_end_where_whitespace_begins(monkeypatch):
    monkeypatch.setattr(text_module, "PIECE_CHARACTERS", 50)
    long = PARAGRAPH * 5
    pieces = text_module._pieces(long)
    assert pieces[0][0] == 0 and pieces[-1][1] == len(long)
    assert all(a == b_prev for (_, b_prev), (a, _) in zip(pieces, pieces[1:]))
    assert all(long[b].isspace() and not long[b - 1].isspace() for _, b in pieces[:-1])
    no_space = "x" * 175  # no whitespace to cut at: cut at the size
    assert text_module._pieces(no_space) == [(0, 50), (50, 100), (100, 150), (150, 175)]
