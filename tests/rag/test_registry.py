import pytest

from rag import registry
from rag.errors import InputError, UnknownComponentError
from rag.filters import TopKFilter


def test_unknown_name_lists_known_ones():
    with pytest.raises(UnknownComponentError) as info:
        registry.build("index", "nope")
    message = str(info.value)
    assert "unknown index 'nope'" in message and "dense" in message


def test_unknown_role_lists_roles():
    with pytest.raises(UnknownComponentError, match="roles: chunker"):
        registry.known("retriever")


def test_build_from_name_mapping_and_instance():
    by_name = registry.build("filter", "top-k")
    by_spec = registry.build("filter", {"type": "top-k", "params": {"k": 3}})
    assert isinstance(by_name, TopKFilter) and by_spec.k == 3
    assert registry.build("filter", by_spec) is by_spec


def test_wrong_params_are_named():
    with pytest.raises(InputError, match=r"does not take \['kk'\]"):
        registry.build("filter", {"type": "top-k", "params": {"kk": 3}})
    with pytest.raises(InputError, match="unknown keys"):
        registry.build("filter", {"type": "top-k", "parms": {}})


def test_component_config_round_trip_and_equality():
    original = TopKFilter(k=4, min_score=0.2)
    config = original.to_config()
    assert config == {"type": "top-k", "params": {"k": 4, "min_score": 0.2}}
    assert registry.build("filter", config) == original
    assert registry.build("filter", {"type": "top-k", "params": {"k": 5}}) != original


def test_register_a_custom_component():
    registry.register("filter", "my-top", "rag.filters:TopKFilter")
    try:
        assert isinstance(registry.build("filter", "my-top"), TopKFilter)
        with pytest.raises(InputError, match="package.module:Class"):
            registry.register("filter", "bad", "rag.filters.TopKFilter")
    finally:
        registry._REGISTRY["filter"].pop("my-top")


def test_presets_build_their_base_with_params_and_round_trip():
    registry.register_preset("filter", "top-3", "top-k", {"k": 3})
    try:
        assert "top-3" in registry.known("filter")
        built = registry.build("filter", "top-3")
        assert isinstance(built, TopKFilter) and built.k == 3
        assert built.to_config() == {"type": "top-k", "params": {"k": 3, "min_score": None}}
        assert registry.build("filter", built.to_config()) == built
        overridden = registry.build("filter", {"type": "top-3", "params": {"k": 7}})
        assert overridden.k == 7
        with pytest.raises(UnknownComponentError, match="unknown base filter 'nope'"):
            registry.register_preset("filter", "x", "nope", {})
    finally:
        registry._PRESETS["filter"].pop("top-3", None)
