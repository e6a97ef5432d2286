import pytest

from rag import registry
from rag.errors import InputError, UnknownComponentError
from rag.protocols import BaseFilter
from ranking.filters import TopKFilter


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
    with registry.registered("filter", "my-top", "ranking.filters:TopKFilter"):
        assert isinstance(registry.build("filter", "my-top"), TopKFilter)
    assert "my-top" not in registry.known("filter")
    with pytest.raises(InputError, match="package.module:Class"):
        registry.register("filter", "bad", "ranking.filters.TopKFilter")


class NotAFilter(registry.Component):
    """Registered as a filter but without the role's method: build refuses it by name."""

    role = "filter"

    def keep(self, query, hits):
        return hits


def test_build_refuses_a_component_that_does_not_implement_its_role():
    with registry.registered("filter", "not-a-filter", f"{__name__}:NotAFilter"):
        with pytest.raises(InputError, match=r"filter 'not-a-filter' \(.*:NotAFilter\) does not implement \['filter'\]"):
            registry.build("filter", "not-a-filter")


@pytest.mark.parametrize("role", registry.ROLES)
def test_every_registered_class_has_its_roles_methods(role):
    """Checked on the classes, without building them (methods are there before any model loads)."""
    from rag.protocols import missing_methods

    for name in registry.known(role):
        if name not in registry._PRESETS[role]:
            assert not missing_methods(role, registry.resolve(role, name)), f"{role} {name!r}"


def test_the_generator_base_streams_the_generated_answer():
    from rag.protocols import BaseGenerator
    from rag.types import Answer, Context

    class Echo(BaseGenerator):
        def generate(self, query, context):
            return Answer(text=f"echo: {query}", citations=[], hits=[])

    assert list(Echo().stream("q", Context(passages=()))) == ["echo: q"]


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


PLUGIN = '''
from rag.protocols import BaseFilter


class EveryOther(BaseFilter):
    """Keeps every other hit (a third-party filter)."""

    def __init__(self, start: int = 0) -> None:
        self.start = start

    def filter(self, query, hits):
        return hits[self.start::2]
'''

ENTRY_POINTS = """[specrag.components]
filter.every-other = plugin_filter:EveryOther
filter.malformed = plugin_filter
filter.top-k = plugin_filter:EveryOther
"""


def test_components_of_installed_packages_register_through_entry_points(tmp_path):
    """A package that declares ``specrag.components`` entry points builds by name in a fresh process (a Ray
    worker is one) with no registration code; malformed entries and clashes with built-in names are skipped
    with a warning naming the package."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "plugin_filter.py").write_text(PLUGIN)
    info = tmp_path / "specrag_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: specrag-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    script = (
        "import warnings\n"
        "from rag.registry import build, known\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    built = build('filter', {'type': 'every-other', 'params': {'start': 1}})\n"
        "print(type(built).__name__, built.to_config(), 'every-other' in known('filter'))\n"
        "print(type(build('filter', 'top-k')).__name__)\n"
        "for w in caught: print('warning:', w.message)\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "EveryOther {'type': 'every-other', 'params': {'start': 1}} True"
    assert lines[1] == "TopKFilter"  # the built-in name wins
    warnings_ = "\n".join(lines[2:])
    assert "'filter.malformed'" in warnings_ and "specrag-plugin" in warnings_
    assert "'filter.top-k'" in warnings_ and "already ranking.filters:TopKFilter" in warnings_


def test_declared_params_give_the_constructor_config_equality_repr_and_checks():
    """A component that declares its params once (rag.registry.declared_params) gets its constructor, config
    round trip, equality, repr and the registry's type checks from the declaration; checks run in
    __post_init__; state that is not a param (init=False) stays out of the config."""
    from ranking.filters import MMRFilter, ScoreDropFilter

    drop = ScoreDropFilter(max_drop=0.5, relative_to="range")
    assert drop.to_config() == {"type": "score-drop",
                                "params": {"max_drop": 0.5, "relative_to": "range", "min_keep": 1, "max_keep": None}}
    assert registry.build("filter", drop.to_config()) == drop != ScoreDropFilter()
    assert repr(drop) == "ScoreDropFilter(max_drop=0.5, relative_to='range', min_keep=1, max_keep=None)"
    with pytest.raises(InputError, match="max_drop must be between 0 and 1, got 2"):
        ScoreDropFilter(max_drop=2)
    with pytest.raises(InputError, match="param 'min_keep' = 'many'"):
        registry.build("filter", {"type": "score-drop", "params": {"min_keep": "many"}})
    mmr = MMRFilter(k=3)
    assert "_encoder" not in mmr.to_config()["params"] and mmr._encoder is None
    with pytest.raises(InputError, match=r"does not take \['_encoder'\]"):
        registry.build("filter", {"type": "mmr", "params": {"_encoder": 1}})


@registry.declared_params
class KeepFirst(BaseFilter):
    """A filter registered only in this process, as a notebook or a test would."""

    n: int = 1

    def filter(self, query, hits):
        return hits[: self.n]


def test_a_portable_spec_builds_a_component_registered_only_here_in_another_process():
    import pickle

    with registry.registered("filter", "keep-first", f"{__name__}:KeepFirst"):
        portable = registry.PortableSpec.of("filter", registry.build("filter", {"type": "keep-first", "params": {"n": 2}}))
    assert "keep-first" not in registry.known("filter")  # as in a fresh Ray worker
    arrived = pickle.loads(pickle.dumps(portable))
    try:
        built = arrived.build()
        assert isinstance(built, KeepFirst) and built.n == 2 and built.to_config() == portable.spec
    finally:
        registry._REGISTRY["filter"].pop("keep-first", None)
