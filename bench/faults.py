"""Kill index writers at random moments and check that the path holds the complete old or new version (issue 21).

    python -m bench.faults [--kinds dense,bm25,...] [--trials 20] [--seed 0] [--data ../shared/data/scifact]
                           [--work DIR] [--threads 1] [--fallback]

For each index kind: build the **old** version (the first 40 SciFact documents) and the **new** one (old plus
the next 10, added incrementally) once, without faults, and record each one's top-10 ids for 5 queries. Then
each trial copies the old version to a fresh path and starts a child process that loads it, adds the 10
documents and saves to the same path; the parent SIGKILLs the child, then opens the path as a user would
(the kind's ``load``) and compares its search results with both references:

- **old** / **new**: identical ids to that version (and the loaded count matches it);
- **torn**: anything else, or a load error (must be 0);
- **leftovers cleaned**: trials where the kill left staging or swapped-out folders beside the path and the
  load removed them.

Kill moments: odd trials at a uniformly random moment between the child's "loaded" signal and its measured
end (add, build, write and commit), even trials inside the commit step itself (after the staging copy is
complete: while it is fsynced, at the swap, or while the old version is removed). So that the commit step,
which takes milliseconds, can be hit, the child sleeps 50 ms before and after each of its steps; the delays
widen the windows and change nothing else. ``--fallback`` runs every kind a second time with the commit of
systems that have no atomic directory exchange (two renames; the next load puts the old version back if the
kill fell between them). Ends with one JSON line; exit status 1 if any state was torn.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
QUERIES = ["vitamin D deficiency", "gene expression in tumour cells", "antibiotic resistance", "blood pressure",
           "stem cell differentiation"]
COMMIT_DELAY_S = 0.05
PHASE_BYTES = 64

# Every index kind users save, built small (one Ray shard pair for `sharded`).
SPECS: dict[str, dict[str, Any]] = {
    "dense": {"type": "dense", "params": {"model": "minilm"}},
    "bm25": {"type": "bm25", "params": {}},
    "bm25s": {"type": "bm25s", "params": {}},
    "splade": {"type": "splade", "params": {}},
    "late": {"type": "late", "params": {"model": "minilm", "nlist": 8, "nprobe": 2, "candidates": 8}},
    "late-rerank": {"type": "late-rerank", "params": {"model": "minilm", "depth": 5}},
    "hybrid": {"type": "hybrid", "params": {"members": ["bm25s", "dense"]}},
    "sharded": {"type": "sharded", "params": {"shard": "bm25s", "shards": 2, "threads": 1}},
}


def load_chunks(data: Path, count: int) -> list[Any]:
    """The first ``count`` documents of a BEIR corpus, one chunk each."""
    from rag.io import read_jsonl
    from rag.types import Chunk

    chunks = []
    for _, record in read_jsonl(data / "corpus.jsonl"):
        text = str(record.get("text", ""))
        chunks.append(Chunk(id=str(record["_id"]), doc_id=str(record["_id"]), text=text, start=0, end=len(text),
                            title=str(record.get("title", ""))))
        if len(chunks) == count:
            break
    return chunks


def top_ids(index: Any) -> list[list[str]]:
    return [[hit.chunk.id for hit in hits] for hits in index.search(QUERIES, 10)]


def leftovers(path: Path) -> list[str]:
    """Staging and swapped-out folders that saves of ``path`` made beside it."""
    prefixes = (f".{path.name}.tmp-", f".{path.name}.old-")
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(prefixes))


def child(spec: dict[str, Any], target: Path, added: Path, phase_file: Path, delay: float,
          fallback: bool = False) -> None:
    """Load ``target``, add the chunks in ``added``, save to ``target``; report each step in ``phase_file``.

    ``fallback`` commits as on systems without an atomic exchange (two renames, recovered on the next load).
    """
    import rag.io
    from rag.registry import build
    from rag.types import Chunk

    phase_fd = os.open(phase_file, os.O_WRONLY)

    def phase(name: str) -> None:
        os.pwrite(phase_fd, name.encode().ljust(PHASE_BYTES), 0)  # one fixed-size write: never read half-done
        time.sleep(delay)

    def step(name: str, original: Any) -> Any:
        def wrapped(*args: Any) -> Any:
            phase(f"commit:{name}")
            result = original(*args)
            phase(f"commit:{name} done")
            return result
        return wrapped

    # rag.io's commit calls these through its module globals, so wrapping them here marks the commit steps
    # (getattr: the harness also runs against older commit code, to show that it finds torn states there).
    if fallback:
        rag.io._exchange = lambda a, b: False
    for name, label in (("_sync_tree", "fsync"), ("_exchange", "swap")):
        if hasattr(rag.io, name):
            setattr(rag.io, name, step(label, getattr(rag.io, name)))
    if hasattr(rag.io, "_sync_directory"):
        sync_parent, sync_directory = step("fsync-parent", rag.io._sync_directory), rag.io._sync_directory
        rag.io._sync_directory = lambda path: (sync_parent if Path(path) == target.parent else sync_directory)(path)
    replace = step("rename", os.replace)

    def renames_at_target(source: Any, destination: Any) -> None:
        if target in (Path(source), Path(destination)):  # the commit's renames, not files inside the staging
            return replace(source, destination)
        return os_replace(source, destination)

    os_replace, rag.io.os.replace = os.replace, renames_at_target
    index = build("index", spec)
    index.load(target)
    chunks = [Chunk(**json.loads(line)) for line in added.read_text().splitlines()]
    print("loaded", flush=True)
    phase("add")
    index.add(chunks)
    phase("save")
    index.save(target)
    phase("done")


def run_kind(kind: str, spec: dict[str, Any], old_chunks: list[Any], new_chunks: list[Any], trials: int,
             work: Path, rng: random.Random, threads: int, fallback: bool = False) -> dict[str, Any]:
    """Reference versions, then ``trials`` killed saves of ``kind``; the counts of the table."""
    from rag.registry import build

    base = work / kind
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    index = build("index", spec)
    index.add(old_chunks)
    index.save(base / "old")
    old_ids, old_count = top_ids(index), len(index)
    index.add(new_chunks)
    new_ids, new_count = top_ids(index), len(index)
    added = base / "added.jsonl"
    added.write_text("".join(json.dumps(c.to_dict()) + "\n" for c in new_chunks))
    errors = base / "writer-stderr.log"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), SPECRAG_THREADS=str(threads))

    def start(target: Path, phase_file: Path) -> subprocess.Popen:
        code = ("import json; from pathlib import Path; from bench.faults import child; "
                f"child(json.loads({json.dumps(spec)!r}), Path({str(target)!r}), Path({str(added)!r}), "
                f"Path({str(phase_file)!r}), {COMMIT_DELAY_S}, {fallback})")
        with errors.open("ab") as sink:  # the child's own messages, for a writer that fails by itself
            return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=sink,
                                    text=True, env=env, start_new_session=True)

    # One unkilled run: how long the add and save take after "loaded" (the window for random kills).
    target, phase_file = base / "index", base / "phase"
    shutil.copytree(base / "old", target)
    phase_file.write_text("start")
    proc = start(target, phase_file)
    if proc.stdout is None or proc.stdout.readline().strip() != "loaded":
        proc.wait()
        raise RuntimeError(f"{kind}: the writer child failed before loading (run it by hand to see why)")
    began = time.monotonic()
    if proc.wait(timeout=600) != 0:
        raise RuntimeError(f"{kind}: the unkilled writer child failed (exit {proc.returncode})")
    window = time.monotonic() - began
    counts = {"kind": kind + (" (fallback)" if fallback else ""), "trials": trials, "old": 0, "new": 0, "torn": 0,
              "killed_in_commit": 0, "child_failed": 0, "finished_before_kill": 0, "leftovers_found": 0,
              "leftovers_cleaned": 0, "window_s": round(window, 2), "phases": {}}
    for trial in range(trials):
        shutil.rmtree(target, ignore_errors=True)
        for name in leftovers(target):
            shutil.rmtree(target.parent / name, ignore_errors=True)
        shutil.copytree(base / "old", target)
        phase_file.write_text("start")
        proc = start(target, phase_file)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "loaded":
            proc.wait()
            raise RuntimeError(f"{kind}: the writer child failed before loading")
        if trial % 2 == 0:  # inside the commit: wait for its first step, then a random moment of it
            deadline = time.monotonic() + window * 3 + 30
            while not phase_file.read_text().startswith("commit") and proc.poll() is None:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 6 * COMMIT_DELAY_S))
        else:
            time.sleep(rng.uniform(0, window))
        finished = proc.poll() is not None
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # it had already exited (and its group with it)
            pass
        if proc.wait() not in (0, -signal.SIGKILL):
            counts["child_failed"] += 1
            print(f"{kind} trial {trial}: the writer failed by itself (exit {proc.returncode}; see {errors})",
                  file=sys.stderr)
        last_phase = phase_file.read_text().strip()
        counts["phases"][last_phase] = counts["phases"].get(last_phase, 0) + 1
        counts["finished_before_kill"] += finished and last_phase == "done"
        counts["killed_in_commit"] += last_phase.startswith("commit") and not finished
        found = leftovers(target)
        counts["leftovers_found"] += bool(found)
        try:
            loaded = build("index", spec)
            loaded.load(target)
            ids, count = top_ids(loaded), len(loaded)
        except Exception as exc:  # noqa: BLE001 - any failure to load is a torn state, reported
            print(f"{kind} trial {trial}: load failed after a kill in phase {last_phase!r}: {exc}", file=sys.stderr)
            counts["torn"] += 1
            continue
        if (ids, count) == (old_ids, old_count):
            counts["old"] += 1
        elif (ids, count) == (new_ids, new_count):
            counts["new"] += 1
        else:
            print(f"{kind} trial {trial}: neither version after a kill in phase {last_phase!r}", file=sys.stderr)
            counts["torn"] += 1
        counts["leftovers_cleaned"] += bool(found) and not leftovers(target)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default=",".join(SPECS), help=f"comma-separated (default: {','.join(SPECS)})")
    parser.add_argument("--trials", type=int, default=20, help="killed saves per kind (default: 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BEIR corpus for the documents (default: SciFact)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--threads", type=int, default=1, help="torch/faiss threads here and in the children")
    parser.add_argument("--fallback", action="store_true",
                        help="also run every kind with the two-rename commit of systems without an atomic exchange")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(SPECS))
    if unknown:
        parser.error(f"unknown kinds {unknown}; known: {', '.join(SPECS)}")
    from indexes.ray_workers import set_worker_threads

    set_worker_threads(args.threads)
    chunks = load_chunks(Path(args.data), 50)
    rng = random.Random(args.seed)
    import tempfile

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="specrag-faults-"))
    rows = []
    try:
        for kind in kinds:
            started = time.monotonic()
            for fallback in (False, True) if args.fallback else (False,):
                rows.append(run_kind(kind, SPECS[kind], chunks[:40], chunks[40:], args.trials, work, rng,
                                     args.threads, fallback))
                print(f"{rows[-1]['kind']}: {rows[-1]} ({time.monotonic() - started:.0f} s)", file=sys.stderr,
                      flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    columns = ["kind", "trials", "old", "new", "torn", "killed_in_commit", "child_failed", "finished_before_kill",
               "leftovers_found", "leftovers_cleaned", "window_s"]
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
    torn = sum(r["torn"] for r in rows)
    failed = sum(r["child_failed"] for r in rows)
    print(json.dumps({"seed": args.seed, "trials_per_kind": args.trials, "rows": rows, "torn": torn,
                      "child_failed": failed}))
    return 1 if torn or failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
