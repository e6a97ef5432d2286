"""Build flags for llama-cpp-python that follow this machine's CPU (run by ``make``; standard library only).

llama-cpp-python ships no wheel for this platform, so ``make`` compiles it. Its default build uses the
compiler's native flags, which is wrong in two ways seen on our machines: a virtual CPU that advertises AMX
but does not run it dies with "Illegal instruction" as soon as a model loads (ggml repacks tensors for AMX),
and a wheel built natively on one machine crashes on a CPU without AVX-512. So the flags are derived from
the CPU's own feature list (``/proc/cpuinfo``), never hard-coded, and the AMX code paths are always left
out: nothing here can check that AMX actually runs, and llama.cpp reaches its speed on AVX-512/AVX2 alone.
``SPECRAG_LLAMA_AMX=1`` turns them on for a user whose machine runs AMX.

    python -m rag.generation.llama_build            # prints the CMAKE_ARGS for this CPU
    python -m rag.generation.llama_build --key      # a short key of those flags (the wheel cache's name)
    python -m rag.generation.llama_build --install  # build the wheel once per flag set (cached), install it

The wheel is built once per set of flags into ``<specrag cache>/wheels/`` (``SPECRAG_CACHE``, default
``~/.cache/specrag``) and reused by later installs: compiling takes about 6-10 minutes on 2 cores.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# The version the project is tested with (constraints.txt pins the same).
LLAMA_CPP_VERSION = "0.3.36"

# ggml option -> the /proc/cpuinfo flag that must be present for it.
_X86_FLAGS: tuple[tuple[str, str], ...] = (
    ("GGML_SSE42", "sse4_2"),
    ("GGML_AVX", "avx"),
    ("GGML_AVX2", "avx2"),
    ("GGML_FMA", "fma"),
    ("GGML_F16C", "f16c"),
    ("GGML_BMI2", "bmi2"),
    ("GGML_AVX_VNNI", "avx_vnni"),
    ("GGML_AVX512", "avx512f"),
    ("GGML_AVX512_VBMI", "avx512vbmi"),
    ("GGML_AVX512_VNNI", "avx512_vnni"),
    ("GGML_AVX512_BF16", "avx512_bf16"),
)
_AMX_FLAGS: tuple[tuple[str, str], ...] = (
    ("GGML_AMX_TILE", "amx_tile"),
    ("GGML_AMX_INT8", "amx_int8"),
    ("GGML_AMX_BF16", "amx_bf16"),
)


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The feature flags of the first CPU in ``/proc/cpuinfo`` (empty where there is no such file)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                cpuinfo = handle.read()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def cmake_args(flags: set[str] | None = None, machine: str | None = None, amx: bool | None = None) -> list[str]:
    """CMake options for ggml on this CPU: native detection off, each x86 feature on only where present."""
    flags = cpu_flags() if flags is None else flags
    machine = (machine or platform.machine()).lower()
    amx = os.environ.get("SPECRAG_LLAMA_AMX") == "1" if amx is None else amx
    args = ["-DGGML_NATIVE=OFF"]
    if machine in ("x86_64", "amd64"):
        for option, flag in _X86_FLAGS:
            args.append(f"-D{option}={'ON' if flag in flags else 'OFF'}")
        for option, flag in _AMX_FLAGS:
            args.append(f"-D{option}={'ON' if amx and flag in flags else 'OFF'}")
    return args


def build_key(args: list[str]) -> str:
    """A short, stable name for a set of build flags, so that a cached wheel is reused only for them."""
    return hashlib.sha256(" ".join(args).encode()).hexdigest()[:12]


def wheel_dir(args: list[str]) -> Path:
    """Where the wheel built with ``args`` is kept (one folder per flag set and version)."""
    configured = os.environ.get("SPECRAG_CACHE", "").strip()  # as rag.models.cache_dir, without importing it
    root = Path(configured).expanduser() if configured else Path.home() / ".cache" / "specrag"
    return root / "wheels" / f"llama-cpp-python-{LLAMA_CPP_VERSION}-{build_key(args)}"


def install(python: str = sys.executable) -> Path:
    """Build llama-cpp-python for this CPU (once; later calls reuse the wheel) and install it into ``python``."""
    args = cmake_args()
    target = wheel_dir(args)
    wheels = sorted(target.glob("llama_cpp_python-*.whl")) if target.is_dir() else []
    if not wheels:
        print(f"[specrag] compiling llama-cpp-python {LLAMA_CPP_VERSION} for this CPU (6-10 minutes, once): "
              + " ".join(args), flush=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Built in a temporary folder beside the target and renamed into place: an interrupted build leaves
        # nothing that a later install would take for a finished wheel.
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".building-") as staging:
            env = dict(os.environ, CMAKE_ARGS=" ".join(args))
            env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
            subprocess.run([python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-cache-dir",
                            "--no-binary", "llama-cpp-python", f"llama-cpp-python=={LLAMA_CPP_VERSION}",
                            "-w", staging], env=env, check=True)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
            os.mkdir(staging)  # TemporaryDirectory removes it on exit
        wheels = sorted(target.glob("llama_cpp_python-*.whl"))
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(wheels[-1])],
                   check=True)
    return wheels[-1]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = cmake_args()
    if "--install" in argv:
        print(f"[specrag] llama-cpp-python installed from {install()}")
    else:
        print(build_key(args) if "--key" in argv else " ".join(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
