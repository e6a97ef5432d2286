"""Benchmarks and research scripts: what specrag costs (speed, memory) and the measurements behind its defaults.

The evaluation harness (``eval/``, what ``specrag eval ...`` runs) scores quality against pinned numbers;
these modules measure. Nothing imports them but the command line's lazily loaded ``bench`` command; they
may import ``eval`` (data loaders, metrics), never the other way round. Their recorded results stay with
the harness's in ``eval/results/``, so that every measured number is in one place.

Benchmarks (``make bench`` runs them, except ``faults``, which ``make test-slow`` runs, and ``ray``):

- :mod:`bench.indexing`: the dense indexing path against sentence-transformers called directly.
  ``python -m bench.indexing``
- :mod:`bench.bm25`: BM25 search against pyserini and bm25s, and where bm25s stops being faster.
  ``python -m bench.bm25``
- :mod:`bench.dense`: ``DenseIndex`` against raw faiss, HNSW and IVF-PQ against exact search
  (``--grid``: how the IVF-PQ defaults were chosen). ``python -m bench.dense --split test``
- :mod:`bench.late`: late interaction, candidate search against brute-force MaxSim, reranking, index size
  (``--grid``: how the defaults were chosen). ``python -m bench.late --split test``
- :mod:`bench.chunking`: chunking throughput, perplexity chunking on each engine against semantic.
  ``python -m bench.chunking``
- :mod:`bench.compression`: compression speed on a long context, surprisal on each engine against
  extractive. ``python -m bench.compression --repeats 2``
- :mod:`bench.memory`: peak memory of chunking and indexing one very large document.
  ``python -m bench.memory --mb 50``
- :mod:`bench.encoders`: bfloat16 against float32 for one encoder, speed and retrieval quality.
  ``python -m bench.encoders --encoder dense`` (``late``, ``splade``)
- :mod:`bench.generate`: decoding speed on RAG prompts, engine by engine, speculative against plain.
  ``specrag bench generate``, ``specrag bench engines``
- :mod:`bench.ray`: Ray ingestion and sharded search against the single-process path.
  ``python -m bench.ray``
- :mod:`bench.faults`: index writers killed at random moments; the path must hold the old or the new
  version, never a torn one. ``python -m bench.faults --trials 20 --fallback``

Research scripts (one-off measurements whose numbers became defaults or claims; rerun them to check):

- :mod:`bench.draft_acceptance`: how often looked-up drafts are accepted, by match length (the
  speculative decoder's acceptance priors).
  ``python -m bench.draft_acceptance --data ../shared/data/hotpotqa-dev-fullwiki-500``
- :mod:`bench.splade_exact`: SPLADE through Lucene's impact index against an exact sparse dot product.
  ``python -m bench.splade_exact --data ../shared/data/scifact``
"""
