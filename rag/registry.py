"""Named components per role, built from ``{"type": name, "params": {...}}`` specs.

The registry maps explicit names to dotted paths (``"indexes.dense:DenseIndex"``) that are imported only
when a component is built, so ``rag`` never imports ``indexes`` or ``chunkers`` at module load.

Third-party packages add components without any code running first: an entry point in the group
``specrag.components`` named ``role.name`` whose value is ``module:Class``, e.g. in ``pyproject.toml``::

    [project.entry-points."specrag.components"]
    "index.my-index" = "my_package.index:MyIndex"

Installed packages' entry points are read once per process, the first time a name is looked up, so a
user's component builds by name in a Ray worker or a fresh process as well. Built-in names win a clash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
import warnings
from typing import Any, Iterator, Mapping

from rag.errors import InputError, UnknownComponentError

ROLES = ("chunker", "index", "reranker", "filter", "compressor", "generator", "loop")
# The entry-point group third-party packages declare components in (``role.name = module:Class``).
ENTRY_POINT_GROUP = "specrag.components"

_REGISTRY: dict[str, dict[str, str]] = {
    "chunker": {
        "recursive": "chunkers.recursive:RecursiveChunker",
        "document": "chunkers.recursive:DocumentChunker",
        "fixed": "chunkers.fixed:TokenChunker",
        "sentence": "chunkers.fixed:SentenceChunker",
        "semantic": "chunkers.semantic:SemanticChunker",
        "perplexity": "chunkers.meta:PerplexityChunker",
        "margin": "chunkers.meta:MarginChunker",
    },
    "index": {
        "dense": "indexes.dense:DenseIndex",
        "bm25": "indexes.bm25:BM25Index",
        "bm25s": "indexes.bm25s_index:BM25sIndex",
        "hybrid": "indexes.hybrid:HybridIndex",
        "splade": "indexes.splade:SpladeIndex",
        "late": "indexes.late.index:LateInteractionIndex",
        "late-rerank": "indexes.late.rerank_index:LateRerankIndex",
        "sharded": "indexes.sharded:ShardedIndex",
    },
    "reranker": {
        "maxsim": "indexes.late.reranker:MaxSimReranker",
        "cross-encoder": "ranking.rerankers:CrossEncoderReranker",
        "llm-pointwise": "ranking.rerankers:LLMPointwiseReranker",
        "first": "ranking.rerankers:FirstReranker",
    },
    "filter": {
        "top-k": "ranking.filters:TopKFilter",
        "topk": "ranking.filters:TopKFilter",
        "threshold": "ranking.filters:ThresholdFilter",
        "score-drop": "ranking.filters:ScoreDropFilter",
        "calibrated": "ranking.calibrated:CalibratedFilter",
        "mmr": "ranking.filters:MMRFilter",
        "reorder": "ranking.filters:ReorderFilter",
    },
    "compressor": {
        "extractive": "compressors.extractive:ExtractiveCompressor",
        "surprisal": "compressors.pruning:SurprisalCompressor",
        "classifier": "compressors.pruning:ClassifierCompressor",
        "compose": "compressors.compose:ComposeCompressor",
    },
    "generator": {
        "grounded": "rag.generation.generator:GroundedGenerator",
    },
    "loop": {
        "ralm": "rag.iterative.ralm:IterativeRaLM",
        "ircot": "rag.iterative.ircot:IRCoT",
    },
}


# Presets: a name for a registered component with some parameters set (``dense-hnsw`` is ``dense`` with
# ``kind="hnsw"``). Building a preset gives the base component, whose config names the base type, so a
# round trip through YAML yields an equal component.
_PRESETS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "chunker": {},
    "index": {
        "bm25-multifield": ("bm25", {"fields": "multifield"}),
        "dense-hnsw": ("dense", {"kind": "hnsw"}),
        "dense-ivfpq": ("dense", {"kind": "ivfpq"}),
    },
    "reranker": {},
    "filter": {},
    "compressor": {
        "extractive+surprisal": ("compose", {"steps": ["extractive", "surprisal"]}),
    },
    "generator": {},
    "loop": {
        "ralm-naive": ("ralm", {"speculative": False}),
    },
}


_entry_points_read = False


def read_entry_points() -> None:
    """Register the components that installed packages declare in :data:`ENTRY_POINT_GROUP` (once per
    process; later calls do nothing). A malformed entry or one that would replace a built-in name is
    skipped with a warning naming its package."""
    global _entry_points_read
    if _entry_points_read:
        return
    _entry_points_read = True
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        role, _, name = entry.name.partition(".")
        source = f"entry point {entry.name!r} = {entry.value!r}" + (f" of {entry.dist.name}" if entry.dist else "")
        if role not in ROLES or not name or ":" not in entry.value:
            warnings.warn(f"{source}: skipped; expected 'role.name = package.module:Class' with role one of "
                          f"{', '.join(ROLES)}", stacklevel=2)
        elif _REGISTRY[role].get(name, entry.value) != entry.value or name in _PRESETS[role]:
            warnings.warn(f"{source}: skipped; {role} {name!r} is already {_REGISTRY[role].get(name, 'a preset')}",
                          stacklevel=2)
        else:
            _REGISTRY[role][name] = entry.value


def register_preset(role: str, name: str, base: str, params: Mapping[str, Any]) -> None:
    """Register ``name`` as ``base`` (a registered name) built with ``params`` unless a spec overrides them."""
    _check_role(role)
    if base not in _REGISTRY[role]:
        raise UnknownComponentError(f"preset {name!r}: unknown base {role} {base!r}; known: {', '.join(known(role))}")
    _PRESETS[role][name] = (base, dict(params))


def register(role: str, name: str, target: str) -> None:
    """Register a component class under ``name`` for ``role``; ``target`` is ``"module:Class"``."""
    _check_role(role)
    if ":" not in target:
        raise InputError(f"registry target for {role} {name!r} must look like 'package.module:Class', got {target!r}")
    _REGISTRY[role][name] = target


@contextlib.contextmanager
def registered(role: str, name: str, target: str) -> Iterator[None]:
    """:func:`register` for the length of a ``with`` block (tests, notebooks): the name is gone afterwards,
    or back to what it was, so nothing a test registers leaks into the next."""
    _check_role(role)
    before = _REGISTRY[role].get(name)
    register(role, name, target)
    try:
        yield
    finally:
        if before is None:
            _REGISTRY[role].pop(name, None)
        else:
            _REGISTRY[role][name] = before


def known(role: str) -> list[str]:
    """The names registered for ``role``, sorted."""
    _check_role(role)
    read_entry_points()
    return sorted(set(_REGISTRY[role]) | set(_PRESETS[role]))


def resolve(role: str, name: str) -> type:
    """The class registered as ``name`` for ``role``; an unknown name raises, listing the known ones."""
    _check_role(role)
    read_entry_points()
    try:
        target = _REGISTRY[role][name]
    except KeyError:
        raise UnknownComponentError(
            f"unknown {role} {name!r}; known {role} names: {', '.join(known(role)) or '(none yet)'}"
        ) from None
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def name_of(role: str, cls: type) -> str:
    """The registered name of a component class (the reverse of :func:`resolve`)."""
    read_entry_points()
    target = f"{cls.__module__}:{cls.__qualname__}"
    for name, registered in _REGISTRY[role].items():
        if registered == target:
            return name
    raise UnknownComponentError(f"{target} is not registered as a {role}; call rag.registry.register first")


def build(role: str, spec: "str | Mapping[str, Any] | Component") -> Any:
    """Build a component from a name, a ``{"type", "params"}`` mapping, or return a built one as is."""
    if isinstance(spec, Component):
        return spec
    if isinstance(spec, str):
        spec = {"type": spec, "params": {}}
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise InputError(f"a {role} spec must be a name or a mapping with 'type' (and 'params'), got {spec!r}")
    unexpected = set(spec) - {"type", "params"}
    if unexpected:
        raise InputError(f"{role} spec {spec['type']!r} has unknown keys {sorted(unexpected)}; expected type, params")
    name, params = spec["type"], dict(spec.get("params") or {})
    if name in _PRESETS[role]:
        name, preset = _PRESETS[role][name]
        params = {**preset, **params}
    cls = resolve(role, name)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    wrong = sorted(set(params) - accepted)
    if wrong:
        raise InputError(f"{role} {spec['type']!r} does not take {wrong}; it takes {sorted(accepted)}")
    check_param_types(cls, params, f"{role} {spec['type']!r}")
    try:
        component = cls(**params)
    except TypeError as exc:  # a value of a type the annotations let through but the constructor cannot use
        raise InputError(f"{role} {spec['type']!r}: {exc}") from None
    from rag.protocols import missing_methods  # rag.protocols imports this module

    missing = missing_methods(role, component)
    if missing:
        raise InputError(f"{role} {spec['type']!r} ({_REGISTRY[role][name]}) does not implement {missing}, "
                         f"which every {role} has; subclass the {role} base class (docs/architecture.md)")
    return component


@dataclasses.dataclass(frozen=True)
class PortableSpec:
    """What another process (a Ray worker) needs to build the same component: its config and the
    ``module:Class`` of its class. Built-in and entry-point components would build from the config alone; the
    class path covers one registered only in this process (a notebook, a test), which the worker registers
    under the same name before building it."""

    role: str
    spec: dict[str, Any]
    target: str

    @classmethod
    def of(cls, role: str, component: "Component") -> "PortableSpec":
        kind = type(component)
        return cls(role, component.to_config(), f"{kind.__module__}:{kind.__qualname__}")

    def build(self) -> Any:
        """The component, built in this process (registering its class under its name where that differs)."""
        if _REGISTRY[self.role].get(self.spec["type"]) != self.target:
            register(self.role, self.spec["type"], self.target)
        return build(self.role, self.spec)


def check_param_types(cls: type, params: Mapping[str, Any], owner: str) -> None:
    """Refuse a param whose value does not fit the constructor's annotation, naming the param and the value.

    Configs come from YAML and JSON files, where ``k: five`` or ``model: [a, b]`` would otherwise fail deep
    inside a constructor or, worse, much later. The check is pydantic's lax mode (``"5"`` passes for an
    ``int``) and the values are passed on unchanged; a value that passes but that the constructor still
    cannot use ends in its ``TypeError``, which :func:`build` turns into an InputError naming the component.
    """
    from pydantic import ValidationError

    for name, value in params.items():
        adapter = _param_adapter(cls, name)
        if adapter is None:
            continue
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"] if exc.errors() else str(exc)
            raise InputError(f"{owner}: param {name!r} = {value!r:.80}: {reason}") from None
        except Exception:  # noqa: BLE001 - a hint pydantic cannot build a schema for: leave it to the class
            continue


@functools.lru_cache(maxsize=None)
def _param_adapter(cls: type, name: str) -> Any:
    """A pydantic ``TypeAdapter`` for one constructor param's annotation, or None where there is none."""
    import typing

    from pydantic import ConfigDict, TypeAdapter

    try:
        hint = typing.get_type_hints(cls.__init__).get(name)
        return None if hint is None else TypeAdapter(hint, config=ConfigDict(arbitrary_types_allowed=True))
    except Exception:  # noqa: BLE001 - an annotation that does not resolve or has no schema: leave it to the class
        return None


def _check_role(role: str) -> None:
    if role not in _REGISTRY:
        raise UnknownComponentError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")


def declared_params(cls: type) -> type:
    """Class decorator: ``cls``'s annotated class attributes are its params, declared once.

    The constructor, the config round trip, equality and ``repr`` all come from the declaration (it makes
    ``cls`` a dataclass without dataclass equality or repr, which :class:`Component` supplies from the
    config); checks go in ``__post_init__``; state that is not a param is a field with ``init=False``::

        @declared_params
        class TopKFilter(BaseFilter):
            k: int = 5
            min_score: float | None = None

            def __post_init__(self) -> None:
                if self.k < 1:
                    raise InputError(f"top-k filter: k must be at least 1, got {self.k}")
    """
    return dataclasses.dataclass(eq=False, repr=False)(cls)


class Component:
    """Base for every pipeline component: serialises to ``{"type", "params"}`` and back.

    Subclasses set ``role`` and either declare their params (:func:`declared_params`) or keep each
    constructor argument on an attribute of the same name; either way the config is read back from the
    object itself, and two components are equal when their configs are.
    """

    role: str = ""

    def params(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this component."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def to_config(self) -> dict[str, Any]:
        """``{"type": registered name, "params": {...}}``, plain data for YAML/JSON."""
        return {"type": name_of(self.role, type(self)), "params": _plain(self.params())}

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_config() == other.to_config()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash(type(self).__qualname__)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def _plain(value: Any) -> Any:
    if isinstance(value, Component):
        return value.to_config()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
