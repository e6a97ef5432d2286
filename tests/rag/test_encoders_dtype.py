"""The sentence encoder in bfloat16: float32 output, embeddings close to float32's, a declared option."""

import numpy as np
import pytest

from rag.encoders import SentenceEncoder
from rag.errors import InputError

TEXTS = ["functools.lru_cache memoizes a function's most recent calls.",
         "json.dumps serializes an object to a JSON formatted string.",
         "The mitochondria is the powerhouse of the cell."]


def test_bfloat16_embeddings_are_float32_and_close_to_float32s():
    full = SentenceEncoder("minilm").encode_documents(TEXTS)
    half = SentenceEncoder("minilm", dtype="bfloat16").encode_documents(TEXTS)
    assert half.dtype == np.float32 and half.shape == full.shape
    # normalised in float32 after the bfloat16 network (not in bfloat16, where norms are off by up to 0.4%)
    np.testing.assert_allclose(np.linalg.norm(half, axis=1), 1.0, atol=1e-5)
    cosines = (full * half).sum(axis=1)  # both L2-normalised
    assert cosines.min() > 0.99
    # the ranking of documents for a query is kept on this easy case
    query_full = SentenceEncoder("minilm").encode_queries(["How do I cache function results?"])
    query_half = SentenceEncoder("minilm", dtype="bfloat16").encode_queries(["How do I cache function results?"])
    assert np.argmax(full @ query_full[0]) == np.argmax(half @ query_half[0]) == 0


def test_an_unknown_dtype_is_refused_before_anything_loads():
    with pytest.raises(InputError, match="dtype must be one of float32, bfloat16"):
        SentenceEncoder("minilm", dtype="float16")
