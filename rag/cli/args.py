"""Argument types and value parsers that several commands share (one copy each)."""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from rag.errors import InputError


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number of at least 0 (seconds, for one)."""
    import math

    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, got {text}")
    return value


def thread_count(text: str) -> int:
    """A ``--threads`` value: a whole number of at least 1 (argparse turns the error into a usage line)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1 thread, got {value}")
    return value


def parse_settings(settings: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--set`` values: ``["first.model=qwen2.5-1.5b", "threshold.min_score=12"]`` ->
    ``{"first": {"model": ...}, "threshold": {"min_score": 12}}`` (each VALUE read as YAML)."""
    import yaml

    parsed: dict[str, dict[str, Any]] = {}
    for item in settings:
        target, eq, value = item.partition("=")
        name, dot, key = target.rpartition(".")
        if not eq or not dot or not name or not key:
            raise InputError(f"--set {item!r}: expected NAME.KEY=VALUE, e.g. calibrated.path=filter.json")
        try:
            parsed.setdefault(name, {})[key] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError as exc:  # not a ValueError: say which --set it was
            problem = " ".join(str(exc).split())
            raise InputError(f"--set {item!r}: VALUE is not valid YAML ({problem})") from None
    return parsed
