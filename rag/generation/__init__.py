"""Generation: the engine layer, plain and speculative decoding, the drafters and the grounded generator.

- :mod:`rag.generation.engine`: the protocol (``Engine``, ``Session``) and :func:`load_engine`;
- :mod:`rag.generation.hf` (transformers, float32/bfloat16) and :mod:`rag.generation.llamacpp` (GGUF);
- :mod:`rag.generation.calibrate`: ``engine="auto"``, chosen by measurement on this machine;
- :mod:`rag.generation.decode`: the plain decoding loop; :mod:`rag.generation.speculative`: our speculative
  loop; :mod:`rag.generation.drafters`: what drafts for it;
- :mod:`rag.generation.generator`: the grounded generator (registered as ``grounded``).

Importing this package is cheap: torch, transformers and llama.cpp load when a model is first used.
"""
