"""The pipeline: documents -> chunker -> index -> reranker -> filters -> compressor -> generator -> answer.

    >>> from rag import Document, Pipeline
    >>> pipe = Pipeline()                                     # doctest: +SKIP
    >>> pipe.ingest([Document(text="...", title="functools.cache")])  # doctest: +SKIP
    >>> answer = pipe.ask("How do I cache results?")          # doctest: +SKIP
    >>> answer.text, answer.citations, answer.trace.format()  # doctest: +SKIP
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from rag.config import ComponentSpec, PipelineConfig, dump_config, load_config_file, parse_pipeline_config
from rag.errors import InputError
from rag.protocols import text_batch
from rag.registry import build
from rag.types import Answer, Context, Document, Hit, StageRecord, Trace

Spec = Any  # a registered name, a {"type", "params"} mapping, or a built component
# Told each stage's output as the pipeline runs: (question, stage, output). Stages are ``retrieve``,
# ``rerank``, ``filter`` (``filter.2``, ... for later filters) with their hit lists and ``compress`` with its
# Context, in the order they run; ``specrag eval rag`` scores recall after each stage from these.
StageObserver = Callable[[str, str, Any], None]

CONFIG_FILE = "pipeline.yaml"
INDEX_DIR = "index"
# Named pipelines shipped with the package: plain YAML files a user can copy (``fast``, ``balanced``, ...).
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
# The default Pipeline() is the `fast` recipe: the best mean F1 on SQuAD and HotpotQA (short answers) among the
# recipes that answer within 3 s on this project's CPU (eval/results/recipes.md states the rule and the front).
DEFAULT_COMPRESSOR: dict[str, Any] = {"type": "extractive", "params": {"rate": 1 / 3}}


def recipe_names() -> list[str]:
    """The names :meth:`Pipeline.recipe` accepts, sorted."""
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    """The YAML file of recipe ``name``; an unknown name is an InputError listing the recipes."""
    path = RECIPES_DIR / f"{name}.yaml"
    if not name or "/" in name or "\\" in name or not path.is_file():
        import difflib

        close = difflib.get_close_matches(name, recipe_names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(f"no recipe named {name!r}{hint} (recipes: {', '.join(recipe_names())})")
    return path


class Pipeline:
    """Components for each stage, built from names or specs; ``None`` leaves a stage out.

    ``retrieve_k`` hits come from the index; the filters (by default the best 5) cut them before the
    compressor (by default extractive, keeping a third of the tokens; ``None`` leaves it out) and the
    generator. ``budget_tokens`` is handed to the compressor. A ``loop`` (``"ralm"``, ``"ircot"``:
    :mod:`rag.iterative`) answers instead of the later stages, retrieving again as the answer grows. The defaults are the ``fast`` recipe
    (``Pipeline() == Pipeline.recipe("fast")``), chosen on its quality-latency front (eval/results/recipes.md).
    """

    def __init__(
        self,
        chunker: Spec = "recursive",
        index: Spec = "dense",
        reranker: Spec | None = None,
        filters: Sequence[Spec] = ({"type": "top-k", "params": {"k": 5}},),
        compressor: Spec | None = DEFAULT_COMPRESSOR,
        generator: Spec | None = "grounded",
        retrieve_k: int = 20,
        budget_tokens: int | None = None,
        loop: Spec | None = None,
    ) -> None:
        self.chunker = build("chunker", chunker)
        self.index = build("index", index)
        self.reranker = build("reranker", reranker) if reranker is not None else None
        self.filters = [build("filter", f) for f in filters]
        self.compressor = build("compressor", compressor) if compressor is not None else None
        self.generator = build("generator", generator) if generator is not None else None
        if retrieve_k < 1:
            raise InputError(f"pipeline: retrieve_k must be at least 1, got {retrieve_k}")
        self.retrieve_k = retrieve_k
        self.budget_tokens = budget_tokens
        self.loop = build("loop", loop) if loop is not None else None

    # -- configuration ---------------------------------------------------------------------------

    def to_config(self) -> dict[str, Any]:
        """Plain data that :meth:`from_config` turns back into an equal pipeline."""
        config = PipelineConfig(
            chunker=ComponentSpec(**self.chunker.to_config()),
            index=ComponentSpec(**self.index.to_config()),
            reranker=ComponentSpec(**self.reranker.to_config()) if self.reranker else None,
            filters=[ComponentSpec(**f.to_config()) for f in self.filters],
            compressor=ComponentSpec(**self.compressor.to_config()) if self.compressor else None,
            generator=ComponentSpec(**self.generator.to_config()) if self.generator else None,
            retrieve_k=self.retrieve_k,
            budget_tokens=self.budget_tokens,
            loop=ComponentSpec(**self.loop.to_config()) if self.loop else None,
        )
        data = config.model_dump(mode="json")
        if data["loop"] is None:  # configs of single-shot pipelines stay as they were
            del data["loop"]
        return data

    @classmethod
    def from_config(cls, config: "str | Path | dict[str, Any]") -> "Pipeline":
        """Build from a YAML/JSON file path or from plain data (as :meth:`to_config` returns)."""
        source = str(config) if not isinstance(config, dict) else "config"
        data = load_config_file(config) if not isinstance(config, dict) else config
        parsed = parse_pipeline_config(data, source)
        spec = lambda s: s.model_dump() if s is not None else None  # noqa: E731
        return cls(
            chunker=spec(parsed.chunker), index=spec(parsed.index), reranker=spec(parsed.reranker),
            filters=[spec(f) for f in parsed.filters], compressor=spec(parsed.compressor),
            generator=spec(parsed.generator), retrieve_k=parsed.retrieve_k, budget_tokens=parsed.budget_tokens,
            loop=spec(parsed.loop),
        )

    @classmethod
    def recipe(cls, name: str) -> "Pipeline":
        """The pipeline of a named recipe (:func:`recipe_names`), e.g. ``Pipeline.recipe("accurate")``.

        Each recipe is a YAML file in ``rag/recipes/`` with a comment saying what it chooses and why; copy
        one (``recipe_path(name)``) to start a config of your own.
        """
        return cls.from_config(recipe_path(name))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and self.to_config() == other.to_config()

    def __repr__(self) -> str:
        return f"Pipeline({self.to_config()!r})"

    # -- persistence -----------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write ``pipeline.yaml`` and the index under ``directory``, atomically."""
        from rag.io import atomic_directory

        with atomic_directory(directory) as staging:
            dump_config(self.to_config(), staging / CONFIG_FILE)
            self.index.save(staging / INDEX_DIR)

    @classmethod
    def load(cls, directory: str | Path) -> "Pipeline":
        """A pipeline saved by :meth:`save`, with its index loaded."""
        from rag.io import recover_directory

        directory = Path(directory)
        recover_directory(directory)  # a save killed mid-commit: put the old version back, clear its leftovers
        if not directory.is_dir():
            what = "not a directory" if directory.exists() else "no such directory"
            raise InputError(f"{directory}: {what}; expected a pipeline directory written by `specrag index`")
        if not (directory / CONFIG_FILE).is_file():
            raise InputError(f"{directory}: not a saved pipeline (no {CONFIG_FILE}); build one with `specrag index`")
        pipeline = cls.from_config(directory / CONFIG_FILE)
        pipeline.index.load(directory / INDEX_DIR)
        return pipeline

    # -- the flow --------------------------------------------------------------------------------

    def ingest(self, documents: Iterable[Document]) -> Trace:
        """Chunk and index ``documents``. An empty batch or a document without text is an error."""
        docs = list(documents)
        if not docs:
            raise InputError("pipeline.ingest: no documents given (the corpus is empty)")
        for doc in docs:
            if not isinstance(doc, Document):
                raise InputError(f"pipeline.ingest: expected Document objects, got {type(doc).__name__}")
            if not doc.text.strip():
                raise InputError(f"pipeline.ingest: document {doc.id!r} has no text")
        trace = Trace()
        with trace.timed("chunk", n_in=len(docs)) as record:
            chunks = self.chunker.chunk_many(docs)
            record["n_out"] = len(chunks)
        with trace.timed("index", n_in=len(chunks)) as record:
            self.index.add(chunks)
            record["n_out"] = len(self.index)
        return trace

    def retrieve(self, questions: str | Sequence[str]) -> tuple[list[list[Hit]], float]:
        """Index hits for a batch of questions (one str is a batch of one) and the seconds it took."""
        started = time.perf_counter()
        hits = self.index.search(questions, self.retrieve_k)
        return hits, time.perf_counter() - started

    def ask(self, question: str, on_text: Callable[[str], None] | None = None,
            on_stage: StageObserver | None = None) -> Answer:
        """Answer one question; ``on_text`` receives the answer's text as it is generated, ``on_stage`` each
        stage's output (:data:`StageObserver`)."""
        return self.ask_many([question], on_text=on_text, on_stage=on_stage)[0]

    def ask_many(self, questions: str | Sequence[str], on_text: Callable[[str], None] | None = None,
                 on_stage: StageObserver | None = None) -> list[Answer]:
        """Answer a batch: one batched search, then each question through the later stages.

        One str is one question (a batch of one), not one question per character. ``on_stage`` hears each
        question's stages before the next question's (its retrieval first, though the search was batched).
        """
        questions = text_batch(questions, "pipeline.ask", "question")
        for number, question in enumerate(questions):
            if not question.strip():
                raise InputError(f"pipeline.ask: question {number} is empty")
        all_hits, search_seconds = self.retrieve(questions)
        per_question = search_seconds / max(len(questions), 1)
        return [self._answer(q, hits, per_question, on_text, on_stage) for q, hits in zip(questions, all_hits)]

    def _answer(self, question: str, hits: list[Hit], search_seconds: float,
                on_text: Callable[[str], None] | None, on_stage: StageObserver | None) -> Answer:
        report: StageObserver = on_stage or (lambda question, stage, output: None)
        trace = Trace()
        trace.add(StageRecord(stage="retrieve", seconds=search_seconds, n_in=1, n_out=len(hits)))
        report(question, "retrieve", hits)
        if self.loop is not None:  # an iterative loop takes over from the first retrieval
            answer = self.loop.answer(self, question, hits, on_text=on_text, on_stage=on_stage)
            for record in answer.trace.stages:
                trace.add(record)
            return Answer(text=answer.text, citations=answer.citations, hits=answer.hits, trace=trace)
        if self.reranker is not None:
            with trace.timed("rerank", n_in=len(hits)) as record:
                hits = self.reranker.rerank(question, hits, len(hits))
                record["n_out"] = len(hits)
            report(question, "rerank", hits)
        for number, f in enumerate(self.filters, start=1):
            with trace.timed("filter", n_in=len(hits), extra={"filter": f.to_config()["type"]}) as record:
                hits = f.filter(question, hits)
                record["n_out"] = len(hits)
            report(question, "filter" if number == 1 else f"filter.{number}", hits)
        if self.compressor is not None:
            with trace.timed("compress", n_in=len(hits)) as record:
                context = self.compressor.compress(question, hits, self.budget_tokens)
                record.update(n_out=len(context.passages), tokens_in=context.original_tokens,
                              tokens_out=context.kept_tokens)
            report(question, "compress", context)
        else:
            context = Context.from_hits(hits)
        if self.generator is None:
            return Answer(text="", citations=[], hits=hits, trace=trace)
        answer = self.generator.generate(question, context, on_text=on_text)
        for record in answer.trace.stages:
            trace.add(record)
        return Answer(text=answer.text, citations=answer.citations, hits=hits, trace=trace)
