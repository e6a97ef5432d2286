"""specrag: retrieval-augmented generation, every stage real, measured and fast on a CPU.

    >>> from rag import Document, Pipeline
    >>> pipe = Pipeline()  # the `fast` recipe: recursive chunks, dense MiniLM, best 5, extractive 3x, Qwen2.5-0.5B
    >>> pipe.ingest([Document(text="functools.cache memoizes a function.", id="d1")])  # doctest: +SKIP
    >>> print(pipe.ask("How do I memoize?").text)  # doctest: +SKIP
"""

from rag.types import Answer, Chunk, Citation, Context, Document, Hit, Passage, StageRecord, Trace

__all__ = [
    "Answer", "Chunk", "Citation", "Context", "Document", "Hit", "Passage", "Pipeline", "StageRecord", "Trace",
]
__version__ = "0.1.0"


def __getattr__(name: str):  # Pipeline lazily, so `import rag` stays cheap
    if name == "Pipeline":
        from rag.pipeline import Pipeline

        return Pipeline
    raise AttributeError(name)
