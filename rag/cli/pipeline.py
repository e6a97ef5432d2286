"""``specrag demo``, ``specrag index`` and ``specrag ask``: the commands that build and question a pipeline."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

DEMO_QUESTION = "How do I cache the results of an expensive function?"
DEMO_DIR = Path(".specrag") / "demo-stdlib"


def add_pipeline_parsers(sub: Any) -> None:
    """Register ``demo``, ``index`` and ``ask`` on the top-level ``specrag`` subparsers."""
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
