"""BM25 over shards with corpus-wide statistics: a Lucene BM25 shard scored with the global ``df`` and ``N``.

:class:`indexes.sharded.ShardedIndex` with ``statistics="global"`` searches in two rounds: every shard reports
its document count and the document frequency of each query term (:meth:`LuceneGlobalBM25.statistics`), the
driver sums them (:func:`merge_statistics`), and every shard searches with each term's boost multiplied by
``idf(global) / idf(shard)`` (:meth:`LuceneGlobalBM25.search`), which replaces the shard's idf by the
corpus-wide one. Only ``avgdl`` stays per shard. Implemented for Lucene BM25 with flat fields
(:func:`supports_global_statistics`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from rag.errors import InputError
from rag.types import Hit


def supports_global_statistics(template: Any) -> bool:
    """Whether shards like ``template`` can be scored with corpus-wide statistics: Lucene BM25, flat fields."""
    from indexes.bm25 import BM25Index  # cheap: no Java until Lucene is used

    return isinstance(template, BM25Index) and template.fields == "flat"


def check_global_statistics(template: Any, name: str) -> None:
    """An error naming sharded index ``name`` unless its shards support ``statistics='global'``."""
    if not supports_global_statistics(template):
        raise InputError(
            f"sharded index {name!r}: statistics='global' is implemented for Lucene BM25 shards ('bm25', flat fields); "
            f"got {template!r}. Dense, SPLADE and late-interaction scores use no collection statistics (leave "
            "statistics='shard'); bm25s and multifield BM25 shards score with their own statistics"
        )


def merge_statistics(shard_stats: Sequence[Mapping[str, Any]], queries: int) -> dict[str, Any]:
    """Sum the shards' document counts and, per query, the document frequency of every query term."""
    df: list[dict[str, int]] = [{} for _ in range(queries)]
    for stats in shard_stats:
        for number, terms in enumerate(stats["df"]):
            for term, count in terms.items():
                df[number][term] = df[number].get(term, 0) + int(count)
    return {"documents": sum(int(s["documents"]) for s in shard_stats), "df": df}


def bm25_idf(df: int, documents: int) -> float:
    """Lucene's BM25 idf: ``log(1 + (N - df + 0.5) / (df + 0.5))``."""
    return math.log(1.0 + (documents - df + 0.5) / (df + 0.5))


class LuceneGlobalBM25:
    """Scores a Lucene BM25 shard with corpus-wide document frequencies and document count.

    Lucene's BM25 term score is ``boost * idf(df, N) * tf / (tf + k1 * (1 - b + b * dl / avgdl))``. The
    query Anserini builds is a disjunction of term queries boosted by their count in the query; here each
    boost is also multiplied by ``idf(global df, global N) / idf(shard df, shard N)``, so the shard's own
    idf is replaced by the global one. ``avgdl`` stays the shard's (it sits inside the length
    normalisation, where a boost cannot reach); with hash routing it differs little between shards.
    """

    def __init__(self, index: Any) -> None:
        from indexes.lucene import java_class

        self.index = index
        self.path = index.lucene_directory()
        self._java = java_class
        self.analyzer = java_class("io.anserini.analysis.DefaultEnglishAnalyzer").newDefaultInstance()
        self.reader = None
        self.searcher = None
        if self.path is not None:
            directory = java_class("org.apache.lucene.store.FSDirectory").open(java_class("java.io.File")(str(self.path)).toPath())
            self.reader = java_class("org.apache.lucene.index.DirectoryReader").open(directory)
            self.searcher = java_class("io.anserini.search.SimpleSearcher")(str(self.path))
            self.searcher.set_bm25(float(index.k1), float(index.b))
        self.documents = int(self.reader.getDocCount("contents")) if self.reader is not None else 0

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.searcher.close()
        self.reader = self.searcher = None

    def terms(self, query: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for term in self._java("io.anserini.analysis.AnalyzerUtils").analyze(self.analyzer, query):
            counts[term] = counts.get(term, 0) + 1
        return counts

    def statistics(self, queries: list[str]) -> dict[str, Any]:
        term_class = self._java("org.apache.lucene.index.Term")
        df = []
        for query in queries:
            terms = self.terms(query)
            df.append({t: int(self.reader.docFreq(term_class("contents", t))) if self.reader is not None else 0 for t in terms})
        return {"documents": self.documents, "df": df}

    def search(self, queries: list[str], k: int, statistics: Mapping[str, Any]) -> list[list[Hit]]:
        if self.searcher is None:
            return [[] for _ in queries]
        java = self._java
        term_class, term_query = java("org.apache.lucene.index.Term"), java("org.apache.lucene.search.TermQuery")
        boost_query, should = java("org.apache.lucene.search.BoostQuery"), java("org.apache.lucene.search.BooleanClause$Occur").SHOULD
        chunks, name = self.index._chunks, self.index.name  # the shard's own chunk table, id -> chunk
        results = []
        for number, query in enumerate(queries):
            builder = java("org.apache.lucene.search.BooleanQuery$Builder")()
            clauses = 0
            for term, count in self.terms(query).items():
                shard_df = int(self.reader.docFreq(term_class("contents", term)))
                if shard_df == 0:
                    continue  # matches nothing here
                ratio = bm25_idf(int(statistics["df"][number][term]), int(statistics["documents"])) / bm25_idf(shard_df, self.documents)
                builder.add(boost_query(term_query(term_class("contents", term)), float(count * ratio)), should)
                clauses += 1
            if not clauses:
                results.append([])
                continue
            found = self.searcher.search(builder.build(), k)
            results.append([Hit(chunk=chunks[hit.docid], score=float(hit.score), source=name) for hit in found])
        return results


_SCORERS: dict[int, Any] = {}


def global_scorer(index: Any) -> LuceneGlobalBM25:
    """One scorer per shard index object (it holds an open Lucene reader), rebuilt when the index changes."""
    key = id(index)
    scorer = _SCORERS.get(key)
    if scorer is None or scorer.index is not index or scorer.path != index.lucene_directory():
        if scorer is not None:
            scorer.close()
        scorer = _SCORERS[key] = LuceneGlobalBM25(index)
    return scorer
