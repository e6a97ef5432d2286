"""Peak memory of chunking and indexing one very large document (issue 21: bounded resources).

    python -m bench.memory [--mb 50] [--cases fixed+bm25s,sentence+bm25s,fixed+bm25] [--threads 1]

One document of ``--mb`` megabytes (UTF-8) is built by joining the SciFact abstracts (corpus order, again
from the start when they run out) with blank lines and written as a one-line corpus JSONL. Each case runs
in its own fresh process: it builds the chunker and the index, warms both up on a short document (models,
tokenizers, the JVM load outside the measurement), reads its resident size, resets the kernel's peak
counter (``/proc/self/clear_refs``), then reads the corpus file, chunks the document, adds the chunks to
the index and saves it. The peak resident size above the warm baseline (``VmHWM`` minus ``VmRSS`` before)
is what chunking and indexing the document cost; it is printed in MB and as a multiple of the document's
size. Dense indexes are left out: embedding 50 MB (about 12 million word pieces) takes hours on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
CASES = {
    "fixed+bm25s": ("fixed", "bm25s"),
    "sentence+bm25s": ("sentence", "bm25s"),
    "fixed+bm25": ("fixed", "bm25"),
}


def build_corpus(data_dir: Path, megabytes: float, path: Path) -> int:
    """Write a one-document corpus of about ``megabytes`` MB of text to ``path``; returns its UTF-8 size."""
    from rag.io import read_documents

    texts = [doc.text for doc in read_documents(data_dir / "corpus.jsonl")]
    target = int(megabytes * 1_000_000)
    parts: list[str] = []
    size = 0
    while size < target:
        for text in texts:
            parts.append(text)
            size += len(text.encode("utf-8")) + 2
            if size >= target:
                break
    text = "\n\n".join(parts)
    path.write_text(json.dumps({"_id": "big", "title": "", "text": text}) + "\n", encoding="utf-8")
    return len(text.encode("utf-8"))


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (this benchmark needs Linux)")


def run_case(chunker_name: str, index_name: str, corpus: Path, out: Path) -> dict[str, float]:
    """In this process: warm up, reset the peak, chunk and index the corpus; the memory figures."""
    import time

    from rag.io import read_documents
    from rag.registry import build
    from rag.types import Document

    chunker = build("chunker", chunker_name)
    index = build("index", index_name)
    index.add(chunker.chunk(Document(text="A short warm-up document. It has two sentences.", id="warm")))
    index.delete(["warm#0"])
    baseline = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    started = time.perf_counter()
    documents = read_documents(corpus)
    chunks = chunker.chunk_many(documents)
    chunk_peak = _status("VmHWM")
    index.add(chunks)
    index.save(out)
    seconds = time.perf_counter() - started
    return {
        "baseline_mb": baseline / 1e6,
        "chunking_peak_mb": (chunk_peak - baseline) / 1e6,
        "peak_mb": (_status("VmHWM") - baseline) / 1e6,
        "chunks": len(chunks),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder whose corpus.jsonl gives the text")
    parser.add_argument("--mb", type=float, default=50.0, help="document size in MB (default 50)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"chunker+index pairs (default {','.join(CASES)})")
    parser.add_argument("--threads", type=int, default=1, help="torch/BLAS threads of each case (default 1)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.case:  # the child: one measurement, one JSON line
        import torch

        torch.set_num_threads(args.threads)
        chunker_name, index_name = CASES[args.case]
        with tempfile.TemporaryDirectory() as scratch:
            print(json.dumps(run_case(chunker_name, index_name, Path(args.corpus), Path(scratch) / "index")))
        return 0

    unknown = sorted(set(args.cases.split(",")) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    with tempfile.TemporaryDirectory() as scratch:
        corpus = Path(scratch) / "corpus.jsonl"
        size = build_corpus(Path(args.data), args.mb, corpus)
        print(f"document: {size / 1e6:.1f} MB of SciFact abstracts, one line of {corpus.name}; threads {args.threads}")
        print(f"{'case':<16} {'chunks':>8} {'seconds':>8} {'chunking MB':>12} {'peak MB':>9} {'x doc':>6}")
        results = []
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        for case in args.cases.split(","):
            child = subprocess.run(
                [sys.executable, "-m", "bench.memory", "--case", case, "--corpus", str(corpus),
                 "--threads", str(args.threads)],
                capture_output=True, text=True, env=env,
            )
            if child.returncode != 0:
                print(f"{case:<16} failed: {child.stderr.strip().splitlines()[-1:]}")
                results.append({"case": case, "error": child.stderr.strip()[-500:]})
                continue
            measured = json.loads(child.stdout.strip().splitlines()[-1])
            measured["times_document"] = measured["peak_mb"] * 1e6 / size
            results.append({"case": case, **measured})
            print(f"{case:<16} {measured['chunks']:>8} {measured['seconds']:>8.1f} {measured['chunking_peak_mb']:>12.0f} "
                  f"{measured['peak_mb']:>9.0f} {measured['times_document']:>6.1f}")
        print("peak MB: resident memory above the warm baseline (models and imports loaded), whole run")
        print(json.dumps({"document_bytes": size, "threads": args.threads, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
