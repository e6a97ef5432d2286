"""What a measurement on this machine depends on, and where its result is cached.

Components that choose an implementation by measuring it (``engine="auto"`` for causal LMs,
``dtype="auto"`` for encoders) key their cached choice by :func:`machine_key`: the CPU model and feature
flags, the thread count, and the versions of the libraries that do the arithmetic. A different machine, or
the same machine with other threads, measures again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from functools import lru_cache
from typing import Any


def machine_facts() -> dict[str, Any]:
    """What makes timings differ between machines (part of the cache key)."""
    facts = dict(_fixed_facts())
    try:
        import torch

        facts["threads"] = torch.get_num_threads()
    except ImportError:
        facts["threads"] = os.cpu_count()
    return facts


@lru_cache(maxsize=1)
def _fixed_facts() -> tuple[tuple[str, Any], ...]:
    """The facts a process cannot change (CPU, flags, versions), read once: about 20 ms, and the auto
    choices ask for the facts on every call."""
    cpu_model, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name") and ":" in line:
                    cpu_model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    facts: dict[str, Any] = {"cpu": cpu_model, "flags_sha": hashlib.sha256(flags.encode()).hexdigest()[:12],
                             "machine": platform.machine(), "python": platform.python_version()}
    try:
        import torch

        facts["torch"] = torch.__version__
    except ImportError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        facts["llama_cpp_python"] = version("llama-cpp-python")
    except PackageNotFoundError:  # not installed: llama.cpp is then simply not a candidate
        facts["llama_cpp_python"] = None
    return tuple(facts.items())


def machine_key(facts: dict[str, Any] | None = None) -> str:
    """A short hash of :func:`machine_facts`: the folder name of this machine's cached measurements."""
    facts = facts or machine_facts()
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def load_average() -> float | None:
    """The one-minute load average (None where the platform has none): a busy machine measures wrong."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not on every platform
        return None


def say(message: str) -> None:
    """Tell the user, on stderr, what a measurement is doing or chose."""
    print(f"[specrag] {message}", file=sys.stderr, flush=True)
