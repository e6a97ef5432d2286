"""Pipeline configuration: a pydantic model that round-trips through YAML and JSON.

Python objects are the source of truth; this module only serialises them. Every run writes its resolved
config next to its outputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rag.errors import InputError

CONFIG_VERSION = 1


class ComponentSpec(BaseModel):
    """``{"type": registered name, "params": {...}}``."""

    model_config = ConfigDict(extra="forbid")
    type: str
    params: dict[str, Any] = Field(default_factory=dict)


class PipelineConfig(BaseModel):
    """Everything that rebuilds a :class:`rag.pipeline.Pipeline`."""

    model_config = ConfigDict(extra="forbid")
    version: int = CONFIG_VERSION
    chunker: ComponentSpec
    index: ComponentSpec
    reranker: ComponentSpec | None = None
    filters: list[ComponentSpec] = Field(default_factory=list)
    compressor: ComponentSpec | None = None
    generator: ComponentSpec | None = None
    retrieve_k: int = Field(default=20, ge=1)
    budget_tokens: int | None = Field(default=None, ge=1)
    loop: ComponentSpec | None = None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or JSON file into plain data, naming the file on any error."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; expected a YAML or JSON config file")
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        if path.suffix.lower() in {".yaml", ".yml"}:
            import yaml

            data = yaml.safe_load(raw)
        else:
            data = json.loads(raw)
    except Exception as exc:  # yaml and json raise different types; both mean a malformed file
        raise InputError(f"{path}: malformed {path.suffix.lstrip('.') or 'config'} ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_pipeline_config(data: dict[str, Any], source: str = "config") -> PipelineConfig:
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InputError(f"{source}: invalid pipeline config: {problems}") from None
    if config.version != CONFIG_VERSION:
        raise InputError(f"{source}: pipeline config version {config.version}, this specrag reads {CONFIG_VERSION}")
    return config


def dump_config(data: dict[str, Any], path: str | Path) -> None:
    """Write plain config data as YAML or JSON (by suffix), atomically."""
    from rag.io import atomic_write_bytes

    path = Path(path)
    if path.suffix.lower() in {".yaml", ".yml"}:
        import yaml

        text = yaml.safe_dump(data, sort_keys=False)
    else:
        text = json.dumps(data, indent=2) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
