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


class _FakeClock:
    """perf_counter for choose_dtype: each fake encoder advances it by its own cost per text."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def strftime(self, pattern: str) -> str:
        return "2026-01-01 00:00:00"


class _FakeEncoder:
    def __init__(self, clock: _FakeClock, seconds_per_text: float) -> None:
        self.clock, self.cost, self.calls = clock, seconds_per_text, 0

    def encode_documents(self, texts):
        self.calls += 1
        self.clock.now += self.cost * len(texts)
        return np.zeros((len(texts), 2), np.float32)


@pytest.mark.parametrize(("bfloat16_cost", "expected"), [(0.01, "bfloat16"), (0.09, "float32"), (0.2, "float32")])
def test_auto_picks_bfloat16_only_when_clearly_faster_and_caches_the_choice(
    monkeypatch: pytest.MonkeyPatch, tmp_path, bfloat16_cost: float, expected: str
) -> None:
    """float32 costs 0.1 s a text here: 10x faster bfloat16 is chosen, 1.1x faster is not (below 1.2x), slower is not."""
    import json

    from rag import encoders

    clock = _FakeClock()
    monkeypatch.setattr(encoders, "time", clock)
    monkeypatch.setattr(encoders, "_dtype_choice_file", lambda kind, model, facts: tmp_path / f"{kind}-{model}.json")
    monkeypatch.setattr(encoders, "_DTYPE_MEMO", {})
    made: dict[str, _FakeEncoder] = {}
    released: list[str] = []

    def make(dtype: str) -> _FakeEncoder:
        made[dtype] = _FakeEncoder(clock, 0.1 if dtype == "float32" else bfloat16_cost)
        return made[dtype]

    assert encoders.choose_dtype("fake", "m", make, released.append) == expected
    assert released == ["float32" if expected == "bfloat16" else "bfloat16"]  # the other model is let go
    saved = json.loads((tmp_path / "fake-m.json").read_text())
    assert saved["dtype"] == expected and saved["texts_per_second"]["float32"] == pytest.approx(10.0)
    # Another process (the memo cleared) reads the file and measures nothing.
    monkeypatch.setattr(encoders, "_DTYPE_MEMO", {})
    made.clear()
    assert encoders.choose_dtype("fake", "m", make, released.append) == expected and not made
    # An unreadable file is measured again.
    (tmp_path / "fake-m.json").write_text("{not json")
    monkeypatch.setattr(encoders, "_DTYPE_MEMO", {})
    assert encoders.choose_dtype("fake", "m", make, released.append) == expected and made


def test_auto_resolves_to_a_measured_dtype_for_the_real_encoders() -> None:
    """dtype='auto' on MiniLM (dense and token vectors) and SPLADE: one of the two dtypes, kept in the config."""
    from indexes.dense import DenseIndex
    from indexes.late import TokenEncoder
    from indexes.splade_encoder import SpladeEncoder
    from rag.encoders import DTYPES
    from rag.registry import build

    dense = SentenceEncoder("minilm", dtype="auto")
    assert dense.resolved_dtype in DTYPES and dense.encode_documents(TEXTS).dtype == np.float32
    assert TokenEncoder(dtype="auto").resolved_dtype in DTYPES
    assert SpladeEncoder(dtype="auto").resolved_dtype in DTYPES
    index = DenseIndex("minilm", dtype="auto")
    assert build("index", index.to_config()).dtype == "auto"
    with pytest.raises(InputError, match="dtype must be one of float32, bfloat16 or 'auto'"):
        SentenceEncoder("minilm", dtype="float16")
