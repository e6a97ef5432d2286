"""The end-to-end RAG harness: per-question scoring, per-stage recall, run directories, resuming after Ctrl-C."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.qa import QAQuestion
from eval.rag_eval import RECORDS, SUMMARY, read_records, run_rag_eval, score_answer, strip_citations, summarize
from rag.types import Answer, Chunk, Citation, Context, Hit, Passage, StageRecord, Trace

SQUAD = "squad-v1.1-dev"


def _hit(chunk_id: str, doc_id: str, text: str, score: float = 1.0) -> Hit:
    return Hit(Chunk(id=chunk_id, doc_id=doc_id, text=text, start=0, end=len(text)), score, "test")


def test_score_answer_counts_useful_chunks_per_stage_and_cited_precision() -> None:
    question = QAQuestion("q1", "Who won Super Bowl 50?", ("Denver Broncos",), frozenset({"gold"}))
    gold = _hit("gold#0", "gold", "The game was played in California.")  # relevant by the qrels only
    bearing = _hit("other#0", "other", "The Denver Broncos won the game.")  # contains the answer only
    noise = _hit("noise#0", "noise", "Nothing of use here.")
    trace = Trace([StageRecord("retrieve", 0.01, 1, 3), StageRecord("filter", 0.0, 3, 1),
                   StageRecord("generate", 1.0, 1, 1, 300, 7, {"tokens_per_second": 7.0, "drafted": {"sam": 4}, "accepted": {"sam": 3}})])
    answer = Answer("the Denver Broncos [1] [2]", [Citation(1, "noise#0", "noise"), Citation(2, "other#0", "other")],
                    [noise], trace)
    context = Context((Passage(noise.chunk, "Nothing."),))
    stages = [("retrieve", [noise, gold, bearing]), ("filter", [noise]), ("compress", context)]
    record = score_answer(question, answer, stages)
    assert record["recall"] == {"retrieve": 1.0, "filter": 0.0, "compress": 0.0}
    assert (record["em"], record["f1"], record["contains"]) == (1.0, 1.0, 1.0)  # markers stripped first
    assert record["citation_precision"] == 0.5
    assert record["context_tokens"] == 300 and record["answer_tokens"] == 7

    summary = summarize([record, {**record, "id": "q2", "em": 0.0, "citation_precision": None}])
    assert summary["metrics"]["em"] == 0.5
    assert summary["metrics"]["citation_precision"] == 0.5  # a question without citations is left out
    assert summary["extras"]["generate.accepted.sam"] == 3  # generator extras are read generically
    assert summary["extras"]["generate.acceptance"] == 0.75
    assert summary["extras"]["generate.tokens_per_second"] == 7.0
    assert summary["stages"]["filter"]["recall"] == 0.0


def _cited_answer(cited: str, completed: bool) -> Answer:
    """An answer citing chunk ``cited`` as [1]; ``completed``: the generator appended it, the model cited nothing."""
    trace = Trace([StageRecord("retrieve", 0.01, 1, 2),
                   StageRecord("generate", 1.0, 2, 1, 300, 7, {"citation_completed": completed})])
    return Answer("the Denver Broncos [1]", [Citation(1, cited, cited.split("#")[0])], [], trace)


def test_citations_the_model_wrote_and_citations_the_generator_completed_are_scored_apart() -> None:
    question = QAQuestion("q1", "Who won Super Bowl 50?", ("Denver Broncos",), frozenset())
    bearing = _hit("other#0", "other", "The Denver Broncos won the game.")
    noise = _hit("noise#0", "noise", "Nothing of use here.")
    stages = [("retrieve", [bearing, noise])]
    # Two answers cite a useful chunk themselves; three got a completed citation, of which one is useful.
    records = [score_answer(question, _cited_answer("other#0", False), stages) for _ in range(2)]
    records += [score_answer(question, _cited_answer(c, True), stages) for c in ("other#0", "noise#0", "noise#0")]
    assert records[0]["citation_completed"] is False and records[0]["citation_precision_model"] == 1.0
    assert records[0]["citation_precision_completed"] is None
    assert records[3]["citation_completed"] is True and records[3]["citation_precision_model"] is None
    assert [r["citation_precision_completed"] for r in records[2:]] == [1.0, 0.0, 0.0]

    metrics = summarize(records)["metrics"]
    assert metrics["citation_precision"] == pytest.approx(3 / 5)  # both kinds, as before
    assert metrics["citation_precision_model"] == 1.0
    assert metrics["citation_precision_completed"] == pytest.approx(1 / 3)
    assert metrics["citation_completed"] == pytest.approx(3 / 5)
    assert metrics["cited"] == 1.0 and metrics["cited_by_model"] == pytest.approx(2 / 5)

    # Records written before the split existed carry the flag only in their trace: they split the same way.
    old = [{k: v for k, v in r.items() if k not in ("citation_completed", "citation_precision_model",
                                                     "citation_precision_completed")} for r in records]
    assert summarize(old)["metrics"] == metrics


def test_the_summary_line_shows_both_kinds_of_citation() -> None:
    from eval.rag_eval import format_summary

    question = QAQuestion("q1", "Who won Super Bowl 50?", ("Denver Broncos",), frozenset())
    bearing = _hit("other#0", "other", "The Denver Broncos won the game.")
    records = [score_answer(question, _cited_answer("other#0", completed), [("retrieve", [bearing])])
               for completed in (False, True, True, True)]
    summary = {"dataset": {"name": "tiny", "split": "test", "passages": 1}, **summarize(records)}
    text = format_summary(summary)
    assert "written by the model 1.0000 (answers 0.2500)" in text
    assert "completed by the generator 1.0000 (answers 0.7500)" in text


def test_each_question_is_lost_at_the_first_stage_that_drops_its_answer() -> None:
    from eval.rag_eval import where_lost

    def record(retrieve, filter_, compress, contains):
        return {"recall": {"retrieve": retrieve, "filter": filter_, "compress": compress}, "contains": contains}

    records = [record(0, 0, 0, 0), record(1, 0, 0, 0), record(1, 1, 0, 1), record(1, 1, 1, 0),
               record(1, 1, 1, 1), record(1, 1, 1, 1), record(1, 0, 1, 1), record(1, 1, 1, 1)]
    lost = where_lost(records)
    assert lost == {"not retrieved": 1 / 8, "dropped by filter": 2 / 8, "dropped by compress": 1 / 8,
                    "in context, not in answer": 1 / 8, "in the answer": 3 / 8}
    assert list(lost)[0] == "not retrieved" and sum(lost.values()) == pytest.approx(1)
    assert where_lost([{"recall": {"retrieve": 1.0}, "contains": None}]) == {"in the context": 1.0}


def test_strip_citations() -> None:
    assert strip_citations("Paris [1, 3]. [2]") == "Paris."


def test_a_cut_short_last_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / RECORDS
    path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "pre')
    assert [r["id"] for r in read_records(path)] == ["a", "b"]
    assert path.read_text() == '{"id": "a"}\n{"id": "b"}\n'


# -- a real pipeline on a small QA folder ------------------------------------------------------------


def make_tiny_qa(source: Path, out: Path, paragraphs: int = 12, questions: int = 5) -> Path:
    """The first ``paragraphs`` passages of a QA folder and the first ``questions`` asked about them."""
    (out / "qrels").mkdir(parents=True)
    corpus = source.joinpath("corpus.jsonl").read_text().splitlines()[:paragraphs]
    ids = {json.loads(line)["_id"] for line in corpus}
    (out / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    gold = {}
    for line in source.joinpath("qrels", "test.tsv").read_text().splitlines()[1:]:
        qid, doc, grade = line.split("\t")
        if doc in ids:
            gold[qid] = (doc, grade)
    kept_lines = []
    with source.joinpath("queries.jsonl").open() as handle:
        for line in handle:
            if json.loads(line)["_id"] in gold:
                kept_lines.append(line.rstrip("\n"))
            if len(kept_lines) == questions:
                break
    (out / "queries.jsonl").write_text("\n".join(kept_lines) + "\n")
    kept = [json.loads(q)["_id"] for q in kept_lines]
    (out / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{gold[q][0]}\t{gold[q][1]}\n" for q in kept)
    )
    return out


def make_tiny_lm(out: Path) -> Path:
    """A 2-layer, 32-wide random Llama with SmolLM2's tokenizer: a real generator that decodes in milliseconds."""
    import torch
    import transformers

    from rag.models import resolve_model

    tokenizer = transformers.AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_qa(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_qa(data_dir / SQUAD, tmp_path_factory.mktemp("tiny-qa") / "tiny-squad")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


def _config(model: Path) -> dict:
    return {
        "chunker": {"type": "recursive", "params": {"max_tokens": 128}},
        "index": {"type": "bm25s", "params": {}},
        "filters": [{"type": "top-k", "params": {"k": 2}}],
        "generator": {"type": "grounded", "params": {"model": str(model), "max_new_tokens": 6}},
    }


class Interrupt:
    """An ``on_record`` callback that presses Ctrl-C after ``after`` new records."""

    def __init__(self, after: int) -> None:
        self.after, self.seen = after, 0

    def __call__(self, record: dict) -> None:
        self.seen += 1
        if self.seen == self.after:
            raise KeyboardInterrupt


def test_an_interrupted_run_resumes_to_the_uninterrupted_summary(tiny_qa: Path, tiny_lm: Path, tmp_path: Path) -> None:
    config = _config(tiny_lm)
    whole = run_rag_eval(tiny_qa, config, tmp_path / "whole", progress=False)

    resumed_dir = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_rag_eval(tiny_qa, config, resumed_dir, on_record=Interrupt(2), progress=False)
    assert len(read_records(resumed_dir / RECORDS)) == 2
    assert not (resumed_dir / SUMMARY).exists()
    asked: list[str] = []
    resumed = run_rag_eval(tiny_qa, config, resumed_dir, on_record=lambda r: asked.append(r["id"]), progress=False)
    assert len(asked) == 3  # only the questions the interrupted run had not finished

    assert resumed["metrics"] == whole["metrics"]  # everything but timings
    assert resumed["metrics"]["questions"] == 5
    assert set(resumed["stages"]) == {"retrieve", "filter", "generate"}
    assert resumed["metrics"]["recall.retrieve"] >= resumed["metrics"]["recall.filter"] > 0
    for name in ("config.yaml", "run.json", RECORDS, SUMMARY, "quality_vs_context.png", "latency_by_stage.png",
                 "where_answers_are_lost.png"):
        assert (resumed_dir / name).is_file(), name
    assert (resumed_dir / "pipeline" / "pipeline.yaml").is_file()  # the index lives in the run, nowhere else
    records = read_records(resumed_dir / RECORDS)
    assert sorted(r["id"] for r in records) == sorted(json.loads(l)["_id"] for l in (tiny_qa / "queries.jsonl").open())
    assert all(r["context_tokens"] > 0 and r["answer_tokens"] <= 6 + 3 for r in records)


def test_runs_over_consecutive_ranges_merge_into_the_run_of_them_all(tiny_qa: Path, tiny_lm: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from eval.rag_eval import merge_runs
    from rag.cli import main
    from rag.errors import InputError

    config = _config(tiny_lm)
    quiet = {"progress": False, "plots": False}
    whole = run_rag_eval(tiny_qa, config, tmp_path / "whole", **quiet)
    run_rag_eval(tiny_qa, config, tmp_path / "rest", skip=2, **quiet)  # questions 3-5
    run_rag_eval(tiny_qa, config, tmp_path / "first", limit=2, **quiet)  # questions 1-2
    with pytest.raises(InputError, match="after the first 0, not after the first 1"):
        run_rag_eval(tiny_qa, config, tmp_path / "first", skip=1, limit=2, **quiet)  # a run keeps its range

    merged = merge_runs([tmp_path / "rest", tmp_path / "first"], tmp_path / "all", plots=False)  # any order
    assert merged["metrics"] == whole["metrics"]
    assert merged["metrics"]["questions"] == 5 and merged["skip"] == 0
    ids = lambda run: [r["id"] for r in read_records(tmp_path / run / RECORDS)]  # noqa: E731
    assert sorted(ids("all")) == sorted(ids("whole"))
    assert (tmp_path / "all" / "pipeline" / "pipeline.yaml").is_file()

    run_rag_eval(tiny_qa, config, tmp_path / "second-third", skip=1, limit=2, **quiet)
    with pytest.raises(InputError, match="second-third: starts after question 1, which overlaps"):
        merge_runs([tmp_path / "first", tmp_path / "second-third"], tmp_path / "x")
    run_rag_eval(tiny_qa, config, tmp_path / "fourth", skip=3, limit=1, **quiet)
    with pytest.raises(InputError, match="fourth: starts after question 3, which leaves a gap"):
        merge_runs([tmp_path / "first", tmp_path / "fourth"], tmp_path / "x")
    other = {**config, "filters": [{"type": "top-k", "params": {"k": 1}}]}
    run_rag_eval(tiny_qa, other, tmp_path / "other", skip=2, **quiet)
    with pytest.raises(InputError, match="other: another pipeline .*filters"):
        merge_runs([tmp_path / "first", tmp_path / "other"], tmp_path / "x")
    with pytest.raises(KeyboardInterrupt):
        run_rag_eval(tiny_qa, config, tmp_path / "unfinished", skip=2, on_record=Interrupt(1), **quiet)
    with pytest.raises(InputError, match="unfinished: not a finished run"):
        merge_runs([tmp_path / "first", tmp_path / "unfinished"], tmp_path / "x")
    with pytest.raises(InputError, match="exists and is not empty"):
        merge_runs([tmp_path / "first", tmp_path / "rest"], tmp_path / "all")
    assert not (tmp_path / "x").exists()  # a refused merge writes nothing

    capsys.readouterr()
    assert main(["eval", "merge", str(tmp_path / "first"), str(tmp_path / "rest"), "--out", str(tmp_path / "cli"),
                 "--no-plots"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["metrics"] == whole["metrics"]
    assert main(["eval", "merge", str(tmp_path / "first"), str(tmp_path / "fourth"), "--out", str(tmp_path / "y")]) == 2
    assert "leaves a gap" in capsys.readouterr().err


def test_a_run_directory_refuses_another_pipeline(tiny_qa: Path, tiny_lm: Path, tmp_path: Path) -> None:
    from rag.errors import InputError

    config = _config(tiny_lm)
    config["generator"] = None
    run_rag_eval(tiny_qa, config, tmp_path / "run", limit=1, progress=False, plots=False)
    other = {**config, "filters": [{"type": "top-k", "params": {"k": 1}}]}
    with pytest.raises(InputError, match="another pipeline"):
        run_rag_eval(tiny_qa, other, tmp_path / "run", limit=1, progress=False, plots=False)


def test_the_answer_style_is_part_of_the_run_config(tiny_qa: Path, tiny_lm: Path, tmp_path: Path) -> None:
    from rag.config import load_config_file
    from rag.errors import InputError

    config = _config(tiny_lm)
    config["generator"]["params"].update(system_prompt="Answer in a sentence.", stop=[])  # spelled out, as old configs do
    run_rag_eval(tiny_qa, config, tmp_path / "short", limit=1, progress=False, plots=False, answer_style="short")
    params = load_config_file(tmp_path / "short" / "config.yaml")["generator"]["params"]
    assert (params["answer_style"], params["system_prompt"], params["stop"]) == ("short", None, None)
    (record,) = read_records(tmp_path / "short" / RECORDS)
    generate = next(s for s in record["stages"] if s["stage"] == "generate")
    assert generate["extra"]["answer_style"] == "short" and record["citations"] == []
    with pytest.raises(InputError, match="another pipeline"):  # the same directory with cited answers
        run_rag_eval(tiny_qa, config, tmp_path / "short", limit=1, progress=False, plots=False, answer_style="cited")
    with pytest.raises(InputError, match="has no answer styles"):
        run_rag_eval(tiny_qa, {**config, "generator": None}, tmp_path / "none", limit=1, progress=False,
                     plots=False, answer_style="short")


def test_set_changes_a_components_parameter_in_the_run_config(tiny_qa: Path, tiny_lm: Path, tmp_path: Path) -> None:
    from rag.config import load_config_file
    from rag.errors import InputError
    from rag.cli import main

    config = _config(tiny_lm)
    run_rag_eval(tiny_qa, config, tmp_path / "cad", limit=1, progress=False, plots=False,
                 settings={"generator": {"context_aware": 0.5}})
    assert load_config_file(tmp_path / "cad" / "config.yaml")["generator"]["params"]["context_aware"] == 0.5
    (record,) = read_records(tmp_path / "cad" / RECORDS)
    generate = next(s for s in record["stages"] if s["stage"] == "generate")
    assert generate["extra"]["context_aware"] == 0.5 and generate["extra"]["contrast_prompt_tokens"] > 0
    with pytest.raises(InputError, match="the pipeline has no reranker; its components: chunker, index, generator"):
        run_rag_eval(tiny_qa, config, tmp_path / "x", limit=1, progress=False, plots=False,
                     settings={"reranker": {"model": "m"}})
    with pytest.raises(InputError, match="expected NAME.KEY=VALUE"):
        from rag.cli.args import parse_settings

        parse_settings(["generator=1"])
    assert main(["eval", "rag", "--data", str(tiny_qa), "--limit", "1", "--set", "nothing.k=1",
                 "--out", str(tmp_path / "y"), "--no-plots"]) == 2


def test_cli_runs_and_prints_the_summary_last(tiny_qa: Path, tiny_lm: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from rag.cli import main

    config = _config(tiny_lm)
    config["generator"] = None  # retrieval stages only: recall without generation
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["eval", "rag", "--data", str(tiny_qa), "--pipeline", str(path), "--limit", "3",
                 "--out", str(tmp_path / "run"), "--no-plots"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["metrics"]["questions"] == 3 and summary["metrics"]["em"] is None
    assert "recall.filter" in summary["metrics"]


def test_data_info_prints_cards_for_beir_and_qa_folders(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rag.cli import main

    assert main(["data", "info", str(data_dir / "scifact"), str(data_dir / "hotpotqa-dev-fullwiki-500")]) == 0
    scifact, hotpot = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (scifact["kind"], scifact["documents"], scifact["splits"]["test"]) == (
        "beir", 5183, {"queries": 300, "judgements": 339})
    assert scifact["licence"] == "CC BY-NC 2.0"
    assert (hotpot["kind"], hotpot["queries_with_answers"], hotpot["documents"]) == ("qa", 500, 4920)
    assert set(hotpot["splits"]) == {"test", "test_gold_complete"}
    assert main(["data", "info", str(data_dir / "no-such-set")]) == 2


def test_shipped_pipeline_configs_load():
    """The configs named in eval/results commands build pipelines (int8 generator: opt-in, recorded)."""
    from pathlib import Path

    from rag.pipeline import Pipeline

    configs = sorted((Path(__file__).resolve().parents[2] / "eval" / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        assert Pipeline.from_config(path).to_config()["generator"]["params"]["quantize"] in (None, "int8")


def test_recall_all_needs_every_relevant_document_of_a_question() -> None:
    question = QAQuestion("q1", "Which university did the director attend?", ("Yale",), frozenset({"film", "director"}))
    film, director, noise = (_hit(f"{d}#0", d, f"About the {d}.") for d in ("film", "director", "noise"))
    answer = Answer("Yale", [], [film], Trace([StageRecord("generate", 1.0, 1, 1, 10, 1)]))
    record = score_answer(question, answer, [("retrieve", [film, noise]), ("loop", [film, noise, director])])
    assert record["recall_all"] == {"retrieve": 0.0, "loop": 1.0}
    unjudged = score_answer(QAQuestion("q2", "Who?", ("Yale",)), answer, [("retrieve", [film])])
    assert unjudged["recall_all"] == {}
    summary = summarize([record, unjudged])
    assert summary["metrics"]["recall_all.loop"] == 1.0 and summary["metrics"]["recall_all.retrieve"] == 0.0
