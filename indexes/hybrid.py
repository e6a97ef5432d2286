"""Hybrid retrieval: several indexes behind one :class:`~rag.protocols.Index`, their rankings fused.

    >>> from indexes.hybrid import HybridIndex
    >>> index = HybridIndex()                                  # BM25 (Lucene, flat) + dense (MiniLM), RRF
    >>> index.members
    [{'type': 'bm25', 'params': {...}}, {'type': 'dense', 'params': {...}}]    # doctest: +SKIP
    >>> HybridIndex(["bm25", "bm25s"], method="weighted", weights=[0.7, 0.3])  # doctest: +SKIP

``members`` are index specs (registered names, presets, ``{"type", "params"}`` mappings or built
indexes), built with :func:`rag.registry.build`. ``add`` gives every chunk to every member; ``search`` asks
each member for its top ``max(depth, k)`` hits and fuses them by chunk id:

- ``"rrf"``: reciprocal rank fusion, ``sum_i w_i / (rrf_k + rank_i)`` with ranks from 1 and ``rrf_k=60``
  (Cormack et al. 2009); a chunk missing from a member's list gets nothing from it. ``w_i`` defaults to 1.
- ``"weighted"``: ``sum_i w_i * (s_i - min_i) / (max_i - min_i)``, each member's scores min-max
  normalised over the hits it returned for that query (a member with a single distinct score gives 1);
  a missing chunk gets 0 from that member. ``w_i`` defaults to ``1 / len(members)``.

Ties are broken by chunk id; hits carry the fused score and ``source=name``.

On disk (format version 1) a saved hybrid index is a directory holding ``manifest.json`` (see
:mod:`rag.manifest`; it adds ``members``, ``method``, ``weights``, ``depth`` and ``rrf_k``, and
checksums each member's manifest, which in turn checksums that member's files) and one subdirectory per
member, ``member-0``, ``member-1``, ..., each saved by that member in its own format.
"""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from rag.errors import InputError
from rag.manifest import MANIFEST, SavedIndex, distinct_ids
from rag.protocols import text_batch
from rag.registry import Component, build, declared_params
from rag.types import Chunk, Hit

FORMAT_VERSION = 1
KIND = "hybrid"
METHODS = ("rrf", "weighted")
DEFAULT_MEMBERS = ("bm25", "dense")


def member_directory(number: int) -> str:
    return f"member-{number}"


@declared_params
class HybridIndex(SavedIndex):
    """Indexes fused into one; see the module doc. Constructing builds the members (cheap: no models yet)."""

    manifest_kind = KIND
    manifest_version = FORMAT_VERSION

    # Member specs in; after construction, each built member's config.
    members: Sequence[str | Mapping[str, Any] | Component] | None = None
    method: str = "rrf"
    weights: Sequence[float] | None = None
    depth: int = 100
    rrf_k: int = 60
    name: str = "hybrid"
    _members: list[Any] = field(default_factory=list, init=False)  # the built member indexes, in order

    def __post_init__(self) -> None:
        name = self.name
        specs = list(DEFAULT_MEMBERS if self.members is None else self.members)
        if not specs:
            raise InputError(f"hybrid index {name!r}: needs at least one member index")
        if self.method not in METHODS:
            raise InputError(f"hybrid index {name!r}: method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.weights is not None:
            self.weights = [float(w) for w in self.weights]
            if len(self.weights) != len(specs) or any(w < 0 for w in self.weights):
                raise InputError(
                    f"hybrid index {name!r}: weights must be {len(specs)} non-negative numbers (one per member), "
                    f"got {self.weights}"
                )
        if self.depth < 1 or self.rrf_k < 0:
            raise InputError(
                f"hybrid index {name!r}: need depth >= 1 and rrf_k >= 0, got depth={self.depth}, rrf_k={self.rrf_k}"
            )
        self._members = [build("index", spec) for spec in specs]
        for number, member in enumerate(self._members):
            for method_name in ("add", "search", "delete", "save", "load"):
                if not callable(getattr(member, method_name, None)):
                    raise InputError(f"hybrid index {name!r}: member {number} ({member!r}) has no {method_name}()")
        self.members = [member.to_config() for member in self._members]

    # -- the Index protocol ------------------------------------------------------------------------

    def add(self, chunks: Iterable[Chunk]) -> None:
        """Add ``chunks`` to every member. If one member fails, the chunks are taken out of the others again."""
        chunks = list(chunks)
        if not chunks:
            return
        for chunk in chunks:
            if chunk in self:  # checked up front, so that no member is left half-updated on this error
                raise InputError(f"hybrid index {self.name!r}: chunk id {chunk.id!r} is already in the index")
        done: list[Any] = []
        try:
            for member in self._members:
                member.add(chunks)
                done.append(member)
        except BaseException:
            ids = [chunk.id for chunk in chunks]
            for member in done:
                member.delete(ids)
            raise

    def search(self, queries: str | Sequence[str], k: int = 10) -> list[list[Hit]]:
        """The ``k`` best chunks per query by fused score, best first.

        One str is one query (a batch of one), not one query per character.
        """
        if k < 1:
            raise InputError(f"hybrid index {self.name!r}: k must be at least 1, got {k}")
        queries = text_batch(queries, f"hybrid index {self.name!r}")
        if not queries:
            return []
        depth = max(self.depth, k)
        per_member = [member.search(queries, depth) for member in self._members]
        weights = self.weights or [1.0 if self.method == "rrf" else 1.0 / len(self._members)] * len(self._members)
        fuse = self._rrf if self.method == "rrf" else _min_max
        results = []
        for number in range(len(queries)):
            scores: dict[str, float] = {}
            chunks: dict[str, Chunk] = {}
            for weight, member_hits in zip(weights, per_member):
                hits = member_hits[number]
                for chunk_id, value in fuse(hits):
                    scores[chunk_id] = scores.get(chunk_id, 0.0) + weight * value
                for hit in hits:
                    chunks.setdefault(hit.chunk.id, hit.chunk)
            best = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k]
            results.append([Hit(chunk=chunks[chunk_id], score=score, source=self.name) for chunk_id, score in best])
        return results

    def delete(self, chunk_ids: Iterable[str]) -> int:
        """Remove the chunks from every member; returns how many distinct ids some member held."""
        ids = distinct_ids(chunk_ids)
        held = [chunk_id for chunk_id in ids if chunk_id in self]
        for member in self._members:
            member.delete(ids)
        return len(held)

    def __len__(self) -> int:
        return max(len(member) for member in self._members)

    def __contains__(self, item: object) -> bool:
        chunk_id = item.id if isinstance(item, Chunk) else item
        return any(_holds(member, chunk_id) for member in self._members)

    # -- persistence -------------------------------------------------------------------------------

    def write_files(self, staging: Path) -> tuple[list[str], dict[str, Any]]:
        """Every member in its own subdirectory (all inside the one atomic directory swap)."""
        for number, member in enumerate(self._members):
            member.save(staging / member_directory(number))
        return [f"{member_directory(n)}/{MANIFEST}" for n in range(len(self._members))], dict(
            members=self.members,
            method=self.method,
            weights=self.weights,
            depth=self.depth,
            rrf_k=self.rrf_k,
        )

    def check_saved_params(self, directory: Path, manifest: Mapping[str, Any]) -> None:
        saved = manifest.get("members", [])
        if [m.get("type") for m in saved] != [m["type"] for m in self.members]:
            raise InputError(
                f"{directory}: saved with members {[m.get('type') for m in saved]}, but this index has "
                f"{[m['type'] for m in self.members]}; use HybridIndex.open({str(directory)!r}) to adopt the saved config"
            )

    def read_files(self, directory: Path, manifest: dict[str, Any]) -> None:
        """Load every member (each checks its own files and config); all or nothing."""
        fresh = [build("index", config) for config in self.members]
        for number, member in enumerate(fresh):
            member.load(directory / member_directory(number))
        self._members = fresh


    # -- helpers -----------------------------------------------------------------------------------

    @property
    def indexes(self) -> list[Any]:
        """The member indexes, in order (for inspection; change them through this index)."""
        return list(self._members)

    def warm_up(self) -> None:
        """Warm up every member that can (load models, start Java)."""
        for member in self._members:
            warm_up = getattr(member, "warm_up", None)
            if callable(warm_up):
                warm_up()

    def _rrf(self, hits: list[Hit]) -> Iterable[tuple[str, float]]:
        return ((hit.chunk.id, 1.0 / (self.rrf_k + rank)) for rank, hit in enumerate(hits, start=1))


def _min_max(hits: list[Hit]) -> Iterable[tuple[str, float]]:
    if not hits:
        return ()
    low = min(hit.score for hit in hits)
    span = max(hit.score for hit in hits) - low
    if span <= 0:
        return ((hit.chunk.id, 1.0) for hit in hits)
    return ((hit.chunk.id, (hit.score - low) / span) for hit in hits)


def _holds(member: Any, chunk_id: object) -> bool:
    try:
        return chunk_id in member
    except TypeError:  # a member without __contains__
        return False
