"""BM25 search speed: specrag's Lucene index against pyserini called directly and against bm25s, and
where bm25s stops being the faster backend as the corpus grows.

    python -m bench.bm25 [--data ../shared/data] [--rounds 10] [--skip-crossover] [--sizes 1000,5000,13568,27136,54272]

Part 1, on SciFact (5,183 documents, 300 test queries, k=100, one thread everywhere):

- ``specrag BM25Index`` (flat): ``index.search(queries, 100)``, i.e. one Anserini ``batch_search`` call
  with one thread, then ``Hit`` objects;
- ``pyserini LuceneSearcher`` on the same Lucene directory: ``batch_search(queries, qids, 100, threads=1)``
  and reading each hit's ``docid`` and ``score`` (what any caller has to do with them), and ``search`` one
  query at a time (against ours one query per call);
- ``specrag BM25sIndex``: ``index.search(queries, 100)`` (tokenization, bm25s scoring, top-k, ``Hit``s),
  and bm25s's own ``retrieve`` on queries tokenized beforehand (same score matrix).

Each side is warmed up (the JVM compiles its hot paths), then timed over ``--rounds`` passes: batch sides
take turns batch by batch, one-query sides query by query, the order rotating each time so that a change
in machine load hits all sides alike; queries/s is queries over summed time.
The target for our layer is at least 0.9x pyserini's batch search on the same index.

Part 2, the crossover: corpora of growing size cut from the four shared data sets (SciFact, SQuAD
paragraphs, HotpotQA paragraphs, Cranfield without its empty documents), doubled past that with renamed
copies (same text, so bm25s's tokenizer cache is warmer on the copies than on new text). For each size and
backend: indexing time (chunks in, searchable index out; the bm25s tokenizer cache is cleared first), time
for the 300 SciFact queries (one batch call, after one warm-up batch), and the index's size on disk as
saved (``chunks.jsonl`` with the chunk texts included). Starting the JVM (once per process) is reported on
its own. The last lines say which backend is faster end to end at each size, and from where Lucene wins.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from eval.beir import load_beir
from rag.io import read_jsonl
from rag.registry import build
from rag.types import Chunk, Document

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CORPORA = ("scifact", "squad-v1.1-dev", "hotpotqa-dev-fullwiki-500", "cranfield")
TARGET = 0.90
K = 100


def _timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _interleaved(sides: dict[str, Callable[[Any], Any]], items: list[Any], rounds: int) -> dict[str, float]:
    """Summed seconds per side: every item goes to every side in turn, the side order rotating from one
    item to the next, so that a change in machine load hits all sides alike."""
    names = list(sides)
    totals = dict.fromkeys(names, 0.0)
    for number in range(rounds):
        for position, item in enumerate(items):
            shift = (number + position) % len(names)
            for name in names[shift:] + names[:shift]:
                totals[name] += _timed(lambda: sides[name](item))
    return totals


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _corpus(size: int, pool: list[Document]) -> list[Chunk]:
    """The first ``size`` documents of the pooled corpora, cycling through renamed copies past their end."""
    chunks = []
    for copy, doc in itertools.islice(((c, d) for c in itertools.count() for d in pool), size):
        doc_id = doc.id if copy == 0 else f"{doc.id}~{copy}"
        chunks.append(Chunk(id=f"{doc_id}#0", doc_id=doc_id, text=doc.text, start=0, end=len(doc.text), title=doc.title))
    return chunks


def part_one(data: Path, rounds: int) -> dict[str, float]:
    from indexes.lucene import pyserini_module

    scifact = load_beir(data / "scifact")
    chunks = build("chunker", "document").chunk_many(scifact.corpus)
    queries = list(scifact.queries.values())
    qids = [str(i) for i in range(len(queries))]

    ours = build("index", "bm25")
    ours.add(chunks)
    print("importing pyserini.search.lucene for the direct comparison ...", flush=True)
    started = time.perf_counter()
    searcher = pyserini_module("search.lucene").LuceneSearcher(str(ours.lucene_directory()))
    searcher.set_bm25(0.9, 0.4)
    print(f"  (import and open took {time.perf_counter() - started:.1f} s; specrag's BM25Index does not import it)")

    bm25s_index = build("index", "bm25s")
    bm25s_index.add(chunks)
    query_tokens = [bm25s_index.tokenize(q) for q in queries]
    vocab = bm25s_index._model.vocab_dict
    query_tokens = [[t for t in tokens if t in vocab] or [""] for tokens in query_tokens]

    def pyserini_batch(batch: list[str]) -> list[list[tuple[str, float]]]:
        found = searcher.batch_search(batch, qids, K, threads=1)
        return [[(hit.docid, hit.score) for hit in found[qid]] for qid in qids]

    batch_sides: dict[str, Callable[[list[str]], Any]] = {
        "specrag BM25Index, batch": lambda batch: ours.search(batch, K),
        "pyserini LuceneSearcher.batch_search": lambda batch: pyserini_batch(batch),
        "specrag BM25sIndex, batch": lambda batch: bm25s_index.search(batch, K),
        "bm25s retrieve (pre-tokenized)": lambda batch: bm25s_index._model.retrieve(
            query_tokens, k=K, show_progress=False, n_threads=1
        ),
    }
    single_sides: dict[str, Callable[[str], Any]] = {
        "specrag BM25Index, one query per call": lambda query: ours.search([query], K),
        "pyserini LuceneSearcher.search, one at a time": lambda query: [
            (hit.docid, hit.score) for hit in searcher.search(query, K)
        ],
    }
    # Same results first: our hits are pyserini's hits.
    mine = [[(h.chunk.id, round(h.score, 4)) for h in hits] for hits in ours.search(queries, K)]
    theirs = [[(docid, round(score, 4)) for docid, score in hits] for hits in pyserini_batch(queries)]
    assert mine == theirs, "specrag's BM25 hits differ from pyserini's"
    # Warm-up: JIT compilation on the Java side, caches on ours.
    _interleaved(batch_sides, [queries], 2)
    _interleaved(single_sides, queries, 2)
    seconds = _interleaved(batch_sides, [queries], rounds)
    seconds.update(_interleaved(single_sides, queries, rounds))
    qps = {name: rounds * len(queries) / s for name, s in seconds.items()}
    print(f"\nSciFact: {len(chunks)} documents, {len(queries)} queries, k={K}, {rounds} rounds, one thread")
    for name, rate in qps.items():
        print(f"  {name:<48} {rate:9.0f} queries/s")
    searcher.close()
    return qps


def part_two(data: Path, sizes: list[int]) -> list[dict[str, Any]]:
    from rag import analysis

    pool = [
        Document(text=record["text"], id=f"{name}:{record['_id']}", title=record.get("title") or "")
        for name in CORPORA
        for _, record in read_jsonl(data / name / "corpus.jsonl")
        if record.get("text", "").strip()  # Cranfield has a few empty documents
    ]
    queries = list(load_beir(data / "scifact").queries.values())
    print(f"pooled corpus: {len(pool)} distinct documents from {', '.join(CORPORA)}; {len(queries)} SciFact queries")
    rows = []
    print(f"\n{'documents':>9} {'backend':<7} {'index s':>8} {'search s':>9} {'total s':>8} {'queries/s':>10} {'disk MB':>8}")
    for size in sizes:
        chunks = _corpus(size, pool)
        for backend in ("bm25", "bm25s"):
            analysis._analyzer.cache_clear()  # cold tokenizer caches for every bm25s build
            analysis.lucene_porter.cache_clear()
            index = build("index", backend)
            index_seconds = _timed(lambda: index.add(chunks))
            index.search(queries, K)  # warm-up
            search_seconds = _timed(lambda: index.search(queries, K))
            scratch = Path(tempfile.mkdtemp(prefix="specrag-bench-"))
            try:
                index.save(scratch / "ix")
                disk = _disk_bytes(scratch / "ix")
            finally:
                shutil.rmtree(scratch)
            row = {
                "documents": size, "backend": backend, "index_seconds": index_seconds,
                "search_seconds": search_seconds, "disk_bytes": disk,
            }
            rows.append(row)
            print(
                f"{size:>9} {backend:<7} {index_seconds:>8.2f} {search_seconds:>9.3f} "
                f"{index_seconds + search_seconds:>8.2f} {len(queries) / search_seconds:>10.0f} {disk / 1e6:>8.1f}",
                flush=True,
            )
            del index
    return rows


def verdict(rows: list[dict[str, Any]]) -> str:
    by_size: dict[int, dict[str, float]] = {}
    for row in rows:
        by_size.setdefault(row["documents"], {})[row["backend"]] = row["index_seconds"] + row["search_seconds"]
    faster = {size: min(times, key=times.get) for size, times in sorted(by_size.items())}
    lines = [f"  {size:>7} documents: {backend} faster end to end" for size, backend in faster.items()]
    lucene_sizes = [size for size, backend in faster.items() if backend == "bm25"]
    if not lucene_sizes:
        lines.append("crossover: none in the sizes measured; bm25s (no JVM) is faster end to end throughout")
    else:
        lines.append(f"crossover: Lucene is faster end to end from about {min(lucene_sizes)} documents")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bm25", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder holding the shared data sets")
    parser.add_argument("--rounds", type=int, default=10, help="timed passes over the queries in part 1 (default: 10)")
    parser.add_argument(
        "--sizes", default="1000,5000,13568,27136,54272", help="corpus sizes for the crossover (comma-separated)"
    )
    parser.add_argument("--skip-crossover", action="store_true", help="run part 1 only")
    args = parser.parse_args(argv)
    data = Path(args.data)

    from indexes.lucene import start_jvm

    started = time.perf_counter()
    start_jvm()
    print(f"JVM start with Anserini's jar (once per process): {time.perf_counter() - started:.2f} s", flush=True)
    qps = part_one(data, args.rounds)
    ours, direct = qps["specrag BM25Index, batch"], qps["pyserini LuceneSearcher.batch_search"]
    ratio = ours / direct
    loop_ratio = qps["specrag BM25Index, one query per call"] / qps["pyserini LuceneSearcher.search, one at a time"]
    print(f"\nratio specrag/pyserini, batch: {ratio:.3f} (target >= {TARGET:.2f}: {'OK' if ratio >= TARGET else 'BELOW TARGET'})")
    print(f"ratio specrag/pyserini, one query per call: {loop_ratio:.3f}")
    print(f"bm25s (specrag BM25sIndex) / specrag BM25Index, batch: {qps['specrag BM25sIndex, batch'] / ours:.2f}x")
    if not args.skip_crossover:
        rows = part_two(data, [int(s) for s in args.sizes.split(",") if s])
        print("\n" + verdict(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
