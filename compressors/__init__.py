"""Context compressors: keep what the question needs within a token budget.

Registered names (``rag.registry.build("compressor", name)``): ``extractive``
(:class:`compressors.extractive.ExtractiveCompressor`), ``surprisal`` and ``classifier``
(:mod:`compressors.pruning`), ``compose`` (:class:`compressors.compose.ComposeCompressor`) and its preset
``extractive+surprisal``.
"""
