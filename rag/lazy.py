"""Lazy imports of optional dependencies, failing with the install line when one is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from rag.errors import MissingExtraError


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise an error that says which extra (or package) installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        wanted = package or module.split(".")[0]
        raise MissingExtraError(
            f"{module} is needed here but is not installed ({exc}). "
            f"Install it with: pip install 'specrag[{extra}]'  (or: pip install {wanted})"
        ) from exc
