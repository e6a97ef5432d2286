"""indexes.lucene leaves the user's environment as it found it: JAVA_HOME and OPENAI_API_KEY (issue 20)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from indexes.lucene import JavaError, java_major_version

ROOT = Path(__file__).resolve().parents[2]
WATCHED = ("JAVA_HOME", "OPENAI_API_KEY")

# Import the Lucene module, start the JVM through a real BM25 search, then import pyserini (which builds an
# OpenAI client on import): everything that used to write JAVA_HOME and OPENAI_API_KEY.
USE_LUCENE = """
import json, os, sys
from indexes.bm25 import BM25Index
from indexes.lucene import pyserini_module
from rag.types import Chunk
watched = sys.argv[1].split(",")
index = BM25Index()
index.add([Chunk(id="c1", doc_id="d1", text="Aspirin thins the blood.", start=0, end=24)])
found = [h.chunk.id for h in index.search(["blood"], k=1)[0]]
pyserini_module("search.lucene")
print(json.dumps({"found": found, "environment": {name: os.environ.get(name) for name in watched}}))
"""


@pytest.mark.parametrize(
    "users",
    [
        # A JAVA_HOME of the user's own (here not even a Java) is kept, and not used to start the JVM.
        {"JAVA_HOME": "/opt/the-users-own-java", "OPENAI_API_KEY": "sk-the-users-own-key"},
        {},  # unset stays unset: no placeholder key, no JAVA_HOME left behind
    ],
    ids=["set-by-the-user", "unset"],
)
def test_starting_lucene_and_importing_pyserini_leave_the_environment_unchanged(users: dict[str, str]) -> None:
    env = {name: value for name, value in os.environ.items() if name not in WATCHED} | users
    child = subprocess.run(
        [sys.executable, "-c", USE_LUCENE, ",".join(WATCHED)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["found"] == ["c1"]  # Lucene did run
    assert result["environment"] == {name: users.get(name) for name in WATCHED}


def test_a_runtime_older_than_java_21_is_refused_naming_where_it_came_from(tmp_path: Path) -> None:
    old = tmp_path / "java-17"
    (old / "bin").mkdir(parents=True)
    (old / "bin" / "java").write_text("")
    (old / "release").write_text('IMPLEMENTOR="Debian"\nJAVA_VERSION="17.0.15"\n')
    assert java_major_version(old) == 17 and java_major_version(tmp_path) is None
    (tmp_path / "release").write_text('JAVA_VERSION="1.8.0_402"\n')
    assert java_major_version(tmp_path) == 8
    # In a child: this process may already run a JVM, and start_jvm() is then a no-op.
    code = "from indexes.lucene import start_jvm\nstart_jvm()"
    env = {**os.environ, "SPECRAG_JAVA_HOME": str(old)}
    child = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=120, check=False)
    assert child.returncode != 0
    assert JavaError.__name__ in child.stderr
    assert f"{old} (from SPECRAG_JAVA_HOME) is Java 17; Anserini needs Java 21 or newer" in child.stderr
