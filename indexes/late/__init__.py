"""Late interaction: one vector per token, documents scored by MaxSim (ColBERT), searched PLAID-style.

    >>> from indexes.late import LateInteractionIndex, LateRerankIndex, MaxSimReranker
    >>> from rag.types import Chunk
    >>> index = LateInteractionIndex()                                 # cheap; the model loads on first use
    >>> index.add([Chunk("c1", "d1", "Aspirin thins the blood.", 0, 24)])   # doctest: +SKIP
    >>> index.search(["what thins blood?"], k=1)[0][0].chunk.id                # doctest: +SKIP
    'c1'

Offline, with the default ``model="minilm"``, the token vectors are **MiniLM token vectors, not a trained
ColBERT** (no ColBERT weights exist offline; a folder in the ColBERT layout is loaded as a real ColBERT).
``score(q, d) = sum_i max_j <q_i, d_j>`` over the query's and the document's token vectors.

Three components, registered as ``late``, ``late-rerank`` (indexes) and ``maxsim`` (reranker):

- :class:`LateInteractionIndex`: centroid candidate generation, then exact MaxSim on the candidates' stored
  vectors (``exhaustive=True``: brute-force MaxSim over everything);
- :class:`LateRerankIndex`: Lucene BM25's top ``depth``, reranked by MaxSim on stored vectors;
- :class:`MaxSimReranker`: reranks any hits by MaxSim, encoding their texts on the fly.

The files, in the order a newcomer might read them:

============================  ============================================================================
``encoder.py``                :class:`TokenEncoder` (token vectors from a BERT-like model or a ColBERT),
                              :func:`text_of`, ``query_vectors``
``colbert.py``                the ColBERT checkpoint layout: :func:`is_colbert_checkpoint`, ``ColBERT``
                              (loading, and encoding a batch with markers and query augmentation)
``scoring.py``                :func:`maxsim`, ``segment_maxsim`` (stacked documents), ``top_positions``
``store.py``                  ``TokenStore``: token vectors compressed to float16 or int8, scored in blocks
``centroids.py``              :func:`default_nlist`, k-means training and assignment of tokens to centroids
``index.py``                  :class:`LateInteractionIndex` and its PLAID-style search
``rerank_index.py``           :class:`LateRerankIndex`
``reranker.py``               :class:`MaxSimReranker`
``files.py``                  the saved format: version, kinds, file names, the checked ``.npy`` reader
============================  ============================================================================
"""

from indexes.late.centroids import CENTROIDS_PER_SQRT_TOKEN, default_nlist
from indexes.late.colbert import is_colbert_checkpoint
from indexes.late.encoder import TokenEncoder, text_of
from indexes.late.index import LateInteractionIndex
from indexes.late.rerank_index import LateRerankIndex
from indexes.late.reranker import MaxSimReranker
from indexes.late.scoring import maxsim

__all__ = [
    "CENTROIDS_PER_SQRT_TOKEN",
    "LateInteractionIndex",
    "LateRerankIndex",
    "MaxSimReranker",
    "TokenEncoder",
    "default_nlist",
    "is_colbert_checkpoint",
    "maxsim",
    "text_of",
]
