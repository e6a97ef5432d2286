"""Learned sparse retrieval: a SPLADE encoder and a real Lucene impact index built and searched by Anserini.

    >>> from indexes.splade import SpladeIndex
    >>> from rag.types import Chunk
    >>> index = SpladeIndex()                                                 # cheap: no model, no Java yet
    >>> index.add([Chunk("c1", "d1", "Aspirin thins the blood.", 0, 24)])    # doctest: +SKIP
    >>> index.search(["what thins blood?"], k=1)[0][0].chunk.id               # doctest: +SKIP
    'c1'
    >>> index.explain("what thins blood?", top=3)                              # doctest: +SKIP
    [('blood', 1.93), ('thin', 1.41), ('thinning', 0.87)]
    >>> index.save("my-splade"); SpladeIndex.open("my-splade")                 # doctest: +SKIP

The encoder (:class:`indexes.splade_encoder.SpladeEncoder`) runs any Hugging Face masked-LM SPLADE checkpoint (the ``splade-tiny``
pack by default, or a local folder or hub id through :func:`rag.models.resolve_model`). A text's weight for
vocabulary term ``j`` is ``max_t log(1 + relu(logits[t, j]))`` over its non-padding tokens ``t``; results are
``scipy.sparse.csr_matrix`` rows over the model's vocabulary.

Weights are quantised to integers for Lucene: ``round(weight * scale)`` (``scale`` 100 by default, the
factor pyserini's SPLADE indexes use), terms that round to 0 dropped. Documents go into a Lucene impact index
through Anserini's ``IndexCollection`` (``JsonVectorCollection -impact -pretokenized``: the term frequency
of a term *is* its quantised weight); queries are quantised the same way and searched with Anserini's
``SimpleImpactSearcher`` (the Java class inside pyserini's ``LuceneImpactSearcher``) given the term -> weight
map, never a model name (that would download an encoder). Lucene's score is then exactly the dot product of
the two integer vectors (exact while it stays below 2**24, float32's integer range: far above what SPLADE
vectors reach); hits report it divided by ``scale ** 2``, so scores approximate the unquantised dot product.
Ties are broken by chunk id.

Updates follow :mod:`indexes.bm25`: ``add`` encodes first, indexes the new chunks into a fresh Lucene index
and adds its segments to a hard-linked clone of the working one; ``delete`` deletes by id in a clone. Either
is swapped in only once Lucene committed, so a failure leaves the index as it was; impact scores use no
collection statistics, so an index grown step by step scores exactly like one built in one go. A chunk whose
every weight rounds to 0 is kept but not put into Lucene, so it never matches.

On disk (format version 1) a saved index is a directory holding ``manifest.json`` (see
:mod:`rag.manifest`; SPLADE adds ``model``, ``scale``, ``quantisation``, ``weighting``, ``vocab_size``,
``anserini`` and ``lucene_documents``), ``chunks.jsonl`` (one ``Chunk.to_dict()`` per line, in insertion
order) and ``lucene/`` (the Lucene impact index files, each checksummed in the manifest).
"""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Any, Iterable, Sequence

from indexes.bm25 import only_ids
from indexes.lucene import anserini_version, java_exception, java_message, run_java
from indexes.lucene_dir import LuceneDir, save_lucene
from indexes.splade_encoder import DEFAULT_SCALE, SpladeEncoder, quantize
from rag.errors import InputError
from rag.manifest import MANIFEST, SavedIndex, check_new_ids, read_chunks, write_chunks
from rag.protocols import chunks_to_score, text_batch
from rag.registry import declared_params
from rag.types import Chunk, Hit

FORMAT_VERSION = 1
KIND = "splade"
CHUNKS = "chunks.jsonl"
LUCENE = "lucene"
WEIGHTING = "max over non-padding tokens of log(1 + relu(MLM logits))"
QUANTISATION = "round(weight * scale) to an int, terms rounding to 0 dropped; Lucene score / scale**2 reported"

__all__ = ["SpladeIndex"]


@declared_params
class SpladeIndex(SavedIndex):
    """SPLADE vectors in a Lucene impact index (Anserini through pyserini's jar); see the module doc.

    ``scale`` is the quantisation factor (``round(weight * scale)``); ``model``, ``scale``, ``max_length``
    and ``include_title`` (encode ``title + " " + text`` when a chunk has a title, as the dense index does)
    fix the index's contents; ``batch_size`` and ``threads`` (Anserini's indexer and batched search) only its
    speed; ``dtype`` (``"float32"``, ``"bfloat16"`` or ``"auto"``, see :func:`rag.encoders.choose_dtype`) is
    the encoder network's arithmetic. ``name`` is the
    ``source`` of the hits. Constructing loads no model and starts no Java.
    """

    manifest_kind = KIND
    manifest_version = FORMAT_VERSION
    saved_params = ("model", "scale", "max_length", "include_title")  # they shape the saved impact weights

    model: str = "splade-tiny"
    scale: int = DEFAULT_SCALE
    max_length: int = 512
    batch_size: int = 32
    include_title: bool = True
    threads: int = 1
    name: str = "splade"
    dtype: str = "float32"
    _chunks: dict[str, Chunk] = field(default_factory=dict, init=False)  # chunk id -> chunk, in insertion order
    # the working Lucene impact index; None while nothing is indexed
    _lucene: LuceneDir | None = field(default=None, init=False)
    # Anserini's searcher and the directory it reads
    _searcher: tuple[LuceneDir, Any] | None = field(default=None, init=False)
    # a plain Lucene searcher with Anserini's impact similarity, for score_chunks, and the directory it reads
    _scorer: tuple[LuceneDir, Any] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale < 1:
            raise InputError(f"splade index {self.name!r}: scale must be a positive int, got {self.scale!r}")
        if self.threads < 1:
            raise InputError(f"splade index {self.name!r}: threads must be at least 1, got {self.threads}")
        # checks the encoder settings
        SpladeEncoder(self.model, batch_size=self.batch_size, max_length=self.max_length, dtype=self.dtype)

    # -- the Index protocol ------------------------------------------------------------------------

    def add(self, chunks: Iterable[Chunk]) -> None:
        """Encode and index ``chunks``. A chunk id already present (or twice in ``chunks``) is an error.

        Everything is encoded before Lucene is touched, and nothing changes unless Lucene commits the batch.
        """
        chunks = list(chunks)
        if not chunks:
            return
        check_new_ids(self.name, self._chunks, chunks)
        vectors = quantize(self.encoder.encode_documents([self.text_of(c) for c in chunks]), self.scale)
        self._add_vectors(chunks, vectors)

    def _add_vectors(self, chunks: list[Chunk], vectors: Any) -> None:
        """Index already checked ``chunks`` with their quantised vectors (rows of an int CSR matrix)."""
        if vectors.shape[0] != len(chunks):
            raise InputError(f"splade index {self.name!r}: {vectors.shape[0]} vectors for {len(chunks)} chunks")
        records = [
            {"id": chunk.id, "contents": "", "vector": vector}
            for chunk, vector in zip(chunks, self._term_weights(vectors))
            if vector
        ]
        if records:
            self._lucene = LuceneDir.with_added(self._lucene, records, IMPACT_COLLECTION_ARGS, self.threads)
        for chunk in chunks:
            self._chunks[chunk.id] = chunk

    def search(self, queries: str | Sequence[str], k: int = 10) -> list[list[Hit]]:
        """The ``k`` best chunks for each query, best first (ties by chunk id).

        One str is one query (a batch of one), not one query per character. Scores are Lucene's impact
        scores (the integer dot product) divided by ``scale ** 2``.
        """
        if k < 1:
            raise InputError(f"splade index {self.name!r}: k must be at least 1, got {k}")
        queries = text_batch(queries, f"splade index {self.name!r}")
        if not queries:
            return []
        vectors = self.query_vectors(queries)  # checks the queries even when the index is empty
        if self._lucene is None:
            return [[] for _ in queries]
        maps = self._term_weights(vectors)
        searcher = self._impact_searcher()
        try:
            rows = _impact_search(searcher, maps, k, self.threads)
        except java_exception() as exc:
            raise InputError(
                f"splade index {self.name!r}: Lucene failed on the queries: {java_message(exc)}"
            ) from None
        chunks, name, norm = self._chunks, self.name, float(self.scale) ** 2
        return [
            sorted(
                (Hit(chunk=chunks[docid], score=score / norm, source=name) for docid, score in row),
                key=lambda hit: (-hit.score, hit.chunk.id),
            )
            for row in rows
        ]

    def score_chunks(self, query: str, chunk_ids: str | Sequence[str]) -> list[float]:
        """The score :meth:`search` gives each of ``chunk_ids`` for ``query`` when it returns it, in their order.

        The query is encoded and quantised as :meth:`search` encodes a single query, and Lucene scores only
        these chunks (the same impact query, restricted to their ids by a filter that adds nothing to the
        score): the integer dot product, exact, divided by ``scale ** 2``. A batch given to :meth:`search`
        encodes each query padded beside the others, and that float noise can round a query weight the
        other way, so its scores can differ from these by one quantisation step of one term. A chunk with
        no term in common with the query, or not in Lucene at all (every weight rounded to 0), scores 0.0:
        search never returns it. An id the index does not hold is an error; one str is one id.
        """
        chunk_ids = chunks_to_score(f"splade index {self.name!r}", query, chunk_ids, self)
        if not chunk_ids:
            return []
        (weights,) = self._term_weights(self.query_vectors([query]))
        if self._lucene is None or not weights:
            return [0.0] * len(chunk_ids)
        try:
            found = _impact_scores(self._impact_scorer(), weights, sorted(set(chunk_ids)))
        except java_exception() as exc:
            raise InputError(f"splade index {self.name!r}: Lucene failed on the query: {java_message(exc)}") from None
        norm = float(self.scale) ** 2
        return [found.get(chunk_id, 0.0) / norm for chunk_id in chunk_ids]

    def remove(self, chunk_ids: list[str]) -> None:
        """Remove these chunks (:meth:`delete` is the public call) from a clone of the Lucene index."""
        if self._lucene is not None:
            self._lucene = self._lucene.with_deleted(chunk_ids)  # ids never put into Lucene delete nothing
        for chunk_id in chunk_ids:
            del self._chunks[chunk_id]

    def __len__(self) -> int:
        return len(self._chunks)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._chunks

    def explain(self, query: str, top: int = 20) -> list[tuple[str, float]]:
        """The ``top`` heaviest terms of ``query``'s SPLADE vector (unquantised weights), heaviest first."""
        if not isinstance(query, str):
            raise InputError(f"splade index {self.name!r}: explain takes one query str, got {type(query).__name__}")
        return self.encoder.top_terms(self.encoder.encode_queries([query])[0], top)

    # -- persistence -------------------------------------------------------------------------------

    def write_files(self, staging: Path) -> tuple[list[str], dict[str, Any]]:
        write_chunks(staging / CHUNKS, self._chunks.values(), self.name)
        return [CHUNKS, *save_lucene(self._lucene, staging, LUCENE)], dict(
            model=self.model,
            scale=self.scale,
            quantisation=QUANTISATION,
            weighting=WEIGHTING,
            max_length=self.max_length,
            include_title=self.include_title,
            anserini=anserini_version(),
            lucene_documents=self._lucene.documents() if self._lucene is not None else 0,
        )

    def read_files(self, directory: Path, manifest: dict[str, Any]) -> None:
        chunks = read_chunks(directory / CHUNKS)
        documents = manifest.get("lucene_documents")
        if not isinstance(documents, int) or isinstance(documents, bool):
            raise InputError(f"{directory}/{MANIFEST}: 'lucene_documents' must be an integer, got {documents!r:.40}")
        # The manifest's files are checksummed, so they say whether a Lucene directory was saved.
        if documents and not any(name.startswith(f"{LUCENE}/") for name in manifest["files"]) or \
                not documents and any(name.startswith(f"{LUCENE}/") for name in manifest["files"]):
            raise InputError(f"{directory}/{MANIFEST}: records {documents} Lucene documents, but its files say otherwise")
        if manifest.get("count", len(chunks)) != len(chunks) or not 0 <= documents <= len(chunks):
            raise InputError(
                f"{directory}: {CHUNKS} holds {len(chunks)} chunks, the manifest counts {manifest.get('count')} chunks "
                f"and {documents} Lucene documents; they must agree"
            )
        lucene = LuceneDir.open_saved(directory / LUCENE, documents, f"the manifest records {documents}")
        if self._lucene is not None:
            self._lucene.close()
        self._chunks, self._lucene, self._searcher, self._scorer = chunks, lucene, None, None

    # -- helpers -----------------------------------------------------------------------------------

    @property
    def encoder(self) -> SpladeEncoder:
        """The encoder for ``model`` (models are cached per process, so this is cheap)."""
        return SpladeEncoder(self.model, batch_size=self.batch_size, max_length=self.max_length, dtype=self.dtype)

    def warm_up(self) -> None:
        """Load the model and start Java now, so that the first ``add`` or ``search`` does not pay for it."""
        self.encoder.vocabulary
        _impact_searcher_class()

    def text_of(self, chunk: Chunk) -> str:
        """The text that is encoded for ``chunk``."""
        if self.include_title and chunk.title:
            return f"{chunk.title} {chunk.text}"
        return chunk.text

    def query_vectors(self, queries: str | Sequence[str]) -> Any:
        """The quantised (int32 CSR) vectors that :meth:`search` sends to Lucene (one str is one query)."""
        queries = text_batch(queries, f"splade index {self.name!r}")
        return quantize(self.encoder.encode_queries(queries), self.scale)

    def _term_weights(self, vectors: Any) -> list[dict[str, int]]:
        """One ``{term: int weight}`` dict per row of a quantised CSR matrix."""
        vocabulary = self.encoder.vocabulary
        indptr, indices, data = vectors.indptr.tolist(), vectors.indices.tolist(), vectors.data.tolist()
        return [
            {vocabulary[j]: w for j, w in zip(indices[start:end], data[start:end])}
            for start, end in zip(indptr[:-1], indptr[1:])
        ]

    def lucene_directory(self) -> Path | None:
        """The working Lucene index directory (read-only for callers)."""
        return self._lucene.path if self._lucene is not None else None

    def _impact_searcher(self) -> Any:
        lucene = self._lucene
        assert lucene is not None
        if self._searcher is None or self._searcher[0] is not lucene:
            searcher = run_java(lambda: _impact_searcher_class()(str(lucene.path)), f"opening {lucene.path}")
            lucene._open.append(searcher)  # closed with its directory (see indexes.bm25.LuceneDir)
            self._searcher = (lucene, searcher)
        return self._searcher[1]


    def _impact_scorer(self) -> Any:
        """A Lucene ``IndexSearcher`` over the working directory with the similarity Anserini's impact searcher
        uses (``SimpleImpactSearcher`` takes no Lucene query, so :meth:`score_chunks` cannot filter through it)."""
        lucene = self._lucene
        assert lucene is not None
        if self._scorer is None or self._scorer[0] is not lucene:
            similarity = self._impact_searcher().get_similarity()
            directory, reader = run_java(lambda: _open_reader(lucene.path), f"opening {lucene.path}")
            lucene._open.extend([reader, directory])  # closed with their directory, reader first
            # named: pyjnius would otherwise pick the IndexReaderContext constructor for a DirectoryReader
            searcher = _java("org.apache.lucene.search.IndexSearcher")(
                reader, signature="(Lorg/apache/lucene/index/IndexReader;)V"
            )
            searcher.setSimilarity(similarity)
            self._scorer = (lucene, searcher)
        return self._scorer[1]


# -- Lucene ------------------------------------------------------------------------------------------


def _java(name: str) -> Any:
    from indexes.lucene import java_class

    return java_class(name)


def _open_reader(path: Path) -> tuple[Any, Any]:
    """A Lucene directory and a reader of the index at ``path``."""
    directory = _java("org.apache.lucene.store.FSDirectory").open(_java("java.io.File")(str(path)).toPath())
    try:
        return directory, _java("org.apache.lucene.index.DirectoryReader").open(directory)
    except BaseException:
        directory.close()
        raise


def _impact_scores(searcher: Any, weights: dict[str, int], chunk_ids: list[str]) -> dict[str, float]:
    """Lucene's impact score (the integer dot product) of each of ``chunk_ids`` that shares a term with the
    query ``weights``, through the query ``SimpleImpactSearcher.search`` builds (its weights as floats)."""
    floats, number = _java("java.util.HashMap")(), _java("java.lang.Float")
    for term, weight in weights.items():
        floats.put(term, number(float(weight)))
    query = _java("io.anserini.search.query.BagOfWordsQueryGenerator")().buildQuery("contents", floats)
    top = searcher.search(only_ids(query, chunk_ids), len(chunk_ids))
    stored = searcher.storedFields()
    return {stored.document(hit.doc).get("id"): float(hit.score) for hit in top.scoreDocs}


# Anserini's arguments for records that carry their own term weights (``{"id", "contents", "vector"}``).
IMPACT_COLLECTION_ARGS = [
    "-collection", "JsonVectorCollection", "-generator", "DefaultLuceneDocumentGenerator", "-impact", "-pretokenized",
]


def _impact_search(searcher: Any, maps: list[dict[str, int]], k: int, threads: int) -> list[list[tuple[str, float]]]:
    """``(docid, score)`` rows from Anserini's impact searcher; an empty query vector matches nothing."""
    from indexes.lucene import java_class

    integer, hash_map = java_class("java.lang.Integer"), java_class("java.util.HashMap")

    def java_map(weights: dict[str, int]) -> Any:
        result = hash_map()
        for term, weight in weights.items():
            result.put(term, integer(weight))
        return result

    wanted = [i for i, weights in enumerate(maps) if weights]
    rows: list[list[tuple[str, float]]] = [[] for _ in maps]
    if len(wanted) == 1:
        found = searcher.search(java_map(maps[wanted[0]]), k)
        rows[wanted[0]] = [(hit.docid, float(hit.score)) for hit in found]
    elif wanted:
        # One call for the batch: Anserini searches it with ``threads`` threads and returns a map.
        queries, qids = java_class("java.util.ArrayList")(), java_class("java.util.ArrayList")()
        for i in wanted:
            queries.add(java_map(maps[i]))
            qids.add(str(i))
        by_qid = searcher.batch_search(queries, qids, k, threads)
        for entry in by_qid.entrySet().toArray():
            rows[int(entry.getKey())] = [(hit.docid, float(hit.score)) for hit in entry.getValue()]
    return rows


def _impact_searcher_class() -> Any:
    """Anserini's ``SimpleImpactSearcher``: the Java class pyserini's ``LuceneImpactSearcher`` wraps.

    Called directly with a term -> int weight map (as ``LuceneImpactSearcher.search`` does after encoding),
    so no pyserini query encoder is ever built and nothing is downloaded.
    """
    from indexes.lucene import java_class

    return java_class("io.anserini.search.SimpleImpactSearcher")
