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

The encoder (:class:`SpladeEncoder`) runs any Hugging Face masked-LM SPLADE checkpoint (the ``splade-tiny``
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
:mod:`indexes.manifest`; SPLADE adds ``model``, ``scale``, ``quantisation``, ``weighting``, ``vocab_size``,
``anserini`` and ``lucene_documents``), ``chunks.jsonl`` (one ``Chunk.to_dict()`` per line, in insertion
order) and ``lucene/`` (the Lucene impact index files, each checksummed in the manifest).
"""

from __future__ import annotations

import sys
from dataclasses import field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from indexes.lucene import anserini_version, java_exception, java_message, run_java
from indexes.lucene_dir import LuceneDir, save_lucene
from indexes.manifest import MANIFEST, SavedIndex, check_new_ids, read_chunks, write_chunks
from rag.encoders import PROGRESS_THRESHOLD, warn_long_queries
from rag.errors import InputError
from rag.lazy import require
from rag.protocols import text_batch
from rag.registry import declared_params
from rag.shared import shared_model
from rag.types import Chunk, Hit

FORMAT_VERSION = 1
KIND = "splade"
CHUNKS = "chunks.jsonl"
LUCENE = "lucene"
DEFAULT_SCALE = 100
WEIGHTING = "max over non-padding tokens of log(1 + relu(MLM logits))"
QUANTISATION = "round(weight * scale) to an int, terms rounding to 0 dropped; Lucene score / scale**2 reported"
EXTRA = "dense"  # torch + transformers come with the dense extra (sentence-transformers)

__all__ = ["SpladeEncoder", "SpladeIndex", "quantize"]


# -- the encoder -------------------------------------------------------------------------------------


def _load_model(model: str, dtype: str = "float32") -> tuple[Any, Any, list[str]]:
    """Tokenizer, masked-LM model (eval mode, in ``dtype``) and vocabulary for ``model``, loaded once per process."""
    path, key = _model_key(model, dtype)

    def load() -> tuple[Any, Any, list[str]]:
        require("torch", EXTRA)
        transformers = require("transformers", EXTRA)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        tokenizer.padding_side = "right"  # the encoder masks padding by position (our own copy: safe to set)
        network = transformers.AutoModelForMaskedLM.from_pretrained(path).eval()
        if dtype != "float32":
            network = network.to(getattr(require("torch", EXTRA), dtype))
        width = int(network.get_output_embeddings().weight.shape[0])
        vocabulary = [str(t) for t in tokenizer.convert_ids_to_tokens(list(range(width)))]
        _check_vocabulary(model, vocabulary)
        return tokenizer, network, vocabulary

    return shared_model(key, load)


def _model_key(model: str, dtype: str) -> tuple[str, tuple[str, str, str]]:
    """The resolved path of ``model`` and its key in the shared model cache (by real path, so that two
    spellings of one folder share one model)."""
    from rag.models import resolve_model

    path = resolve_model(model)
    return path, ("splade", str(Path(path).resolve()) if Path(path).exists() else path, dtype)


def _check_vocabulary(model: str, vocabulary: list[str]) -> None:
    # Terms go to Lucene as whitespace-separated, case-sensitive tokens: each must be one distinct token.
    for token_id, token in enumerate(vocabulary):
        if not token or token != "".join(token.split()):
            raise InputError(
                f"SPLADE model {model!r}: vocabulary entry {token_id} ({token!r}) is empty or holds whitespace"
            )
    if len(set(vocabulary)) != len(vocabulary):
        raise InputError(f"SPLADE model {model!r}: its vocabulary holds the same token string twice")


class SpladeEncoder:
    """SPLADE term weights from a masked-LM checkpoint, as ``scipy.sparse.csr_matrix`` (float32) rows.

    ``model`` is a pack name (``"splade-tiny"``), a local folder or a hub id. Texts are truncated to
    ``max_length`` tokens and encoded in batches of at most ``batch_size`` texts and ``max_batch_tokens``
    padded tokens (texts are sorted by length first, so little is padded; the MLM logits of a batch take
    ``max_batch_tokens * vocab_size * 4`` bytes). ``show_progress=None`` shows a bar only for long jobs on a
    terminal. ``dtype="bfloat16"`` runs the network in bfloat16 (faster on CPUs with AVX512-BF16 or AMX;
    ``"auto"`` measures which is faster here); the weights come out in float32. Constructing is cheap: the model loads on first use and is shared
    within the process.

        >>> enc = SpladeEncoder()                                  # doctest: +SKIP
        >>> enc.encode_queries(["aspirin and blood clots"]).shape  # doctest: +SKIP
        (1, 30522)
    """

    def __init__(
        self,
        model: str = "splade-tiny",
        batch_size: int = 32,
        max_length: int = 512,
        max_batch_tokens: int = 4096,
        show_progress: bool | None = None,
        dtype: str = "float32",
    ) -> None:
        from rag.encoders import check_dtype

        check_dtype(model, dtype)
        if batch_size < 1 or max_length < 2 or max_batch_tokens < max_length:
            raise InputError(
                f"SPLADE encoder {model!r}: need batch_size >= 1, max_length >= 2 and max_batch_tokens >= max_length, "
                f"got {batch_size}, {max_length}, {max_batch_tokens}"
            )
        self.model = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.max_batch_tokens = max_batch_tokens
        self.show_progress = show_progress
        self.dtype = dtype

    @property
    def vocabulary(self) -> list[str]:
        """The token string of each column (loads the model)."""
        return _load_model(self.model, self.resolved_dtype)[2]

    @property
    def resolved_dtype(self) -> str:
        """``dtype``, or for ``"auto"`` the dtype measured to be faster here (:func:`rag.encoders.choose_dtype`)."""
        from rag.encoders import AUTO, choose_dtype
        from rag.shared import forget

        if self.dtype != AUTO:
            return self.dtype
        return choose_dtype(
            "splade", self.model,
            lambda dtype: SpladeEncoder(self.model, self.batch_size, self.max_length, self.max_batch_tokens,
                                        show_progress=False, dtype=dtype),
            lambda dtype: forget(_model_key(self.model, dtype)[1]),
        )

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def encode_documents(self, texts: str | Sequence[str]) -> Any:
        """Term weights of corpus texts: a ``(len(texts), vocab_size)`` float32 CSR matrix, rows in input order."""
        return self._encode(texts, "documents")

    def encode_queries(self, texts: str | Sequence[str]) -> Any:
        """Term weights of queries, as :meth:`encode_documents` (SPLADE encodes both sides alike)."""
        return self._encode(texts, "queries")

    def top_terms(self, row: Any, top: int = 20) -> list[tuple[str, float]]:
        """The ``top`` heaviest ``(term, weight)`` pairs of one encoded row, heaviest first (ties by term)."""
        if top < 1:
            raise InputError(f"SPLADE encoder {self.model!r}: top must be at least 1, got {top}")
        row = row.tocsr()
        vocabulary = self.vocabulary
        pairs = [(vocabulary[j], float(w)) for j, w in zip(row.indices.tolist(), row.data.tolist()) if w > 0]
        return sorted(pairs, key=lambda pair: (-pair[1], pair[0]))[:top]

    def _encode(self, texts: str | Sequence[str], what: str) -> Any:
        sparse = require("scipy.sparse", EXTRA, "scipy")
        texts = text_batch(texts, f"SPLADE encoder {self.model!r}", f"{what} item")
        tokenizer, network, vocabulary = _load_model(self.model, self.resolved_dtype)
        if not texts:
            return sparse.csr_matrix((0, len(vocabulary)), dtype=np.float32)
        torch = require("torch", EXTRA)
        if what == "queries":
            warn_long_queries(tokenizer, texts, self.max_length, f"SPLADE encoder {self.model!r}")
        tokenized = tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(tokenized[i]))
        parts: list[Any] = []
        done: list[int] = []
        tqdm = require("tqdm", EXTRA).tqdm
        with tqdm(total=len(texts), desc=f"SPLADE {what}", unit="text", disable=not self._progress(len(texts))) as bar:
            with torch.inference_mode():
                for batch in self._batches(order, [len(t) for t in tokenized]):
                    padded = tokenizer.pad({"input_ids": [tokenized[i] for i in batch]}, return_tensors="pt")
                    mask = padded["attention_mask"]
                    logits = network(input_ids=padded["input_ids"], attention_mask=mask).logits
                    # log(1 + relu(x)) is monotonic: take the masked max of the logits, then transform (B, V).
                    # Padding is right-hand; only those positions are touched (one pass over the logits saved).
                    for row, length in enumerate(mask.sum(dim=1).tolist()):
                        logits[row, length:] = float("-inf")
                    weights = torch.log1p(torch.relu(logits.amax(dim=1).float())).numpy()
                    parts.append(sparse.csr_matrix(weights, dtype=np.float32))
                    done.extend(batch)
                    bar.update(len(batch))
        # Rows come in length order; put them back in input order.
        return sparse.vstack(parts, format="csr", dtype=np.float32)[np.argsort(np.asarray(done))]

    def _batches(self, order: list[int], lengths: list[int]) -> Iterable[list[int]]:
        # ``order`` is sorted by length, so a batch's padded size is its last text's length times its size.
        batch: list[int] = []
        for i in order:
            if batch and (len(batch) >= self.batch_size or (len(batch) + 1) * lengths[i] > self.max_batch_tokens):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    def _progress(self, n: int) -> bool:
        if self.show_progress is not None:
            return self.show_progress
        return n > PROGRESS_THRESHOLD and sys.stderr.isatty()

    def __repr__(self) -> str:
        return (f"SpladeEncoder(model={self.model!r}, batch_size={self.batch_size}, max_length={self.max_length}, "
                f"dtype={self.dtype!r})")


def quantize(vectors: Any, scale: int = DEFAULT_SCALE) -> Any:
    """``round(weight * scale)`` as an int32 CSR matrix, entries that round to 0 removed."""
    quantized = vectors.tocsr().astype(np.float64)
    quantized.data = np.rint(quantized.data * scale)
    quantized.eliminate_zeros()
    return quantized.astype(np.int32)


# -- the index ---------------------------------------------------------------------------------------


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

    def delete(self, chunk_ids: Iterable[str]) -> int:
        """Remove the chunks with these ids; returns how many were removed (unknown ids are skipped)."""
        found = list(dict.fromkeys(c for c in chunk_ids if c in self._chunks))
        if not found:
            return 0
        if self._lucene is not None:
            self._lucene = self._lucene.with_deleted(found)  # ids never put into Lucene delete nothing
        for chunk_id in found:
            del self._chunks[chunk_id]
        return len(found)

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
        lucene = LuceneDir.from_saved(directory / LUCENE) if documents else None
        if lucene is not None and lucene.documents() != documents:
            found = lucene.documents()
            lucene.close()
            raise InputError(f"{directory}/{LUCENE}: holds {found} documents, the manifest records {documents}")
        if self._lucene is not None:
            self._lucene.close()
        self._chunks, self._lucene, self._searcher = chunks, lucene, None

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


# -- Lucene ------------------------------------------------------------------------------------------


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
