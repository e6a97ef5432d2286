"""Queries longer than an encoder's window are cut to its first tokens with a warning (issue 21), not an error."""

from __future__ import annotations

import warnings

import pytest

from rag.errors import TruncatedInputWarning

LONG = "platelets and blood clots " * 400  # 1,600 words: past every window here
SHORT = "blood clots and platelets"


def encoders():
    from indexes.late import TokenEncoder
    from indexes.splade_encoder import SpladeEncoder
    from rag.encoders import SentenceEncoder

    return {"dense": SentenceEncoder("minilm"), "late": TokenEncoder("minilm"), "splade": SpladeEncoder()}


@pytest.mark.parametrize("kind", ["dense", "late", "splade"])
def test_an_over_long_query_is_truncated_with_a_warning(kind):
    encoder = encoders()[kind]
    with pytest.warns(TruncatedInputWarning, match=r"1 of 2 queries are longer than the model's window of \d+ tokens "
                                                  r"\(the longest, query 1, has \d+\)"):
        vectors = encoder.encode_queries([SHORT, LONG])
    assert len(vectors) == 2 if kind == "late" else vectors.shape[0] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncatedInputWarning)
        encoder.encode_queries([SHORT, "x" * 40])  # short queries: no warning


def test_the_warning_counts_tokens_not_characters():
    from rag.encoders import warn_long_queries
    from rag.tokenizers import load_tokenizer

    tokenizer = load_tokenizer("minilm")
    window = len(tokenizer(SHORT)["input_ids"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncatedInputWarning)
        warn_long_queries(tokenizer, [SHORT], window, "t")  # exactly the window: fits
    with pytest.warns(TruncatedInputWarning, match=f"t: 1 of 1 queries .* window of {window - 1} tokens"):
        warn_long_queries(tokenizer, [SHORT], window - 1, "t")
