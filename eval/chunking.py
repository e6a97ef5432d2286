"""Chunking evaluation on extractive QA: does the retrieved chunk contain the answer, and at what cost?

    specrag eval chunking --data ../shared/data/squad-v1.1-dev --limit 300 [--chunkers fixed,perplexity] [--k 5]

Each article's paragraphs (corpus records sharing a ``title``, in file order) are joined with blank lines
into one document, so chunkers see whole articles. Each chunker cuts them; the chunks are indexed with the
dense index (``rag.registry.build("index", "dense")``); every question retrieves its top ``k`` chunks.

Reported per chunker: ``recall@k`` (questions with a top-k chunk that contains a gold answer span whole:
the character offsets of ``answer_starts`` when present, mapped through the gold paragraph of the qrels;
otherwise the answer strings' occurrences in the gold paragraphs, or anywhere without qrels), the number
of chunks, their mean length in tokens of the dense encoder's tokenizer, the tokens a generator would read
for the top ``k`` (mean over questions), and chunking throughput in characters per second (models loaded
before timing). When both ``fixed`` and ``perplexity`` run, ``fixed-matched`` re-runs the fixed chunker
with windows of the perplexity chunker's mean length, so the two compare at equal mean chunk length.

    >>> from eval.chunking import run_chunking
    >>> result = run_chunking("../shared/data/squad-v1.1-dev", ["fixed"], limit=20)   # doctest: +SKIP
    >>> result["chunkers"]["fixed"]["recall@5"]                                        # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from rag.cli.args import positive_int
from rag.cli import exit_codes
from rag.errors import InputError
from rag.io import read_documents, read_jsonl
from rag.types import Chunk, Document

CHUNKERS = ("fixed", "sentence", "recursive", "semantic", "perplexity", "margin")
# Every chunker at a hard cap of 128 encoder tokens (MiniLM reads 256; SQuAD paragraphs average ~150).
# The LM chunkers merge their fine chunks up to 96 tokens, which lands their mean length near the fixed
# windows'; ``fixed-matched`` removes the remaining difference.
EVAL_PARAMS: dict[str, dict[str, Any]] = {
    "fixed": {"max_tokens": 128},
    "sentence": {"max_tokens": 128},
    "recursive": {"max_tokens": 128},
    "semantic": {"max_tokens": 128, "min_tokens": 32},
    "perplexity": {"max_tokens": 128, "target_tokens": 96},
    # One prompt per sentence gap: the previous sentence and the next one, clipped, keep prompts near 100
    # tokens (SmolLM2 reads about as many tokens per second as the perplexity chunker does).
    "margin": {"max_tokens": 128, "target_tokens": 96, "context_tokens": 32, "sentence_tokens": 48},
}
MATCHED = "fixed-matched"
PARAGRAPH_JOIN = "\n\n"
SIZE_TOKENIZER = "minilm"  # chunk lengths are reported in the dense encoder's tokens, whatever a chunker counts
WARM_UP = Document(text="Models load before timing. This short text is chunked once.", id="warm-up")


@dataclass(frozen=True)
class Question:
    """A question, its answer strings, and the gold spans ``(doc_id, start, end)`` in article coordinates."""

    id: str
    text: str
    answers: tuple[str, ...]
    spans: tuple[tuple[str, int, int], ...]


@dataclass
class QAArticles:
    """Articles rebuilt from a QA corpus, and the questions evaluated on them."""

    name: str
    documents: list[Document]
    questions: list[Question]
    skipped: int = 0  # questions whose answers were found nowhere in the corpus
    paragraphs: int = 0


def load_qa_articles(data_dir: str | Path, limit: int | None = None, per_article: int | None = None) -> QAArticles:
    """Read a QA folder (``corpus.jsonl``, ``queries.jsonl`` with ``answers``, optional ``qrels/test.tsv``).

    Paragraphs are grouped into articles by ``title`` (first appearance order; an untitled paragraph is an
    article of its own). With ``limit``, questions are taken article by article in corpus order,
    ``per_article`` of them from each article (evenly spaced over its questions, so they reach its whole
    text; all of them when ``per_article`` is None), until ``limit``; the corpus keeps only their articles.
    """
    root = Path(data_dir)
    corpus_path, queries_path, qrels_path = root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / "test.tsv"
    for path in (corpus_path, queries_path):
        if not path.is_file():
            raise InputError(f"{path}: missing; a QA folder holds corpus.jsonl, queries.jsonl (with answers) and qrels/test.tsv")
    paragraphs = read_documents(corpus_path)
    groups: OrderedDict[str, list[Document]] = OrderedDict()
    for paragraph in paragraphs:
        groups.setdefault(paragraph.title or f"\x00{paragraph.id}", []).append(paragraph)
    documents: list[Document] = []
    offsets: dict[str, tuple[str, int]] = {}
    for number, (key, members) in enumerate(groups.items()):
        doc_id, position, texts = f"article-{number}", 0, []
        for paragraph in members:
            offsets[paragraph.id] = (doc_id, position)
            texts.append(paragraph.text)
            position += len(paragraph.text) + len(PARAGRAPH_JOIN)
        documents.append(Document(text=PARAGRAPH_JOIN.join(texts), id=doc_id, title=members[0].title))
    paragraph_text = {p.id: p.text for p in paragraphs}

    from eval.beir import read_qrels

    qrels = read_qrels(qrels_path) if qrels_path.is_file() else {}
    questions: list[Question] = []
    skipped = 0
    for number, record in read_jsonl(queries_path):
        qid, text, answers = record.get("_id", record.get("id")), record.get("text"), record.get("answers")
        if qid is None or not isinstance(text, str):
            raise InputError(f"{queries_path}, line {number}: a question needs '_id' and a 'text' string")
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise InputError(f"{queries_path}, line {number} (question {qid}): 'answers' must be a list of strings")
        gold = [pid for pid, grade in qrels.get(str(qid), {}).items() if grade > 0 and pid in offsets]
        starts = record.get("answer_starts")
        spans: set[tuple[str, int, int]] = set()
        if isinstance(starts, list) and len(starts) == len(answers) and len(gold) == 1:
            doc_id, offset = offsets[gold[0]]
            for answer, start in zip(answers, starts):
                if isinstance(start, int) and paragraph_text[gold[0]][start:start + len(answer)] == answer and answer:
                    spans.add((doc_id, offset + start, offset + start + len(answer)))
        if not spans:
            spans = _occurrences([a for a in answers if a.strip()], gold, offsets, paragraph_text, documents)
        if not spans:
            skipped += 1
            continue
        questions.append(Question(id=str(qid), text=text, answers=tuple(answers), spans=tuple(sorted(spans))))
    if limit is not None:
        questions = _select(questions, limit, per_article)
        keep = {q.spans[0][0] for q in questions}
        documents = [doc for doc in documents if doc.id in keep]
    # Spans in articles left out cannot be retrieved; they are dropped so they do not count as misses.
    kept = {doc.id for doc in documents}
    questions = [Question(q.id, q.text, q.answers, tuple(s for s in q.spans if s[0] in kept)) for q in questions]
    if not questions:
        raise InputError(f"{root}: no question has an answer found in the corpus")
    return QAArticles(name=root.name, documents=documents, questions=questions, skipped=skipped, paragraphs=len(paragraphs))


def _occurrences(
    answers: Sequence[str],
    gold: Sequence[str],
    offsets: Mapping[str, tuple[str, int]],
    paragraph_text: Mapping[str, str],
    documents: Sequence[Document],
) -> set[tuple[str, int, int]]:
    spans: set[tuple[str, int, int]] = set()
    if gold:
        regions = [(offsets[pid][0], offsets[pid][1], paragraph_text[pid]) for pid in gold]
    else:
        regions = [(doc.id, 0, doc.text) for doc in documents]
    for doc_id, offset, text in regions:
        for answer in answers:
            start = text.find(answer)
            while start >= 0:
                spans.add((doc_id, offset + start, offset + start + len(answer)))
                start = text.find(answer, start + 1)
    return spans


def _select(questions: list[Question], limit: int, per_article: int | None) -> list[Question]:
    by_article: OrderedDict[str, list[Question]] = OrderedDict()
    for question in questions:
        by_article.setdefault(question.spans[0][0], []).append(question)
    chosen: list[Question] = []
    for members in by_article.values():
        take = len(members) if per_article is None else min(per_article, len(members))
        step = len(members) / take
        chosen.extend(members[int(i * step)] for i in range(take))
        if len(chosen) >= limit:
            break
    return chosen[:limit]


# -- scoring ---------------------------------------------------------------------------------------


def contains_answer(chunk: Chunk, question: Question) -> bool:
    """Whether ``chunk`` holds one of the question's gold spans whole."""
    return any(chunk.doc_id == d and chunk.start <= a and b <= chunk.end for d, a, b in question.spans)


def evaluate_chunker(
    chunker: Any, data: QAArticles, k: int, index_spec: Any = "dense"
) -> tuple[dict[str, Any], list[Chunk]]:
    """Chunk, index and search one chunker; returns its metrics and its chunks."""
    from rag.text import token_starts_many
    from rag.registry import build

    chunker.chunk(WARM_UP)  # load its models outside the timing
    started = time.perf_counter()
    chunks = chunker.chunk_many(data.documents)
    chunk_seconds = time.perf_counter() - started
    if not chunks:
        raise InputError(f"chunker {chunker!r} gave no chunks for {data.name}")
    lengths = {c.id: len(s) for c, s in zip(chunks, token_starts_many(SIZE_TOKENIZER, [c.text for c in chunks]))}

    index = build("index", index_spec)
    started = time.perf_counter()
    index.add(chunks)
    index_seconds = time.perf_counter() - started
    hits = index.search([q.text for q in data.questions], k)
    found = [any(contains_answer(h.chunk, q) for h in hit_list[:k]) for q, hit_list in zip(data.questions, hits)]
    read = [sum(lengths[h.chunk.id] for h in hit_list[:k]) for hit_list in hits]
    characters = sum(len(doc.text) for doc in data.documents)
    metrics = {
        f"recall@{k}": round(sum(found) / len(found), 4),
        "mean_tokens": round(sum(lengths.values()) / len(lengths), 1),
        f"tokens_read@{k}": round(sum(read) / len(read), 1),
        "chunks": len(chunks),
        "chars_per_s": round(characters / chunk_seconds, 1) if chunk_seconds > 0 else float("inf"),
        "chunk_seconds": round(chunk_seconds, 2),
        "index_seconds": round(index_seconds, 2),
        "params": chunker.to_config()["params"],
    }
    return metrics, chunks


def run_chunking(
    data_dir: str | Path,
    chunkers: Sequence[str] = CHUNKERS,
    limit: int | None = None,
    per_article: int | None = 25,
    k: int = 5,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Evaluate each named chunker (registry names, built with :data:`EVAL_PARAMS` updated by ``params``).

    Returns ``{"dataset", "k", "questions", "documents", "characters", "chunkers": {name: metrics}}``.
    """
    from rag.registry import build, known

    unknown = [name for name in chunkers if name not in known("chunker")]
    if unknown:
        raise InputError(f"unknown chunkers {unknown}; known: {', '.join(known('chunker'))}")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    extra = dict(params or {})
    wrong = sorted(set(extra) - set(chunkers) - {MATCHED})
    if wrong:
        raise InputError(f"parameters given for chunkers not evaluated: {wrong}")
    data = load_qa_articles(data_dir, limit=limit, per_article=per_article if limit is not None else None)
    results: dict[str, Any] = {}
    for name in chunkers:
        spec = {"type": name, "params": {**EVAL_PARAMS.get(name, {}), **extra.get(name, {})}}
        results[name], _ = evaluate_chunker(build("chunker", spec), data, k)
        if progress:
            progress(name, results[name])
    if "fixed" in chunkers and "perplexity" in chunkers:
        base = {**EVAL_PARAMS["fixed"], **extra.get("fixed", {})}
        matched = {**base, "max_tokens": max(1, round(results["perplexity"]["mean_tokens"])), **extra.get(MATCHED, {})}
        matched["overlap_tokens"] = min(matched.get("overlap_tokens", 0), matched["max_tokens"] - 1)
        results[MATCHED], _ = evaluate_chunker(build("chunker", {"type": "fixed", "params": matched}), data, k)
        if progress:
            progress(MATCHED, results[MATCHED])
    return {
        "dataset": data.name,
        "k": k,
        "questions": len(data.questions),
        "documents": len(data.documents),
        "characters": sum(len(d.text) for d in data.documents),
        "skipped_questions": data.skipped,
        "chunkers": results,
    }


def format_table(result: Mapping[str, Any]) -> str:
    """The results as a Markdown table (it reads in a terminal and pastes into the README)."""
    k = result["k"]
    lines = [
        f"{result['dataset']}: {result['questions']} questions, {result['documents']} articles "
        f"({result['characters']:,} characters), dense index, k={k}",
        "",
        f"| chunker | recall@{k} | chunks | mean tokens | tokens read@{k} | chars/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in result["chunkers"].items():
        lines.append(
            f"| {name} | {m[f'recall@{k}']:.3f} | {m['chunks']} | {m['mean_tokens']:.1f} | "
            f"{m[f'tokens_read@{k}']:.0f} | {m['chars_per_s']:,.0f} |"
        )
    return "\n".join(lines)


# -- command line ----------------------------------------------------------------------------------


def add_chunking_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Register ``chunking`` on the ``specrag eval`` subparsers."""
    parser = commands.add_parser(
        "chunking",
        help="compare chunkers on extractive QA: answer-span recall@k, chunk length, throughput",
        description=(
            "Rejoin each article's paragraphs of a QA folder (corpus.jsonl, queries.jsonl with answers, "
            "qrels/test.tsv) into one document, chunk it with each chunker, index the chunks densely and "
            "measure how often a top-k chunk holds a gold answer span. Prints a table, then the result as "
            "one JSON line (the last line of stdout)."
        ),
        epilog="example: specrag eval chunking --data ../shared/data/squad-v1.1-dev --limit 300 --chunkers fixed,perplexity",
    )
    parser.add_argument("--data", required=True, metavar="DIR", help="QA folder in the BEIR layout with answers")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="evaluate N questions, restricted to their articles")
    parser.add_argument(
        "--per-article", type=positive_int, default=25, metavar="Q",
        help="with --limit: questions per article, evenly spaced over it (default 25)",
    )
    parser.add_argument(
        "--chunkers", default=",".join(CHUNKERS), metavar="A,B",
        help=f"registered chunkers to compare (default: {','.join(CHUNKERS)})",
    )
    parser.add_argument("--k", type=positive_int, default=5, help="chunks retrieved per question (default 5)")
    parser.add_argument(
        "--params", type=json.loads, default=None, metavar="JSON",
        help='per-chunker parameter overrides, e.g. \'{"perplexity": {"target_tokens": 64}}\'',
    )
    parser.set_defaults(func=chunking_command)
    return parser


@exit_codes
def chunking_command(args: argparse.Namespace) -> int:
    """``specrag eval chunking``: the table, then the JSON result as the last stdout line."""
    names = [name.strip() for name in args.chunkers.split(",") if name.strip()]

    def progress(name: str, metrics: Mapping[str, Any]) -> None:
        print(f"{name}: {json.dumps(metrics)}", file=sys.stderr, flush=True)

    result = run_chunking(
        args.data, names, limit=args.limit, per_article=args.per_article, k=args.k, params=args.params, progress=progress
    )
    print(format_table(result))
    summary = {
        name: {key: m[key] for key in (f"recall@{args.k}", "mean_tokens", "chars_per_s", f"tokens_read@{args.k}", "chunks", "params")}
        for name, m in result["chunkers"].items()
    }
    print(json.dumps({**{key: v for key, v in result.items() if key != "chunkers"}, "chunkers": summary}), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eval.chunking [--threads N] ...``: the same command without the ``specrag`` entry point."""
    parser = argparse.ArgumentParser(prog="python -m eval.chunking")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch threads (default 2)")
    add_chunking_parser(parser.add_subparsers(dest="command", required=True))
    argv = list(sys.argv[1:] if argv is None else argv)
    threads = ["--threads", argv.pop(argv.index("--threads") + 1)] if "--threads" in argv else []
    if threads:
        argv.remove("--threads")
    args = parser.parse_args([*threads, "chunking", *argv])
    import torch

    torch.set_num_threads(args.threads)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
