"""Model references: a pack name, a local path or an ``owner/name`` hub id, turned into what transformers loads
(:func:`resolve_model`), with a one-line error and a did-you-mean hint for anything else."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from rag.errors import PackError
from rag.models.packs import PACKS
from rag.models.store import cache_dir, fetch, pack_status


def resolve_model(name_or_path: str | os.PathLike[str], *, fetch_missing: bool = True) -> str:
    """The one way components turn a model reference into something transformers can load.

    * a pack name from :data:`PACKS` -> its local folder, fetched first if absent (``fetch_missing``);
    * an existing local path -> that path;
    * an ``owner/name`` hub id -> returned unchanged, for users who have a model hub;
    * anything else (a mistyped pack name, a path that does not exist) -> :class:`PackError` naming it and
      listing the packs, instead of a hub lookup that fails deep inside transformers.

    Pack names win over a same-named folder in the working directory; write ``./minilm`` for the folder.

    >>> resolve_model("org/some-model")
    'org/some-model'
    >>> resolve_model("qwen2.5-05b")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rag.errors.PackError: model 'qwen2.5-05b' is not a model pack, an existing path or an owner/name hub id (did you mean 'qwen2.5-0.5b'?); known packs: ...
    """
    reference = os.fspath(name_or_path)
    if reference in PACKS:
        status = pack_status(reference)
        if status.state == PACKS[reference].final_state and status.path is not None:
            return str(status.path)
        if not fetch_missing:
            raise PackError(
                f"model pack {reference!r} is not ready in the cache {cache_dir()} (state: {status.state}); "
                f"run `specrag models fetch {reference}`"
            )
        (status,) = fetch([reference])
        return str(status.path)
    local = Path(reference).expanduser()
    if reference and local.exists():
        # As given (only ~ expanded): Path() would turn "./minilm" into "minilm", which names the pack.
        return str(local) if reference.startswith("~") else reference
    if HUB_ID.fullmatch(reference):
        return reference
    raise PackError(_not_a_model(reference))


# What the hub accepts as a repository id: ``owner/name``, each part letters, digits, ``-``, ``_`` and ``.``,
# not starting with ``.`` or ``-`` (so ``./x`` and ``../x`` stay paths). Single-word legacy ids such as
# ``gpt2`` are not accepted: they cannot be told apart from a mistyped pack name.
HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*/[A-Za-z0-9_][\w.-]*")


def pack_hint(name: str) -> str:
    """`` (did you mean 'minilm'?)`` for a name close to a pack's (``minlm``), else ``""``."""
    close = difflib.get_close_matches(name.lower(), list(PACKS), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _not_a_model(reference: str) -> str:
    """The one-line error for a model reference that is no pack, no existing path and no hub id."""
    if not reference.strip():
        return f"model reference is empty; give a model pack ({', '.join(PACKS)}), a path or an owner/name hub id"
    if any(sep in reference for sep in ("/", os.sep)) or reference.startswith((".", "~")):
        return (
            f"model {reference!r}: no such file or directory ({Path(reference).expanduser().absolute()}); a model "
            f"is a pack ({', '.join(PACKS)}), an existing path or an owner/name hub id"
        )
    return (
        f"model {reference!r} is not a model pack, an existing path or an owner/name hub id{pack_hint(reference)}; "
        f"known packs: {', '.join(PACKS)} (`specrag models list` shows them)"
    )
