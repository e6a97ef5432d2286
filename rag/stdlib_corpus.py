"""The demo corpus: documentation strings of the running interpreter's standard library.

Nothing is shipped: the texts come from the interpreter itself through ``inspect``, so the demo runs on a
fresh machine with only what we wrote. One document per module, class, function or method docstring.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import warnings

from rag.types import Document

# Modules people ask about, chosen to be side-effect free on import (``this`` and ``antigravity`` are not).
DEFAULT_MODULES = (
    "abc", "argparse", "array", "asyncio", "base64", "bisect", "calendar", "collections", "collections.abc",
    "concurrent.futures", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "enum",
    "fnmatch", "fractions", "functools", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client",
    "inspect", "io", "itertools", "json", "logging", "math", "multiprocessing", "operator", "os", "os.path",
    "pathlib", "pickle", "platform", "pprint", "queue", "random", "re", "secrets", "shelve", "shlex", "shutil",
    "signal", "socket", "sqlite3", "statistics", "string", "struct", "subprocess", "sys", "tempfile", "textwrap",
    "threading", "time", "timeit", "traceback", "typing", "unittest", "urllib.parse", "urllib.request", "uuid",
    "warnings", "weakref", "zipfile", "zlib",
)
MIN_DOC_CHARS = 40


def stdlib_documents(modules: tuple[str, ...] = DEFAULT_MODULES) -> list[Document]:
    """One :class:`Document` per documented public object of ``modules``, titled by its dotted name."""
    documents: dict[str, Document] = {}
    for module_name in modules:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(module_name)
        except ImportError:  # an interpreter built without a module (e.g. no sqlite3) still has a demo
            continue
        _add(documents, module_name, module, kind="module")
        for name, member in _public_members(module):
            if getattr(member, "__module__", module_name) not in (module_name, _private_twin(module_name)):
                continue  # re-exported from elsewhere: documented under its own module
            qualified = f"{module_name}.{name}"
            _add(documents, qualified, member, kind="class" if inspect.isclass(member) else "function")
            if inspect.isclass(member):
                for method_name, method in _public_members(member):
                    if method_name in vars(member):
                        _add(documents, f"{qualified}.{method_name}", method, kind="method")
    return list(documents.values())


def _public_members(obj: object) -> list[tuple[str, object]]:
    members = []
    for name in sorted(vars(obj)):
        if name.startswith("_"):
            continue
        member = getattr(obj, name, None)
        if inspect.isclass(member) or inspect.isroutine(member):
            members.append((name, member))
    return members


def _private_twin(module_name: str) -> str:
    # functools.lru_cache lives in functools, but e.g. heapq's functions come from _heapq
    return "_" + module_name.rsplit(".", 1)[-1]


def _add(documents: dict[str, Document], qualified: str, obj: object, kind: str) -> None:
    doc = inspect.getdoc(obj)
    if not doc or len(doc) < MIN_DOC_CHARS or qualified in documents:
        return
    signature = ""
    if kind in {"function", "method"}:
        try:
            signature = str(inspect.signature(obj))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            signature = ""
    documents[qualified] = Document(
        text=doc, id=qualified, title=f"{qualified}{signature}",
        metadata={"kind": kind, "python": sys.version.split()[0]},
    )
