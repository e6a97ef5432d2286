"""After retrieval, before the context: rerankers rescore a query's hits and filters cut or reorder them.

| module | holds |
|---|---|
| :mod:`ranking.rerankers` | ``cross-encoder``, ``llm-pointwise`` and ``first`` (FIRST's single-token listwise ranking) |
| :mod:`ranking.filters` | ``top-k``, ``threshold``, ``score-drop``, ``mmr`` and ``reorder`` |
| :mod:`ranking.calibrated` | the ``calibrated`` filter: per-query score features, a logistic fit on labelled queries, one global threshold; ``specrag fit-filter`` fits it |

The base classes are in the core (:class:`rag.protocols.BaseReranker`, :class:`rag.protocols.BaseFilter`),
with :func:`rag.protocols.check_hits`, which every reranker and filter runs its input through. The
``maxsim`` reranker lives with the late-interaction index, whose token encoder and scoring it shares
(:mod:`indexes.late`).
"""
