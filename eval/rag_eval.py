"""End-to-end RAG evaluation on a QA set, scored per stage, from Python or ``specrag eval rag``.

    specrag eval rag --data ../shared/data/squad-v1.1-dev --pipeline my.yaml --limit 50 --out runs/squad

The pipeline (a YAML/JSON config, or the default :class:`rag.pipeline.Pipeline`) ingests the QA corpus and
answers every question. Per question the harness records, for each stage that ran:

- ``recall``: 1 when some chunk that stage passed on is *useful* (its text contains a gold answer, by
  :func:`eval.qa.contains_answer`, or its document is relevant by the qrels), else 0; after compression the
  kept passage text is what must contain the answer. Stages: ``retrieve``, ``rerank``, ``filter`` (the
  output of each filter in turn: ``filter``, ``filter.2``, ...), ``compress``, and ``loop`` (every chunk an
  iterative loop showed the model); ``recall_all``: 1 when *every* relevant document of the question (by
  the qrels of ``--split``; multi-hop: both gold passages, ``--split test_gold_complete`` on the HotpotQA
  sample) is among the stage's output, for questions with qrels;
- seconds, items in and out and tokens in and out (from the answer's trace);
- for the generator: exact match, token F1 and containment of the answer (citation markers stripped first),
  citation precision (the share of cited chunks that are useful, as above), tokens/s, and every other
  key the generate stage puts in its trace (draft acceptance when speculative decoding runs);
- citations by who wrote them: when the model cites no passage, the grounded generator appends one itself
  and its trace says ``citation_completed``. ``citation_precision`` counts both kinds;
  ``citation_precision_model`` only answers whose citations the model wrote, ``citation_precision_completed``
  only answers whose citation the system completed, and ``citation_completed`` (in the summary: the share
  of answers) says which one a record is. See :func:`citation_split`.

A run directory holds ``config.yaml`` (the resolved pipeline), ``run.json`` (data set card and options),
``records.jsonl`` (one line per question, appended and flushed as it goes), ``summary.json`` and PNG plots.
Re-running on the same directory skips the questions already recorded, so an interrupted run (Ctrl-C)
resumes; the index is saved under ``pipeline/`` in the run directory and reloaded, never cached elsewhere.
A long run splits over cores by question range (``--skip``/``--limit``, one run directory per process);
``specrag eval merge`` (:func:`merge_runs`) joins finished ranges into one run for ``eval compare``.

    >>> from eval.rag_eval import run_rag_eval
    >>> summary = run_rag_eval("../shared/data/squad-v1.1-dev", None, "runs/squad", limit=20)  # doctest: +SKIP
    >>> summary["metrics"]["f1"], summary["metrics"]["recall.retrieve"]                      # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from eval.qa import QADataset, QAQuestion, contains_answer, exact_match, load_qa, token_f1
from rag.cli.args import non_negative_int, positive_int
from rag.errors import InputError, SpecragError
from rag.types import Answer, Context

RECORDS = "records.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
RUN = "run.json"
SAVED_PIPELINE = "pipeline"
DEFAULT_RUNS = Path(".specrag") / "runs"
# Citation markers like [2] or [1, 3]: stripped before EM/F1 so that "Denver Broncos [1]" scores as the span.
_MARKERS = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")


# -- scoring one question ----------------------------------------------------------------------------


def is_useful(text: str, doc_id: str, question: QAQuestion) -> bool:
    """A chunk is useful for a question when it contains a gold answer or its document is relevant."""
    return doc_id in question.relevant or contains_answer(text, question.answers)


def strip_citations(text: str) -> str:
    """The answer without its ``[n]`` citation markers."""
    return _MARKERS.sub("", text).strip()


def score_answer(question: QAQuestion, answer: Answer, stage_outputs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """One question's record: answer metrics, citation precision, per-stage recall and the trace."""
    prediction = strip_citations(answer.text)
    texts: dict[str, tuple[str, str]] = {}  # chunk id -> (text, doc id), for citations
    recall: dict[str, float] = {}
    recall_all: dict[str, float] = {}  # every relevant document among a stage's output (multi-hop: both gold)
    for stage, output in stage_outputs:
        items = _items(output)
        recall[stage] = float(any(is_useful(text, doc_id, question) for _, text, doc_id in items))
        if question.relevant:
            recall_all[stage] = float(question.relevant <= {doc_id for _, _, doc_id in items})
        if not isinstance(output, Context):  # citations name chunks; score the chunk's full text
            texts.update({chunk_id: (text, doc_id) for chunk_id, text, doc_id in items})
    for hit in answer.hits:
        texts.setdefault(hit.chunk.id, (hit.chunk.text, hit.chunk.doc_id))
    cited = [c.chunk_id for c in answer.citations]
    useful_cited = sum(1 for cid in cited if cid in texts and is_useful(*texts[cid], question))
    stages = answer.trace.to_dicts()
    generate = next((s for s in stages if s["stage"] == "generate"), None)
    record: dict[str, Any] = {
        "id": question.id,
        "question": question.text,
        "answers": list(question.answers),
        "prediction": answer.text,
        "em": exact_match(prediction, question.answers) if generate else None,
        "f1": token_f1(prediction, question.answers) if generate else None,
        "contains": float(contains_answer(prediction, question.answers)) if generate else None,
        "citations": cited,
        "citation_precision": useful_cited / len(cited) if cited else None,
        "recall": recall,
        "recall_all": recall_all,
        "context_tokens": generate["tokens_in"] if generate else None,
        "answer_tokens": generate["tokens_out"] if generate else None,
        "stages": stages,
    }
    record.update(citation_split(record))
    return record


def citation_split(record: Mapping[str, Any]) -> dict[str, Any]:
    """Who wrote a record's citations: ``citation_completed`` and the precision of each kind.

    Read from the generate stage's trace (``extra["citation_completed"]``) and the record's
    ``citation_precision``, so records written before these fields existed split the same way. The grounded
    generator completes a citation only when the model's answer named no passage, and then adds exactly
    one, so a record's citations are all the model's or all completed: the precision of the other kind is
    ``None``. ``citation_completed`` is ``None`` when there is no generate stage or its trace does not say
    (another generator), and both precisions are ``None`` then.
    """
    generate = next((s for s in record.get("stages", []) if s.get("stage") == "generate"), None)
    flag = (generate or {}).get("extra", {}).get("citation_completed")
    completed = None if flag is None else bool(flag)
    precision = record.get("citation_precision")
    return {
        "citation_completed": completed,
        "citation_precision_model": precision if completed is False else None,
        "citation_precision_completed": precision if completed else None,
    }


def _items(output: Any) -> list[tuple[str, str, str]]:
    """(chunk id, text, doc id) for a hit list or a compressed context."""
    if isinstance(output, Context):
        return [(p.chunk.id, p.text, p.chunk.doc_id) for p in output.passages]
    return [(h.chunk.id, h.chunk.text, h.chunk.doc_id) for h in output]


# -- summaries ---------------------------------------------------------------------------------------


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


def _numbers(extra: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a trace extra, one level of mappings flattened (``accepted.sam``)."""
    flat: dict[str, float] = {}
    for key, value in extra.items():
        if isinstance(value, (bool, int, float)):
            flat[key] = float(value)
        elif isinstance(value, Mapping):
            flat.update({f"{key}.{k}": float(v) for k, v in value.items() if isinstance(v, (bool, int, float))})
    return flat


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Means over questions, in four parts: ``metrics`` (answer quality, recall per stage, tokens: the same
    for a deterministic pipeline however the run was split), ``extras`` (every numeric key a stage puts in
    its trace's ``extra``, such as the generator's tokens/s and draft acceptance; these may depend on what
    the components saw before, e.g. an adaptive drafter's history), ``timing`` (seconds per stage) and
    ``stages`` (a table per stage). A question without a value for a metric (no citation, say) is left
    out of that metric's mean.

    Citations: ``citation_precision`` over every cited answer, ``citation_precision_model`` over answers
    whose citations the model wrote, ``citation_precision_completed`` over answers whose citation the
    generator completed; ``cited`` is the share of answers citing a passage, ``cited_by_model`` the share
    citing one the model wrote, and ``citation_completed`` the share whose citation was completed (over
    answers whose trace says; ``None`` when none does)."""
    metrics: dict[str, Any] = {"questions": len(records)}
    for key in ("em", "f1", "contains", "citation_precision", "context_tokens", "answer_tokens"):
        metrics[key] = _mean([r.get(key) for r in records])
    answered = [r for r in records if r.get("em") is not None]
    split = [citation_split(r) for r in answered]  # from the trace: old run directories split too
    metrics["citation_precision_model"] = _mean([c["citation_precision_model"] for c in split])
    metrics["citation_precision_completed"] = _mean([c["citation_precision_completed"] for c in split])
    metrics["cited"] = _mean([float(bool(r.get("citations"))) for r in answered])
    metrics["cited_by_model"] = _mean([float(bool(r.get("citations")) and c["citation_completed"] is False)
                                       for r, c in zip(answered, split) if c["citation_completed"] is not None])
    metrics["citation_completed"] = _mean([float(c["citation_completed"]) for c in split
                                           if c["citation_completed"] is not None])
    stage_names: list[str] = []
    for r in records:
        for name in list(r.get("recall", {})) + [s["stage"] for s in r.get("stages", [])]:
            if name not in stage_names:
                stage_names.append(name)
    for name in stage_names:
        values = [r["recall"][name] for r in records if name in r.get("recall", {})]
        if values:
            metrics[f"recall.{name}"] = _mean(values)
        values = [r["recall_all"][name] for r in records if name in r.get("recall_all", {})]
        if values:
            metrics[f"recall_all.{name}"] = _mean(values)
    timing: dict[str, Any] = {}
    extras_mean: dict[str, Any] = {}
    stages: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(s["stage"] for r in records for s in r.get("stages", [])):
        rows = [[s for s in r["stages"] if s["stage"] == name] for r in records]
        rows = [row for row in rows if row]
        table = {
            "questions": len(rows),
            "seconds": _mean([sum(s["seconds"] for s in row) for row in rows]),
            "n_in": _mean([row[0]["n_in"] for row in rows]),
            "n_out": _mean([row[-1]["n_out"] for row in rows]),
            "tokens_in": _mean([row[0]["tokens_in"] for row in rows]),
            "tokens_out": _mean([row[-1]["tokens_out"] for row in rows]),
        }
        if f"recall.{name}" in metrics:
            table["recall"] = metrics[f"recall.{name}"]
        stages[name] = table
        timing[f"seconds.{name}"] = table["seconds"]
        extras = [_numbers(row[0].get("extra", {})) for row in rows]
        for key in dict.fromkeys(k for e in extras for k in e):
            extras_mean[f"{name}.{key}"] = table[key] = _mean([e[key] for e in extras if key in e])
        # Speculative decoding reports drafted and accepted tokens per drafter: the run's acceptance rate is
        # the ratio of the totals (a mean of per-question ratios would over-weight short answers).
        drafted = sum(v for e in extras for k, v in e.items() if k == "drafted" or k.startswith("drafted."))
        accepted = sum(v for e in extras for k, v in e.items() if k == "accepted" or k.startswith("accepted."))
        if drafted:
            extras_mean[f"{name}.acceptance"] = table["acceptance"] = accepted / drafted
    timing["seconds.total"] = _mean([sum(s["seconds"] for s in r.get("stages", [])) for r in records])
    return {"metrics": metrics, "extras": extras_mean, "timing": timing, "stages": stages, "lost": where_lost(records)}


def where_lost(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The share of questions whose answer is lost at each stage, in pipeline order, plus those that kept it.

    A question is lost where its useful passages first disappear (``not retrieved``, then ``dropped by``
    each later stage: rerank, filter, compress), else ``in context, not in answer`` when the answer does not
    contain a gold answer, else ``in the answer``. Without generation the last share is ``in the context``.
    The shares add up to 1; they tell which stage to fix first.
    """
    counts: dict[str, int] = {}
    for record in records:
        recall = record.get("recall", {})
        lost = None
        for number, (stage, value) in enumerate(recall.items()):
            if not value:
                lost = "not retrieved" if number == 0 else f"dropped by {stage}"
                break
        if lost is None:
            contains = record.get("contains")
            lost = "in the context" if contains is None else (
                "in the answer" if contains else "in context, not in answer")
        counts[lost] = counts.get(lost, 0) + 1
    total = max(len(records), 1)
    order = ["not retrieved"] + [k for k in counts if k.startswith("dropped by")] + [
        "in context, not in answer", "in the answer", "in the context"]
    return {key: counts[key] / total for key in order if key in counts}


# -- the run -----------------------------------------------------------------------------------------


def resolve_pipeline(config: "str | Path | Mapping[str, Any] | None") -> Any:
    """A pipeline from a YAML/JSON path, plain config data, a built Pipeline, or ``None`` (the default)."""
    from rag.pipeline import Pipeline

    if config is None:
        return Pipeline()
    if isinstance(config, Pipeline):
        return config
    if isinstance(config, Mapping):
        return Pipeline.from_config(dict(config))
    return Pipeline.from_config(config)


def with_settings(pipeline: Any, settings: Mapping[str, Mapping[str, Any]]) -> Any:
    """The pipeline rebuilt with ``settings`` (``{role: {parameter: value}}``) over its components' parameters."""
    from rag.pipeline import Pipeline

    config = pipeline.to_config()
    for role, values in settings.items():
        component = config.get(role)
        if not isinstance(component, dict) or "params" not in component:
            present = [r for r, c in config.items() if isinstance(c, dict) and "params" in c]
            raise InputError(f"--set {role}.*: the pipeline has no {role}; its components: {', '.join(present)}")
        component["params"].update(values)
    return Pipeline.from_config(config)


def set_answer_style(pipeline: Any, style: str) -> None:
    """Give the pipeline's generator the answer style ``style``, with the style's system prompt and stop strings
    (a config that spelled out the cited prompt would otherwise keep it); refused for a generator without styles."""
    from rag.generation.generator import ANSWER_STYLES

    if style not in ANSWER_STYLES:
        raise InputError(f"answer style must be one of {sorted(ANSWER_STYLES)}, got {style!r}")
    if pipeline.generator is None or not hasattr(pipeline.generator, "answer_style"):
        raise InputError(f"the pipeline's generator ({type(pipeline.generator).__name__}) has no answer styles")
    pipeline.generator.answer_style = style
    pipeline.generator.system_prompt = None
    pipeline.generator.stop = None


def default_run_dir(data_dir: str | Path, config: Mapping[str, Any]) -> Path:
    """``.specrag/runs/<data set>-<config hash>``: the same command resumes the same run."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    return DEFAULT_RUNS / f"{Path(data_dir).name}-{digest}"


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a ``records.jsonl``; a last line cut short by an interruption is dropped (and removed)."""
    if not path.is_file():
        return []
    records: list[dict[str, Any]] = []
    good_bytes = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                records.append(json.loads(raw))
            except json.JSONDecodeError:
                if handle.read(1):  # not the last line: the file is damaged, not merely interrupted
                    raise InputError(f"{path}, line {number}: not a JSON record") from None
                break
            good_bytes += len(raw)
    if good_bytes != path.stat().st_size:
        with path.open("r+b") as handle:
            handle.truncate(good_bytes)
    return records


def _differing_roles(config: Mapping[str, Any], other: Mapping[str, Any]) -> str:
    """The top-level keys (roles) of pipeline config ``config`` whose value ``other`` does not share, for errors."""
    return ", ".join(k for k in config if config.get(k) != other.get(k))


def _prepare(run_dir: Path, pipeline: Any, dataset: QADataset, data_dir: str | Path, log: Callable[[str], None]) -> Any:
    """Write or check the run's config, and ingest the corpus (or reload the index saved in the run)."""
    from rag.config import dump_config, load_config_file
    from rag.pipeline import Pipeline

    config = pipeline.to_config()
    config_path = run_dir / CONFIG
    if config_path.is_file():
        previous = load_config_file(config_path)
        if previous != config:
            raise InputError(
                f"{config_path}: this run directory holds another pipeline; use a new --out, or the same config "
                f"to resume (differs in: {_differing_roles(config, previous)})"
            )
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(config, config_path)
    saved = run_dir / SAVED_PIPELINE
    if (saved / "pipeline.yaml").is_file():
        log(f"reloading the index saved in {saved}")
        loaded = Pipeline.load(saved)
        pipeline.index = loaded.index
        return None
    log(f"ingesting {len(dataset.corpus)} passages of {dataset.name} ...")
    trace = pipeline.ingest(dataset.corpus)
    pipeline.save(saved)
    return trace


def run_rag_eval(
    data_dir: str | Path,
    pipeline: "str | Path | Mapping[str, Any] | Any | None",
    run_dir: str | Path | None = None,
    *,
    limit: int | None = None,
    skip: int = 0,
    split: str = "test",
    on_record: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
    plots: bool = True,
    answer_style: str | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Evaluate ``pipeline`` on the QA folder ``data_dir``, writing (or resuming) ``run_dir``; returns the summary.

    ``limit`` questions after the first ``skip`` (all when ``limit`` is None): one range per process splits a long
    run over cores, and :func:`merge_runs` joins the ranges into one run.

    ``answer_style`` (``"short"`` or ``"cited"``) overrides the generator's, and ``settings`` (``{role:
    {parameter: value}}``, e.g. ``{"generator": {"context_aware": 0.5}}``) the parameters of the pipeline's
    components, both as part of the run's config.
    ``on_record`` is called with each new record after it is written (a test interrupts a run from it).
    """
    dataset = load_qa(data_dir, split=split, limit=limit, skip=skip)
    pipe = resolve_pipeline(pipeline)
    if settings:
        pipe = with_settings(pipe, settings)
    if answer_style is not None:
        set_answer_style(pipe, answer_style)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(data_dir, pipe.to_config())
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    ingest_trace = _prepare(run_dir, pipe, dataset, data_dir, log)
    run_info_path = run_dir / RUN
    run_info = json.loads(run_info_path.read_text()) if run_info_path.is_file() else {}
    if ingest_trace is not None:
        run_info["ingest"] = ingest_trace.to_dicts()
    records_path = run_dir / RECORDS
    done = {r["id"]: r for r in read_records(records_path)}
    if run_info.get("skip", 0) != skip and done:
        raise InputError(f"{run_info_path}: this run holds questions after the first {run_info.get('skip', 0)}, "
                         f"not after the first {skip}; use a new --out for another range")
    run_info.update(data=str(data_dir), split=split, limit=limit, skip=skip, dataset=dataset.card())
    _write_json(run_info_path, run_info)

    todo = [q for q in dataset.questions if q.id not in done]
    if done:
        log(f"resuming: {len(dataset.questions) - len(todo)} of {len(dataset.questions)} questions already in {records_path}")
    from tqdm import tqdm

    bar = tqdm(total=len(dataset.questions), initial=len(dataset.questions) - len(todo), unit="q",
               disable=not progress, file=sys.stderr, desc=dataset.name)
    with records_path.open("a", encoding="utf-8") as handle:
        for question in todo:
            outputs: list[tuple[str, Any]] = []  # each stage's output, as the pipeline reports it
            answer = pipe.ask(question.text, on_stage=lambda _, stage, output: outputs.append((stage, output)))
            record = score_answer(question, answer, outputs)
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            done[question.id] = record
            bar.update(1)
            if on_record is not None:
                on_record(record)
    bar.close()
    records = [done[q.id] for q in dataset.questions]  # data set order, whatever order they were run in
    summary = {"dataset": dataset.card(), "data": str(data_dir), "limit": limit, "skip": skip, **summarize(records)}
    _write_json(run_dir / SUMMARY, summary)
    if plots:
        from eval.plots import plot_run

        summary["plots"] = [str(p) for p in plot_run(records, summary, run_dir)]
    return summary


def merge_runs(run_dirs: Sequence[str | Path], out: str | Path, *, plots: bool = True) -> dict[str, Any]:
    """Join finished runs of one pipeline over consecutive question ranges (``--skip``/``--limit``, one per core)
    into the run directory ``out``, as if one process had answered them all; returns its summary.

    Refused, naming the run: a run that is not finished (no summary yet), another pipeline, data set or split,
    and ranges that overlap or leave a gap. ``out`` gets the first run's config and saved index; nothing is
    asked again (the summary is :func:`run_rag_eval` resuming with every question recorded).
    """
    import shutil

    from rag.config import load_config_file

    if len(run_dirs) < 2:
        raise InputError("merge needs at least two run directories")
    runs = []
    for run_dir in map(Path, run_dirs):
        if not (run_dir / SUMMARY).is_file():
            raise InputError(f"{run_dir}: not a finished run (no {SUMMARY}); resume it with the same command first")
        info = json.loads((run_dir / RUN).read_text())
        runs.append((info.get("skip", 0), run_dir, info, load_config_file(run_dir / CONFIG),
                     read_records(run_dir / RECORDS)))
    runs.sort(key=lambda run: run[0])
    first_skip, first_dir, first_info, config, _ = runs[0]
    expected_skip = first_skip
    for skip, run_dir, info, run_config, records in runs:
        for key in ("data", "split"):
            if info.get(key) != first_info.get(key):
                raise InputError(f"{run_dir}: {key} {info.get(key)!r}, but {first_dir} has {first_info.get(key)!r}")
        if run_config != config:
            raise InputError(f"{run_dir}: another pipeline than {first_dir} (differs in: "
                             f"{_differing_roles(config, run_config)})")
        if skip != expected_skip:
            where = "overlaps" if skip < expected_skip else "leaves a gap after"
            raise InputError(f"{run_dir}: starts after question {skip}, which {where} the runs before it "
                             f"(they end at question {expected_skip})")
        expected_skip = skip + len(records)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: exists and is not empty; merge into a new directory")
    # Built beside ``out`` and renamed into place: a merge that fails leaves no half-merged run behind.
    building = out.with_name(f".{out.name}.merging")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    try:
        shutil.copy2(first_dir / CONFIG, building / CONFIG)
        shutil.copy2(first_dir / RUN, building / RUN)
        shutil.copytree(first_dir / SAVED_PIPELINE, building / SAVED_PIPELINE)
        with (building / RECORDS).open("wb") as handle:
            for run in runs:
                handle.write((run[1] / RECORDS).read_bytes())
        summary = run_rag_eval(first_info["data"], building / CONFIG, building, limit=expected_skip - first_skip,
                               skip=first_skip, split=first_info.get("split", "test"), progress=False, plots=plots,
                               on_record=_nothing_left_to_ask)
        summary["merged"] = [str(run[1]) for run in runs]
        plot_files = summary.pop("plots", [])
        _write_json(building / SUMMARY, summary)
        building.replace(out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    if plot_files:
        summary["plots"] = [str(out / Path(p).name) for p in plot_files]
    return summary


def _nothing_left_to_ask(record: Mapping[str, Any]) -> None:
    raise AssertionError(f"merge_runs asked question {record['id']} again: the merged records missed it")


def _write_json(path: Path, data: Any) -> None:
    from rag.io import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def format_summary(summary: Mapping[str, Any]) -> str:
    """The per-stage table and the answer metrics, for a terminal."""
    m, t = summary["metrics"], summary["timing"]
    card = summary["dataset"]
    lines = [f"{card['name']} ({card['split']}): {m['questions']} questions, {card['passages']} passages"]
    lines.append(f"{'stage':<12} {'recall':>7} {'in':>6} {'out':>6} {'tok in':>8} {'tok out':>8} {'seconds':>8}")
    for name, row in summary["stages"].items():
        recall = f"{row['recall']:.3f}" if row.get("recall") is not None else "-"
        lines.append(
            f"{name:<12} {recall:>7} {row['n_in']:>6.1f} {row['n_out']:>6.1f} {row['tokens_in']:>8.1f} "
            f"{row['tokens_out']:>8.1f} {row['seconds']:>8.3f}"
        )
    lines.append(f"{'total':<12} {'':>7} {'':>6} {'':>6} {'':>8} {'':>8} {t['seconds.total'] or 0:>8.3f}")
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    lines.append(f"EM {fmt(m.get('em'))}  F1 {fmt(m.get('f1'))}  contains {fmt(m.get('contains'))}")
    lines.append(
        f"citation precision: all {fmt(m.get('citation_precision'))} (answers citing {fmt(m.get('cited'))}); "
        f"written by the model {fmt(m.get('citation_precision_model'))} (answers {fmt(m.get('cited_by_model'))}); "
        f"completed by the generator {fmt(m.get('citation_precision_completed'))} "
        f"(answers {fmt(m.get('citation_completed'))})"
    )
    lost = summary.get("lost")
    if lost:
        lines.append("where answers are lost: " + ", ".join(f"{k} {v:.1%}" for k, v in lost.items()))
    extra = {k: v for k, v in summary.get("extras", {}).items() if k.startswith("generate.") and v is not None}
    if extra:
        lines.append("generate: " + ", ".join(f"{k.split('.', 1)[1]} {v:.3g}" for k, v in extra.items()))
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------------


def add_rag_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "rag",
        help="run a pipeline on a QA set: per-stage recall, tokens, seconds; EM, F1, citation precision",
        description=(
            "Ingest a QA folder's corpus with a pipeline, answer its questions and score every stage.\n"
            "Writes a run directory (config.yaml, run.json, records.jsonl, summary.json, PNG plots); re-running\n"
            "the same command on the same directory resumes after an interruption. The summary JSON is the\n"
            "last line of stdout."
        ),
        epilog="example:\n  specrag eval rag --data ../shared/data/squad-v1.1-dev --limit 50 --out runs/squad-default",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, metavar="DIR", help="QA folder: corpus.jsonl, queries.jsonl with answers, qrels/")
    parser.add_argument("--pipeline", metavar="CONFIG", type=Path,
                        help="pipeline YAML/JSON (default: the default Pipeline(), the fast recipe: recursive, dense, top-5, extractive 3x, qwen2.5-0.5b)")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="the first N questions (the whole corpus is indexed)")
    parser.add_argument("--skip", type=non_negative_int, default=0, metavar="N",
                        help="start after the first N questions (split a run over cores; join with `eval merge`)")
    parser.add_argument("--split", default="test", help="qrels split naming relevant passages (default: test)")
    parser.add_argument("--out", type=Path, metavar="RUNDIR", help=f"run directory (default: {DEFAULT_RUNS}/<data>-<config hash>)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--answer-style", choices=["short", "cited"],
                        help="the generator's answer style: short (a phrase, no citations, what QA benchmarks score) "
                             "or cited (a sentence or two citing passages), with the style's prompt and stop strings; "
                             "default: the pipeline's (cited)")
    parser.add_argument("--set", action="append", default=[], metavar="ROLE.KEY=VALUE", dest="settings",
                        help="a parameter of one of the pipeline's components (chunker, index, compressor, "
                             "generator, ...), e.g. generator.context_aware=0.5; repeatable")
    parser.set_defaults(func=rag_command)
    return parser


def add_merge_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "merge",
        help="join eval-rag runs of one pipeline over consecutive question ranges into one run",
        description=(
            "Join finished `eval rag` runs of the same pipeline, data set and split over consecutive question\n"
            "ranges (--skip/--limit, e.g. one process per core) into one run directory with one summary, which\n"
            "`eval compare` reads like any other run. The summary JSON is the last line of stdout."
        ),
        epilog=("example (two cores, 300 questions):\n"
                "  specrag --threads 1 eval rag --data D --limit 150 --out runs/a &\n"
                "  specrag --threads 1 eval rag --data D --skip 150 --limit 150 --out runs/b\n"
                "  specrag eval merge runs/a runs/b --out runs/all"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUNDIR", help="finished run directories")
    parser.add_argument("--out", required=True, type=Path, metavar="RUNDIR", help="the new, merged run directory")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.set_defaults(func=merge_command)
    return parser


def merge_command(args: argparse.Namespace) -> int:
    try:
        summary = merge_runs(args.runs, args.out, plots=not args.no_plots)
    except SpecragError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    print(json.dumps(summary), flush=True)
    return 0


def rag_command(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        from rag.cli.args import parse_settings

        summary = run_rag_eval(args.data, args.pipeline, args.out, limit=args.limit, skip=args.skip, split=args.split,
                               plots=not args.no_plots, answer_style=args.answer_style,
                               settings=parse_settings(args.settings))
    except KeyboardInterrupt:
        print("\ninterrupted: the finished questions are saved; run the same command again to resume",
              file=sys.stderr)
        return 130
    except SpecragError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    print(json.dumps(summary), flush=True)
    return 0
