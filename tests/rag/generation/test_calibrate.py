"""``engine="auto"``: a real measurement of real engines, cached per machine and model, and reused."""

from __future__ import annotations

import json

import pytest

from rag.generation import calibrate
from rag.generation.calibrate import EngineMeasure, choose_engine, machine_facts, machine_key, width_costs
from rag.generation.engine import load_engine


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """Calibration files under ``tmp_path`` (the model packs stay in the real cache)."""
    monkeypatch.setattr(calibrate, "_MEMO", {})
    monkeypatch.setattr(calibrate, "_choice_file",
                        lambda model, facts: tmp_path / "engines" / machine_key(facts) / f"{model}.json")
    return tmp_path


def test_auto_measures_each_engine_once_caches_the_choice_and_reads_it_back(cache, monkeypatch):
    tmp_path = cache
    choice = choose_engine("smollm2-135m", candidates=("transformers:float32", "no-such-engine"), prompt_tokens=64)
    assert choice.engine == "transformers:float32"
    assert "no-such-engine" in choice.skipped  # an engine that cannot run is skipped with its reason
    (measured,) = choice.measures
    assert measured.prompt_tokens_per_second > 0 and measured.decode_seconds > 0 and measured.width_costs[1] == 1.0
    assert "transformers:float32: estimated" in choice.reason
    files = list((tmp_path / "engines").rglob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["engine"] == "transformers:float32"
    # a second process reads the file instead of measuring again
    monkeypatch.setattr(calibrate, "_MEMO", {})
    monkeypatch.setattr(calibrate, "measure", lambda *a, **k: pytest.fail("measured again"))
    again = choose_engine("smollm2-135m", candidates=("transformers:float32",), prompt_tokens=64)
    assert again.engine == choice.engine and again.measures[0].width_costs == measured.width_costs


def test_a_corrupt_cache_file_is_measured_again(cache):
    tmp_path = cache
    path = tmp_path / "engines" / machine_key(machine_facts()) / "smollm2-135m.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    choice = choose_engine("smollm2-135m", candidates=("transformers:float32",), prompt_tokens=64)
    assert choice.measures and json.loads(path.read_text())["engine"] == "transformers:float32"



def test_a_choice_measured_on_a_busy_machine_says_so_and_an_older_format_is_measured_again(cache, monkeypatch):
    import os

    tmp_path = cache
    path = tmp_path / "engines" / machine_key(machine_facts()) / "smollm2-135m.json"
    path.parent.mkdir(parents=True)
    # a version-1 file (written when llama.cpp could not read split GGUF packs) is not trusted
    path.write_text(json.dumps({"format_version": 1, "model": "smollm2-135m", "engine": "llama.cpp", "reason": "",
                                "measures": []}))
    monkeypatch.setattr(calibrate, "load_average", lambda: 3.0 * (os.cpu_count() or 1))
    choice = choose_engine("smollm2-135m", candidates=("transformers:float32",), prompt_tokens=64)
    assert choice.engine == "transformers:float32" and choice.load_average == 3.0 * (os.cpu_count() or 1)
    assert "the machine was busy" in choice.reason and str(path) in choice.reason

def test_the_choice_minimises_the_estimated_answer_time():
    slow_reader = EngineMeasure("a", prompt_tokens_per_second=100, decode_seconds=0.04, width_costs={1: 1.0, 8: 3.0})
    fast_reader = EngineMeasure("b", prompt_tokens_per_second=600, decode_seconds=0.09, width_costs={1: 1.0, 8: 1.3})
    assert fast_reader.answer_seconds() < slow_reader.answer_seconds()
    assert slow_reader.answer_seconds(speculative=False) == pytest.approx(800 / 100 + 40 * 0.04)
    # cheap wide passes lower the speculative estimate below plain decoding
    assert fast_reader.answer_seconds() < fast_reader.answer_seconds(speculative=False)


def test_the_machine_key_changes_with_the_thread_count():
    facts = machine_facts()
    assert machine_key(facts) != machine_key({**facts, "threads": facts["threads"] + 1})


def test_width_costs_of_an_engine_not_in_the_choice_are_measured_and_cached(cache, monkeypatch):
    lm = load_engine("smollm2-135m", "transformers:float32")
    monkeypatch.setattr(calibrate, "PROMPT_TOKENS", 64)
    monkeypatch.setattr(calibrate.measure, "__defaults__", (64, calibrate.WIDTHS, 1))
    costs = width_costs(lm)
    assert costs[1] == 1.0 and set(costs) == set(calibrate.WIDTHS)
    monkeypatch.setattr(calibrate, "measure", lambda *a, **k: pytest.fail("measured again"))
    assert width_costs(lm) == costs
