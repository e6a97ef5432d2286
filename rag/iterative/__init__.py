"""Answering loops that retrieve more than once per question, for multi-hop questions.

- ``ralm`` (:class:`~rag.iterative.ralm.IterativeRaLM`): retrieve again every few answer tokens with the
  question plus the answer so far; speculative retrieval (RaLMSpec) keeps the answers identical and cuts the
  waiting for the index.
- ``ircot`` (:class:`~rag.iterative.ircot.IRCoT`): write one reasoning sentence, retrieve with it, repeat,
  then answer from everything retrieved.

A pipeline runs one when its ``loop`` is set (``Pipeline(loop="ircot")``, or ``loop:`` in a config file).
"""
