"""The ``specrag`` command line. ``specrag --help`` lists the commands; each has its own ``--help``."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

from rag.errors import InputError, SpecragError

DEMO_QUESTION = "How do I cache the results of an expensive function?"
DEMO_DIR = Path(".specrag") / "demo-stdlib"


THREADS_ENV = "SPECRAG_THREADS"

# Failures a user causes and can fix: our own errors on bad input, a path that is missing, unreadable or of
# the wrong kind (OSError), and a value a dependency refuses (ValueError, which includes UnicodeDecodeError,
# json's and pydantic's errors). Each is one line on stderr and exit code 2, like an argparse usage error.
USER_ERRORS = (SpecragError, OSError, ValueError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``specrag`` command line on ``argv``; returns the exit code.

    0: done; 2: a usage error or a failure the user can fix (printed as one ``specrag: error:`` line);
    1: a bug in specrag (traceback printed); 130: interrupted. ``--debug`` lets every exception through
    with its full traceback instead.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2

    def command(args: argparse.Namespace) -> int:
        _set_threads(args.threads)  # inside, so that a bad $SPECRAG_THREADS is one line too
        return int(args.func(args))

    return run_command(command, args, debug=args.debug)


def run_command(
    command: Callable[[argparse.Namespace], int], args: argparse.Namespace, debug: bool | None = None
) -> int:
    """``command(args)``'s exit code, with every error turned into the exit codes :func:`main` documents.

    The one place the command line handles errors. ``debug=None`` reads ``args.debug`` (absent: off).
    """
    if debug is None:
        debug = bool(getattr(args, "debug", False))
    try:
        return int(command(args))
    except KeyboardInterrupt:
        if debug:
            raise
        print("specrag: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"specrag: error: {error_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        # Anything else (TypeError, AttributeError, KeyError, RuntimeError, ...) is a bug in specrag or in a
        # dependency, not something the user's input can fix: keep the traceback, which a bug report needs,
        # rather than a one-liner that would make them rerun (maybe an hour-long eval) with --debug.
        if debug:
            raise
        traceback.print_exc()
        print(f"specrag: internal error ({type(exc).__name__}); this is a bug: please report it with the "
              "traceback above", file=sys.stderr)
        return 1


def exit_codes(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Decorate a command function so that calling it directly (``args.func(args)``, as scripts, tests and
    ``python -m eval.chunking`` do) gives :func:`main`'s exit codes and error lines too, through
    :func:`run_command`; under :func:`main` an error is handled once, by the innermost call."""

    @functools.wraps(command)
    def wrapped(args: argparse.Namespace) -> int:
        return run_command(command, args)

    return wrapped


def error_line(exc: BaseException) -> str:
    """``exc`` as one line that names what is wrong: ``path: strerror`` for a file error, else its message."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{_path_text(exc.filename)}: {exc.strerror}"
        if exc.filename2 is not None:
            text += f" (and {_path_text(exc.filename2)})"
    else:
        text = str(exc).strip() or type(exc).__name__
        if not isinstance(exc, SpecragError):  # a dependency's message: say whose kind of error it is
            text = f"{type(exc).__name__}: {text}"
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _path_text(name: object) -> str:
    return os.fsdecode(name) if isinstance(name, bytes) else str(name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specrag",
        description="Retrieval-augmented generation on a CPU: index documents, ask questions with cited "
        "answers, evaluate retrieval, manage the offline model packs.",
        epilog="Start with: specrag demo   (indexes the standard library's docstrings and answers a question)",
    )
    parser.add_argument("--threads", type=_thread_count, default=None,
                        help=f"torch threads (default: ${THREADS_ENV} if set, else all cores)")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback instead of one line (give it before COMMAND)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    demo = sub.add_parser("demo", help="index the Python standard library's docs and answer a question")
    demo.add_argument("question", nargs="?", default=DEMO_QUESTION, help=f"default: {DEMO_QUESTION!r}")
    demo.add_argument("--dir", type=Path, default=DEMO_DIR, help=f"where the demo index lives (default {DEMO_DIR})")
    demo.add_argument("--rebuild", action="store_true", help="re-index even if the demo index exists")
    demo.set_defaults(func=cmd_demo)

    index = sub.add_parser(
        "index", help="chunk and index a corpus into a pipeline directory",
        description="Chunk and index documents, then save the pipeline (config + index) to --out. "
        "The corpus is a JSONL file with one object per line: {\"_id\" or \"id\", \"title\", \"text\"} "
        "(the BEIR corpus.jsonl layout), or the word 'stdlib' for the Python standard library's docstrings.",
    )
    index.add_argument("--corpus", required=True, help="path to a corpus.jsonl, or 'stdlib'")
    index.add_argument("--out", required=True, type=Path, help="pipeline directory to write (replaced atomically)")
    how = index.add_mutually_exclusive_group()
    how.add_argument("--config", type=Path, help="pipeline YAML/JSON (default: the default Pipeline())")
    how.add_argument("--recipe", metavar="NAME",
                     help="a named pipeline shipped with specrag: fast, balanced or accurate (see the README)")
    index.add_argument("--ray", action="store_true",
                       help="ingest with Ray Data into --shards index shards searched by shard actors (pip install 'specrag[ray]')")
    index.add_argument("--address", help="with --ray: the Ray cluster to use (default: RAY_ADDRESS, else a local cluster)")
    index.add_argument("--shards", type=int, help="with --ray: number of index shards (default 4)")
    index.set_defaults(func=cmd_index)

    ask = sub.add_parser("ask", help="answer a question from an indexed pipeline, with citations")
    ask.add_argument("question", help="the question, in quotes")
    ask.add_argument("--index", required=True, type=Path, help="a pipeline directory written by `specrag index`")
    ask.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated tokens")
    ask.add_argument("--json", action="store_true", help="print the answer as one JSON object instead of streaming")
    ask.set_defaults(func=cmd_ask)

    from rag.commands import COMMANDS, add_all

    add_all(sub, COMMANDS)
    return parser


def _thread_count(text: str) -> int:
    """A ``--threads`` value: a whole number of at least 1 (argparse turns the error into a usage line)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1 thread, got {value}")
    return value


def threads_from_env() -> int | None:
    """``$SPECRAG_THREADS`` as a thread count; ``None`` when unset or empty. A bad value is an InputError."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return None
    try:
        return _thread_count(raw)
    except argparse.ArgumentTypeError as exc:
        raise InputError(f"{THREADS_ENV}={os.environ[THREADS_ENV]!r}: {exc} (e.g. {THREADS_ENV}=4)") from None


def _set_threads(threads: int | None) -> None:
    if threads is None:
        threads = threads_from_env()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _load_documents(corpus: str) -> list:
    if corpus == "stdlib":
        from rag.stdlib_corpus import stdlib_documents

        return stdlib_documents()
    from rag.io import read_documents

    return read_documents(corpus)


def build_index(corpus: str, out: Path, config: Path | None = None, recipe: str | None = None) -> "object":
    from rag.pipeline import Pipeline

    pipeline = Pipeline.recipe(recipe) if recipe else Pipeline.from_config(config) if config else Pipeline()
    documents = _load_documents(corpus)
    print(f"indexing {len(documents)} documents from {corpus} ...", file=sys.stderr)
    trace = pipeline.ingest(documents)
    pipeline.save(out)
    print(trace.format(), file=sys.stderr)
    print(f"saved {len(pipeline.index)} chunks to {out}", file=sys.stderr)
    return pipeline


def cmd_index(args: argparse.Namespace) -> int:
    if getattr(args, "ray", False):
        if getattr(args, "recipe", None):
            from rag.pipeline import recipe_path

            args.config = recipe_path(args.recipe)
        return _index_with_ray(args)
    if getattr(args, "shards", None) is not None or getattr(args, "address", None) is not None:
        print("specrag: error: --shards and --address need --ray", file=sys.stderr)
        return 2
    build_index(args.corpus, args.out, args.config, getattr(args, "recipe", None))
    return 0


def _index_with_ray(args: argparse.Namespace) -> int:
    from indexes.ray_ingest import ingest_pipeline

    shards = 4 if args.shards is None else args.shards
    corpus = args.corpus
    if corpus == "stdlib":
        corpus = _load_documents(corpus)
    print(f"indexing {args.corpus} with Ray into {shards} shards ...", file=sys.stderr)
    trace = ingest_pipeline(corpus, args.out, args.config, shards=shards, address=args.address)
    print(trace.format(), file=sys.stderr)
    for shard in trace.stages[0].extra["shards"]:
        print(f"  shard {shard['shard']}: {shard['documents']} documents, {shard['chunks']} chunks, "
              f"{shard['seconds']:.1f} s", file=sys.stderr)
    print(f"saved {trace.stages[0].n_out} chunks in {shards} shards to {args.out}", file=sys.stderr)
    return 0


def answer_question(pipeline, question: str, as_json: bool = False) -> int:
    if as_json:
        answer = pipeline.ask(question)
        print(json.dumps({
            "question": question, "answer": answer.text,
            "citations": [{"marker": c.marker, "chunk_id": c.chunk_id, "doc_id": c.doc_id} for c in answer.citations],
            "hits": [{"chunk_id": h.chunk.id, "score": h.score} for h in answer.hits],
            "trace": answer.trace.to_dicts(),
        }))
        return 0
    print(f"Q: {question}\nA: ", end="", flush=True)
    answer = pipeline.ask(question, on_text=lambda t: print(t, end="", flush=True))
    print("\n\nSources:")
    cited = {c.marker for c in answer.citations}
    for number, hit in enumerate(answer.hits, start=1):
        mark = "*" if number in cited else " "
        print(f" {mark}[{number}] {hit.chunk.title or hit.chunk.doc_id}  ({hit.chunk.id}, score {hit.score:.3f})")
    if not answer.citations:
        print("  (the answer cites no passage)")
    print("\nStage timings (seconds):")
    print(answer.trace.format())
    generate = next((r for r in answer.trace.stages if r.stage == "generate"), None)
    if generate:
        print(f"prefill {generate.extra['prefill_seconds']:.2f} s for {generate.tokens_in} prompt tokens; "
              f"decode {generate.extra['tokens_per_second']:.1f} tokens/s")
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from rag.pipeline import Pipeline

    pipeline = Pipeline.load(args.index)
    if args.max_new_tokens and pipeline.generator is not None:
        pipeline.generator.max_new_tokens = args.max_new_tokens
    return answer_question(pipeline, args.question, args.json)


def cmd_demo(args: argparse.Namespace) -> int:
    from rag.pipeline import Pipeline

    started = time.perf_counter()
    if args.rebuild or not (args.dir / "pipeline.yaml").is_file():
        pipeline = build_index("stdlib", args.dir)
    else:
        print(f"using the demo index in {args.dir} (--rebuild to re-index)", file=sys.stderr)
        pipeline = Pipeline.load(args.dir)
    print(f"index ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return answer_question(pipeline, args.question)


if __name__ == "__main__":
    sys.exit(main())
