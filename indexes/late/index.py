"""The late-interaction index: one vector per token, documents scored by MaxSim (ColBERT), searched PLAID-style.

    >>> from indexes.late import LateInteractionIndex
    >>> from rag.types import Chunk
    >>> index = LateInteractionIndex()                                 # cheap; the model loads on first use
    >>> index.add([Chunk("c1", "d1", "Aspirin thins the blood.", 0, 24)])   # doctest: +SKIP
    >>> index.search(["what thins blood?"], k=1)[0][0].chunk.id                # doctest: +SKIP
    'c1'
    >>> index.compression_ratio()                                              # doctest: +SKIP
    1.98

Token vectors come from :class:`~indexes.late.encoder.TokenEncoder` (offline, with ``model="minilm"``:
MiniLM token vectors, not a trained ColBERT) and are kept compressed in a
:class:`~indexes.late.store.TokenStore` (``storage="int8"`` or ``"float16"``).

**Search**, in two stages as PLAID does it:

1. candidate generation: the token vectors are clustered with faiss k-means into ``nlist`` centroids
   (:mod:`indexes.late.centroids`); each token keeps its centroid id and each centroid an inverted list of
   the documents that have a token there. Each query token probes its ``nprobe`` most similar centroids
   (one small query x centroids product); a document found in a probed list gets, for that query token,
   the best score among its probed centroids, and otherwise the best unprobed centroid's score (an upper
   bound of what it can have elsewhere). The sum over query tokens approximates MaxSim ("centroid
   interaction"); the best ``candidates`` documents go on;
2. MaxSim of the query against each candidate's stored token vectors, skipping the tokens whose centroid no
   query token probed (PLAID-style pruning: such tokens are rarely any query token's best match; with
   ``nprobe >= nlist`` nothing is skipped and the scores are exact). The rows are converted to float32 and
   multiplied a cache-sized block at a time, which makes this stage cost about what a float32 product does.

``exhaustive=True`` skips stage 1 and scores every document exactly (brute-force MaxSim, the reference).
The defaults (``nlist`` the power of two nearest ``4 * sqrt(tokens)``, 4,096 for SciFact; ``nprobe=128``,
``candidates=512``) are chosen on SciFact's 809 train queries (``python -m eval.bench_late --split train
--grid``, which prints the choice): they keep about 0.966 of brute force's top 100 at about a fifteenth of
its CPU time there, and 0.965 at 14.9x on the 300 test queries (``eval/results/late.md``); raise
``candidates`` (or ``nprobe``) when recall matters more than speed. An index saved with fewer centroids
(1,024, the earlier default for SciFact) still loads and searches; its measured setting was ``nprobe=32``,
``candidates=1024`` (recall 0.95 at about 9x).

:meth:`LateInteractionIndex.compression_ratio` compares float32 token vectors with everything the index
stores (vectors, centroid ids, offsets, centroids); the manifest records it too. The files it saves are
listed in :mod:`indexes.late.files`.
"""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from indexes.late.centroids import assign_centroids, train_centroids
from indexes.late.colbert import is_colbert_checkpoint
from indexes.late.encoder import TokenEncoder, query_vectors, text_of
from indexes.late.files import CENTROIDS, CHUNKS, CODES, FORMAT_VERSION, KIND, TOKENS, load_array
from indexes.late.scoring import query_token_vectors, top_positions
from indexes.late.store import STORAGES, TokenStore
from rag.errors import InputError
from rag.lazy import require
from rag.manifest import SavedIndex, check_new_ids, read_chunks, write_chunks
from rag.protocols import chunks_to_score, text_batch
from rag.registry import declared_params
from rag.types import Chunk, Hit

# Chosen on SciFact's train queries (eval/bench_late.py --split train --grid; eval/results/late.md; 4,096
# centroids): recall@100 against brute force about 0.966, about 15x faster than brute-force MaxSim.
DEFAULT_NPROBE = 128
DEFAULT_CANDIDATES = 512
# Retrain the centroids when the index holds this many times the tokens they were trained on.
RETRAIN_GROWTH = 4


@declared_params
class LateInteractionIndex(SavedIndex):
    """Multi-vector index searched by MaxSim, PLAID-style (see the module doc).

    Offline, with ``model="minilm"``, these are MiniLM token vectors, not a trained ColBERT; give a
    ColBERT checkpoint folder as ``model`` for the real thing. ``nprobe`` centroids are probed per query
    token and the best ``candidates`` documents by centroid interaction are scored by MaxSim (on the tokens
    of probed centroids); ``nlist=None`` picks :func:`~indexes.late.centroids.default_nlist`.
    ``exhaustive=True`` scores every document exactly instead. ``name`` is the ``source`` of the hits.
    """

    manifest_kind = KIND
    manifest_version = FORMAT_VERSION
    # what the stored vectors depend on; search settings (nprobe, candidates, exhaustive) are the loading index's
    saved_params = ("model", "storage", "max_length")

    model: str = "minilm"
    storage: str = "int8"
    nlist: int | None = None
    nprobe: int = DEFAULT_NPROBE
    candidates: int = DEFAULT_CANDIDATES
    exhaustive: bool = False
    max_length: int = 256
    batch_size: int = 32
    name: str = "late"
    dtype: str = "float32"
    _encoder: TokenEncoder = field(init=False)  # built in __post_init__ (cheap: the model loads on first use)
    _chunks: list[Chunk] = field(default_factory=list, init=False)  # in storage order
    _rows: dict[str, int] = field(default_factory=dict, init=False)  # chunk id -> row
    _store: TokenStore = field(init=False)  # built in __post_init__, empty, with this index's storage
    _centroids: np.ndarray | None = field(default=None, init=False)
    # centroid id per token row
    _codes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32), init=False)
    _trained_tokens: int = field(default=0, init=False)
    # centroid -> documents (CSR), derived
    _lists: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False)
    _quantizer: Any = field(default=None, init=False)  # derived from the centroids

    def __post_init__(self) -> None:
        name, storage, nlist, nprobe, candidates = self.name, self.storage, self.nlist, self.nprobe, self.candidates
        if storage not in STORAGES:
            raise InputError(f"late index {name!r}: storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        if nlist is not None and nlist < 1 or nprobe < 1 or candidates < 1:
            raise InputError(
                f"late index {name!r}: need nlist >= 1 (or None), nprobe >= 1 and candidates >= 1; "
                f"got nlist={nlist}, nprobe={nprobe}, candidates={candidates}"
            )
        self._encoder = TokenEncoder(
            self.model, max_length=self.max_length, batch_size=self.batch_size, dtype=self.dtype
        )
        self._store = TokenStore(storage)

    # -- the Index protocol ------------------------------------------------------------------------

    def add(self, chunks: Iterable[Chunk]) -> None:
        """Encode and add ``chunks``. A chunk id already present (or twice in ``chunks``) is an error.

        Everything is encoded before the index changes, so a failure leaves it as it was. New tokens are
        assigned to the existing centroids; the centroids are (re)trained on the first add and whenever
        the index has grown to ``RETRAIN_GROWTH`` times the tokens they were trained on.
        """
        chunks = list(chunks)
        if not chunks:
            return
        check_new_ids(self.name, self._rows, chunks)
        vectors = self._encoder.encode_documents([text_of(c) for c in chunks])
        self._check_dimension(vectors)
        self.add_encoded(chunks, vectors)

    def add_encoded(self, chunks: list[Chunk], vectors: list[np.ndarray]) -> None:
        """Add chunks whose token vectors were computed already (by this index's encoder: see
        :meth:`encode_chunks`); benchmarks use it to build several variants from one encoding."""
        chunks = list(chunks)
        check_new_ids(self.name, self._rows, chunks)
        if len(vectors) != len(chunks):
            raise InputError(f"late index {self.name!r}: {len(chunks)} chunks but {len(vectors)} token matrices")
        self._check_dimension(vectors)
        store = self._store.extended(list(vectors))
        centroids, codes, trained = self._centroids, self._codes, self._trained_tokens
        if centroids is None or store.n_tokens >= RETRAIN_GROWTH * max(trained, 1):
            centroids, trained = train_centroids(store, self.nlist), store.n_tokens
            codes = assign_centroids(store, centroids, 0)
        else:
            codes = np.concatenate([codes, assign_centroids(store, centroids, self._store.n_tokens)])
        self._store, self._centroids, self._codes, self._trained_tokens = store, centroids, codes, trained
        start = len(self._chunks)
        self._chunks.extend(chunks)
        self._rows.update((c.id, start + i) for i, c in enumerate(chunks))
        self._derive()

    def encode_chunks(self, chunks: Sequence[Chunk]) -> list[np.ndarray]:
        """The token vectors this index would store for ``chunks`` (float32, before compression)."""
        return self._encoder.encode_documents([text_of(c) for c in chunks])

    def encode_queries(self, queries: str | Sequence[str]) -> list[np.ndarray]:
        """The query token vectors :meth:`search` uses (one str is one query)."""
        return query_vectors(self._encoder, self.name, queries)

    def search(self, queries: str | Sequence[str], k: int = 10) -> list[list[Hit]]:
        """The ``k`` best chunks for each query by MaxSim, best first (ties by storage order).

        One str is one query (a batch of one), not one query per character.
        """
        if k < 1:
            raise InputError(f"late index {self.name!r}: k must be at least 1, got {k}")
        queries = text_batch(queries, f"late index {self.name!r}")
        if not queries:
            return []
        vectors = self.encode_queries(queries)
        if len(self) == 0:
            return [[] for _ in queries]
        return self.search_encoded(vectors, k, exhaustive=self.exhaustive)

    def search_encoded(
        self, queries: list[np.ndarray], k: int, exhaustive: bool | None = None,
        nprobe: int | None = None, candidates: int | None = None,
    ) -> list[list[Hit]]:
        """Search with query token vectors from :meth:`encode_queries`; ``None`` overrides mean this index's settings."""
        ranked = self.rank(queries, k, exhaustive=exhaustive, nprobe=nprobe, candidates=candidates)
        return [[Hit(chunk=self._chunks[r], score=float(s), source=self.name) for r, s in row] for row in ranked]

    def rank(
        self, queries: list[np.ndarray], k: int, exhaustive: bool | None = None,
        nprobe: int | None = None, candidates: int | None = None,
    ) -> list[list[tuple[int, float]]]:
        """``(row, score)`` pairs per query, best first: the search without building hits."""
        exhaustive = self.exhaustive if exhaustive is None else exhaustive
        if len(self) == 0:
            return [[] for _ in queries]
        if exhaustive:
            results = []
            for start in range(0, len(queries), 64):  # bounds the (query tokens x block) similarity matrix
                scores = self._store.all_scores(list(queries[start:start + 64]))
                results.extend([(int(r), float(row[r])) for r in top_positions(row, k)] for row in scores)
            return results
        nprobe = self.nprobe if nprobe is None else nprobe
        candidates = self.candidates if candidates is None else candidates
        return [self._rank_one(np.asarray(q, dtype=np.float32), k, nprobe, candidates) for q in queries]

    def candidate_rows(self, query: np.ndarray, nprobe: int | None = None, candidates: int | None = None) -> np.ndarray:
        """Stage 1 for one query: the rows of the documents that go on to exact MaxSim (sorted)."""
        return self._candidates(np.asarray(query, dtype=np.float32), nprobe, candidates)[0]

    def _candidates(
        self, query: np.ndarray, nprobe: int | None, candidates: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidate rows (sorted) and the probed centroids of each query token, ``(query tokens, nprobe)``.

        Centroid interaction: per query token, a document scores its best probed centroid's similarity, or,
        with no token in a probed centroid, the best unprobed centroid's (an upper bound); the sum over query
        tokens ranks the documents found in a probed list.
        """
        nlist = len(self._centroids)
        nprobe = min(self.nprobe if nprobe is None else nprobe, nlist)
        candidates = self.candidates if candidates is None else candidates
        list_offsets, list_docs = self._lists
        n_tokens, n_docs = len(query), len(self)
        part, part_scores = self._nearest_centroids(query, nprobe)
        probes, probe_scores = part[:, :nprobe], part_scores[:, :nprobe]
        floor = part_scores[:, nprobe] if nprobe < nlist else part_scores[:, -1]
        approx = np.repeat(floor[:, None], n_docs, axis=1)
        # Every (query token, probed centroid) list at once, lowest score first per token, so that where a
        # document is in several probed lists of a token the best score is written last.
        lists = probes[:, ::-1].ravel()
        values = probe_scores[:, ::-1].ravel()
        token_of = np.repeat(np.arange(n_tokens, dtype=np.int64), nprobe)
        starts = list_offsets[lists]
        lengths = list_offsets[lists + 1] - starts
        total = int(lengths.sum())
        shift = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        docs = list_docs[np.arange(total, dtype=np.int64) + shift]
        approx.ravel()[np.repeat(token_of * n_docs, lengths) + docs] = np.repeat(values, lengths)
        found = np.zeros(n_docs, dtype=bool)
        found[docs] = True
        pool = np.flatnonzero(found)
        if len(pool) > candidates:
            pool = np.sort(pool[top_positions(approx[:, pool].sum(axis=0), candidates)])
        return pool, probes

    def _nearest_centroids(self, query: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """Each query token's ``nprobe + 1`` most similar centroids (all ``nlist`` when ``nprobe >= nlist``),
        best first (ties by centroid id), and their similarities: ``(query tokens, nprobe + 1)`` arrays.

        One function for stage 1 and :meth:`score_encoded`, so that both prune with the same probes."""
        nlist = len(self._centroids)
        sims = query @ self._centroids.T  # (query tokens, centroids)
        if nprobe < nlist:
            part = np.argpartition(-sims, nprobe, axis=1)[:, : nprobe + 1]
        else:
            part = np.repeat(np.arange(nlist)[None, :], len(query), axis=0)
        part_scores = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)

    def _kept_centroids(self, probes: np.ndarray) -> np.ndarray | None:
        """Which centroids' tokens stage 2 scores (a bool per centroid), or None for all of them."""
        if probes.shape[1] >= len(self._centroids):
            return None
        # Only tokens in a centroid probed by some query token are scored (PLAID-style pruning).
        keep = np.zeros(len(self._centroids), dtype=bool)
        keep[probes.ravel()] = True
        return keep

    def _rank_one(self, query: np.ndarray, k: int, nprobe: int, candidates: int) -> list[tuple[int, float]]:
        rows, probes = self._candidates(query, nprobe, candidates)
        if len(rows) == 0:
            return []
        scores = self._store.scores(query, rows, codes=self._codes, keep=self._kept_centroids(probes))
        return [(int(rows[i]), float(scores[i])) for i in top_positions(scores, k)]

    def score_chunks(self, query: str, chunk_ids: str | Sequence[str]) -> list[float]:
        """The score :meth:`search` gives each of ``chunk_ids`` for ``query`` when it returns it, in their order.

        Only these chunks are scored, by stage 2 as search scores a candidate: MaxSim of the query's token
        vectors against the chunk's stored ones, skipping the tokens whose centroid no query token probes
        (none skipped with ``exhaustive`` or ``nprobe >= nlist``). Whether stage 1 would make the chunk a
        candidate does not enter. An id the index does not hold is an error; one str is one id.
        """
        chunk_ids = chunks_to_score(f"late index {self.name!r}", query, chunk_ids, self)  # before the model runs
        if not chunk_ids:
            return []
        return self.score_encoded(self.encode_queries([query])[0], chunk_ids)

    def score_encoded(
        self, query: np.ndarray, chunk_ids: str | Sequence[str], exhaustive: bool | None = None,
        nprobe: int | None = None,
    ) -> list[float]:
        """Like :meth:`score_chunks`, for one query's token vectors from :meth:`encode_queries`; ``None``
        overrides mean this index's settings, as in :meth:`search_encoded`."""
        chunk_ids = text_batch(chunk_ids, f"late index {self.name!r}", item="chunk id")
        rows = self._row_numbers(chunk_ids)
        if not len(rows):
            return []
        query = query_token_vectors(f"late index {self.name!r}", query, self._store.dimension)
        exhaustive = self.exhaustive if exhaustive is None else exhaustive
        if exhaustive:
            return self._store.scores(query, rows).tolist()
        nprobe = min(self.nprobe if nprobe is None else nprobe, len(self._centroids))
        keep = self._kept_centroids(self._nearest_centroids(query, nprobe)[0][:, :nprobe])
        return self._store.scores(query, rows, codes=self._codes, keep=keep).tolist()

    def _row_numbers(self, chunk_ids: list[str]) -> np.ndarray:
        """The storage rows of these chunks; an id the index does not hold is an error naming it."""
        try:
            return np.array([self._rows[chunk_id] for chunk_id in chunk_ids], dtype=np.int64)
        except KeyError as exc:
            raise InputError(f"late index {self.name!r}: chunk id {exc.args[0]!r} is not in the index") from None

    def remove(self, chunk_ids: list[str]) -> None:
        """Remove these chunks' rows and tokens (:meth:`delete` is the public call)."""
        rows = sorted(self._rows[c] for c in chunk_ids)
        drop = np.asarray(rows, dtype=np.int64)
        keep_tokens = np.ones(self._store.n_tokens, dtype=bool)
        for r in rows:
            keep_tokens[self._store.offsets[r]:self._store.offsets[r + 1]] = False
        store, codes = self._store.without(drop), self._codes[keep_tokens]
        gone = set(rows)
        chunks = [c for i, c in enumerate(self._chunks) if i not in gone]
        self._store, self._codes, self._chunks = store, codes, chunks
        self._rows = {c.id: i for i, c in enumerate(chunks)}
        if not chunks:
            self._centroids, self._codes, self._trained_tokens = None, np.zeros(0, np.int32), 0
        self._derive()

    def __len__(self) -> int:
        return len(self._chunks)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._rows

    # -- sizes -------------------------------------------------------------------------------------

    @property
    def n_tokens(self) -> int:
        """Token vectors stored."""
        return self._store.n_tokens

    @property
    def token_bytes_float32(self) -> int:
        """Bytes the token vectors would take uncompressed (float32)."""
        return int(self._store.n_tokens * self._store.dimension * 4)

    @property
    def stored_bytes(self) -> int:
        """Bytes of everything the index keeps for search: vectors, scales, offsets, centroid ids, centroids."""
        centroids = self._centroids.nbytes if self._centroids is not None else 0
        return int(self._store.stored_bytes + self._codes.nbytes + centroids)

    def compression_ratio(self) -> float:
        """Uncompressed float32 token vectors / :attr:`stored_bytes` (0 when empty)."""
        stored = self.stored_bytes
        return round(self.token_bytes_float32 / stored, 3) if stored and self.n_tokens else 0.0

    # -- persistence -------------------------------------------------------------------------------

    def write_files(self, staging: Path) -> tuple[list[str], dict[str, Any]]:
        write_chunks(staging / CHUNKS, self._chunks, self.name)
        files = [CHUNKS, *self._store.save(staging)]
        if self._centroids is not None:
            np.save(staging / CENTROIDS, self._centroids, allow_pickle=False)
            np.save(staging / CODES, self._codes, allow_pickle=False)
            files += [CENTROIDS, CODES]
        return files, dict(
            model=self.model,
            encoder="colbert" if self._loaded_colbert() else "token-embeddings",
            dimension=self._store.dimension,
            storage=self.storage,
            tokens=self.n_tokens,
            nlist=0 if self._centroids is None else len(self._centroids),
            trained_tokens=self._trained_tokens,
            token_bytes_float32=self.token_bytes_float32,
            stored_bytes=self.stored_bytes,
            compression_ratio=self.compression_ratio(),
        )

    def read_files(self, directory: Path, manifest: dict[str, Any]) -> None:
        chunks = list(read_chunks(directory / CHUNKS).values())
        store = TokenStore.read(directory, self.storage, len(chunks))
        centroids, codes = None, np.zeros(0, dtype=np.int32)
        if (directory / CENTROIDS).is_file():
            centroids = load_array(directory / CENTROIDS, np.float32)
            codes = load_array(directory / CODES, np.int32)
            if len(codes) != store.n_tokens or centroids.ndim != 2 or centroids.shape[1] != store.dimension or (
                len(codes) and (codes.min() < 0 or codes.max() >= len(centroids))
            ):
                raise InputError(f"{directory}: {CENTROIDS} and {CODES} do not match {TOKENS}")
        elif chunks:
            raise InputError(f"{directory}: {len(chunks)} chunks but no {CENTROIDS}")
        self._chunks, self._store, self._centroids, self._codes = chunks, store, centroids, codes
        self._rows = {c.id: i for i, c in enumerate(chunks)}
        self._trained_tokens = int(manifest.get("trained_tokens", store.n_tokens))
        self._derive()

    # -- helpers -----------------------------------------------------------------------------------

    @property
    def encoder(self) -> TokenEncoder:
        return self._encoder

    def warm_up(self) -> None:
        """Load the model now, so that the first ``add`` or ``search`` does not pay for it."""
        self._encoder.backend
        require("faiss", "dense", "faiss-cpu")

    def text_of(self, chunk: Chunk) -> str:
        return text_of(chunk)

    def _loaded_colbert(self) -> bool:
        from rag.encoders import resolve_model_path

        return is_colbert_checkpoint(resolve_model_path(self.model))

    def _check_dimension(self, vectors: Sequence[np.ndarray]) -> None:
        dims = {v.shape[1] for v in vectors if v.size}
        if self._store.dimension:
            dims.add(self._store.dimension)
        if len(dims) > 1:
            raise InputError(f"late index {self.name!r}: token vectors of widths {sorted(dims)}; one model per index")

    def _derive(self) -> None:
        """Rebuild the inverted lists (centroid -> documents) and the faiss quantizer from codes and centroids."""
        if self._centroids is None or len(self) == 0:
            self._lists, self._quantizer = None, None
            return
        faiss = require("faiss", "dense", "faiss-cpu")
        quantizer = faiss.IndexFlatIP(self._centroids.shape[1])
        quantizer.add(self._centroids)
        nlist, n_docs = len(self._centroids), len(self)
        doc_of_token = np.repeat(np.arange(n_docs, dtype=np.int64), np.diff(self._store.offsets))
        pairs = np.unique(self._codes.astype(np.int64) * n_docs + doc_of_token)
        list_codes, list_docs = pairs // n_docs, (pairs % n_docs).astype(np.int64)
        list_offsets = np.searchsorted(list_codes, np.arange(nlist + 1))
        self._lists, self._quantizer = (list_offsets, list_docs), quantizer
