"""Data sets in the BEIR layout: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

    >>> from eval.beir import load_beir
    >>> data = load_beir("../shared/data/scifact")              # doctest: +SKIP
    >>> len(data.corpus), len(data.queries)                      # doctest: +SKIP
    (5183, 300)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rag.errors import InputError
from rag.io import read_documents, read_jsonl
from rag.types import Document

LAYOUT = "corpus.jsonl (_id, title, text), queries.jsonl (_id, text), qrels/<split>.tsv (query-id, corpus-id, score)"
# A subset keeps this many non-relevant documents per query, so that retrieval still has to discriminate.
DISTRACTORS_PER_QUERY = 25


@dataclass(frozen=True)
class BeirDataset:
    """A corpus, the queries judged in one split, and their relevance judgements.

    ``queries`` keeps the order of ``queries.jsonl`` and holds only queries with qrels in the split;
    ``qrels`` maps query id -> {document id: relevance grade}.
    """

    name: str
    corpus: list[Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    split: str = "test"

    def subset(self, n_queries: int, distractors_per_query: int = DISTRACTORS_PER_QUERY) -> "BeirDataset":
        """The first ``n_queries`` queries, and a corpus of their judged documents plus the first
        ``n_queries * distractors_per_query`` other documents (corpus order is kept; deterministic)."""
        if n_queries < 1:
            raise InputError(f"{self.name}: a subset needs at least one query, got {n_queries}")
        queries = dict(list(self.queries.items())[:n_queries])
        qrels = {qid: self.qrels[qid] for qid in queries}
        judged = {doc_id for judgements in qrels.values() for doc_id in judgements}
        budget = n_queries * distractors_per_query
        corpus: list[Document] = []
        for doc in self.corpus:
            if doc.id in judged:
                corpus.append(doc)
            elif budget > 0:
                corpus.append(doc)
                budget -= 1
        return BeirDataset(name=self.name, corpus=corpus, queries=queries, qrels=qrels, split=self.split)


def load_beir(data_dir: str | Path, split: str = "test") -> BeirDataset:
    """Read a BEIR-layout folder; every missing file or bad line is an error naming the file (and line)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"{root}: no such directory; expected a BEIR data set folder with {LAYOUT}")
    corpus_path, queries_path = root / "corpus.jsonl", root / "queries.jsonl"
    qrels_path = root / "qrels" / f"{split}.tsv"
    for path in (corpus_path, queries_path):
        if not path.is_file():
            raise InputError(f"{path}: missing; a BEIR data set folder holds {LAYOUT}")
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
        raise InputError(
            f"{qrels_path}: missing; no qrels for split {split!r} (available splits: {', '.join(available) or 'none'})"
        )
    qrels = read_qrels(qrels_path)
    all_queries = read_queries(queries_path)
    unknown = [qid for qid in qrels if qid not in all_queries]
    if unknown:
        raise InputError(f"{qrels_path}: query ids {unknown[:5]} are not in {queries_path}")
    queries = {qid: text for qid, text in all_queries.items() if qid in qrels}
    return BeirDataset(name=root.name, corpus=read_documents(corpus_path), queries=queries, qrels=qrels, split=split)


def read_queries(path: str | Path) -> dict[str, str]:
    """Query id -> text from a BEIR ``queries.jsonl``, in file order."""
    queries: dict[str, str] = {}
    for number, record in read_jsonl(path):
        qid, text = record.get("_id", record.get("id")), record.get("text")
        if qid is None or not isinstance(text, str):
            raise InputError(f"{path}, line {number}: a query needs '_id' and a 'text' string")
        qid = str(qid)
        if qid in queries:
            raise InputError(f"{path}, line {number}: duplicate query id {qid!r}")
        queries[qid] = text
    return queries


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Relevance judgements from a BEIR qrels TSV: a header line, then ``query-id  corpus-id  score``."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if number == 1 or not line.strip():
                continue  # the header
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != 3:
                raise InputError(
                    f"{path}, line {number}: expected 3 tab-separated fields (query-id, corpus-id, score), "
                    f"got {len(fields)}"
                )
            qid, doc_id, score = (f.strip() for f in fields)
            try:
                grade = int(score)
            except ValueError:
                raise InputError(f"{path}, line {number}: score {score!r} is not an integer") from None
            if not qid or not doc_id:
                raise InputError(f"{path}, line {number}: empty query-id or corpus-id")
            qrels.setdefault(qid, {})[doc_id] = grade
    if not qrels:
        raise InputError(f"{path}: no judgements after the header line")
    return qrels
