"""Retrieval evaluation: BEIR loading, metrics, and agreement of the dense pipeline with a plain
sentence-transformers + numpy exact search on a SciFact subset (real MiniLM, real faiss)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest

from eval.beir import BeirDataset, load_beir
from eval.metrics import evaluate_run, hits_to_run
from eval.retrieval import load_index_spec, run_retrieval
from rag.cli.eval import add_eval_parser
from rag.errors import InputError
from rag.protocols import BaseReranker
from rag.registry import registered
from rag.types import Chunk, Hit

# Small enough for ~15 documents/s (SciFact abstracts fill MiniLM's 256 tokens) to keep this file near
# 40 s, large enough that the ranking is not trivial: 50 queries, ~5 distractors per judged document.
SUBSET_QUERIES = 50
DISTRACTORS_PER_QUERY = 4


def write_beir(root: Path, corpus: list[dict], queries: list[dict], qrels: list[str]) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(line + "\n" for line in qrels))
    return root


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    return write_beir(
        tmp_path / "tiny",
        corpus=[{"_id": "d1", "title": "T1", "text": "one"}, {"_id": "d2", "title": "", "text": "two"}],
        queries=[{"_id": "q1", "text": "first?"}, {"_id": "q2", "text": "second?"}, {"_id": "q3", "text": "unjudged"}],
        qrels=["q2\td2\t1", "q1\td1\t2", "q1\td2\t0"],
    )


@pytest.fixture(scope="session")
def scifact_subset(scifact_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BeirDataset]:
    """A SciFact subset written in the BEIR layout under a temporary folder (never into the repo)."""
    subset = load_beir(scifact_dir).subset(SUBSET_QUERIES, distractors_per_query=DISTRACTORS_PER_QUERY)
    root = write_beir(
        tmp_path_factory.mktemp("scifact-subset") / "scifact",
        corpus=[{"_id": d.id, "title": d.title, "text": d.text} for d in subset.corpus],
        queries=[{"_id": qid, "text": text} for qid, text in subset.queries.items()],
        qrels=[f"{qid}\t{doc}\t{grade}" for qid, docs in subset.qrels.items() for doc, grade in docs.items()],
    )
    return root, subset


# -- BEIR loader -----------------------------------------------------------------------------------


def test_load_beir_keeps_judged_queries_in_file_order(tiny: Path) -> None:
    data = load_beir(tiny)
    assert data.name == "tiny" and data.split == "test"
    assert [d.id for d in data.corpus] == ["d1", "d2"] and data.corpus[0].title == "T1"
    assert list(data.queries) == ["q1", "q2"]  # q3 has no qrels
    assert data.qrels == {"q1": {"d1": 2, "d2": 0}, "q2": {"d2": 1}}


def test_malformed_qrels_line_names_file_and_line(tiny: Path) -> None:
    qrels = tiny / "qrels" / "test.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2 d2 1\n")
    with pytest.raises(InputError, match=re.escape(f"{qrels}, line 3: expected 3 tab-separated fields")):
        load_beir(tiny)
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\thigh\n")
    with pytest.raises(InputError, match=re.escape(f"{qrels}, line 2: score 'high' is not an integer")):
        load_beir(tiny)


def test_missing_files_are_named_with_the_expected_layout(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no qrels for split 'dev' \(available splits: test\)"):
        load_beir(tiny, split="dev")
    with pytest.raises(InputError, match="no such directory"):
        load_beir(tmp_path / "nowhere")
    corpus = tiny / "corpus.jsonl"
    corpus.unlink()
    with pytest.raises(InputError, match=re.escape(f"{corpus}: missing; a BEIR data set folder holds corpus.jsonl")):
        load_beir(tiny)


def test_qrels_naming_unknown_queries_is_an_error(tiny: Path) -> None:
    (tiny / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq9\td1\t1\n")
    with pytest.raises(InputError, match=r"query ids \['q9'\] are not in"):
        load_beir(tiny)


def test_subset_keeps_judged_documents_and_a_fixed_number_of_others(scifact_dir: Path) -> None:
    data = load_beir(scifact_dir)
    assert (len(data.corpus), len(data.queries)) == (5183, 300)
    subset = data.subset(10, distractors_per_query=3)
    judged = {doc for docs in subset.qrels.values() for doc in docs}
    assert list(subset.queries) == list(data.queries)[:10]
    assert judged <= {d.id for d in subset.corpus}
    assert len(subset.corpus) == len(judged) + 30


# -- metrics ---------------------------------------------------------------------------------------


def test_evaluate_run_scores_missing_queries_as_zero() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d3": 1}}
    run = {"q1": {"d1": 0.9, "d2": 0.5}, "q2": {"d4": 0.8, "d3": 0.7}, "q-unjudged": {"d1": 1.0}}
    assert evaluate_run(run, qrels) == pytest.approx(
        {"ndcg@10": (1.0 + 1 / np.log2(3)) / 2, "recall@100": 1.0, "mrr@10": 0.75}
    )
    assert evaluate_run({"q1": {"d1": 1.0}}, qrels) == pytest.approx({"ndcg@10": 0.5, "recall@100": 0.5, "mrr@10": 0.5})


def test_hits_to_run_gives_a_document_its_best_chunk_score() -> None:
    def hit(chunk_id: str, doc_id: str, score: float) -> Hit:
        return Hit(chunk=Chunk(id=chunk_id, doc_id=doc_id, text="x", start=0, end=1), score=score, source="t")

    hits = [[hit("a#1", "a", 0.4), hit("b#0", "b", 0.9), hit("a#0", "a", 0.7)], []]
    assert hits_to_run(["q1", "q2"], hits) == {"q1": {"a": 0.7, "b": 0.9}, "q2": {}}


# -- agreement with sentence-transformers ----------------------------------------------------------


def reference_run(data: BeirDataset, k: int = 100) -> dict[str, dict[str, float]]:
    """Exact search written from scratch: sentence-transformers embeddings, numpy dot products."""
    from sentence_transformers import SentenceTransformer

    from rag.models import resolve_model

    model = SentenceTransformer(resolve_model("minilm"), device="cpu")
    docs = model.encode([d.title + " " + d.text for d in data.corpus], batch_size=64, normalize_embeddings=True)
    query_ids = list(data.queries)
    queries = model.encode([data.queries[q] for q in query_ids], batch_size=64, normalize_embeddings=True)
    scores = queries @ docs.T
    run = {}
    for row, qid in enumerate(query_ids):
        top = np.argsort(-scores[row], kind="stable")[:k]
        run[qid] = {data.corpus[i].id: float(scores[row, i]) for i in top}
    return run


def test_dense_retrieval_matches_plain_sentence_transformers(scifact_subset: tuple[Path, BeirDataset]) -> None:
    import ir_measures
    from ir_measures import R, RR, nDCG

    root, data = scifact_subset
    result = run_retrieval(root, "dense")
    expected = ir_measures.calc_aggregate([nDCG @ 10, R @ 100, RR @ 10], data.qrels, reference_run(data))

    assert result["queries"] == SUBSET_QUERIES and result["documents"] == len(data.corpus)
    assert result["dataset"] == "scifact" and result["index"]["type"] == "dense"
    assert abs(result["ndcg@10"] - expected[nDCG @ 10]) <= 0.005
    assert abs(result["recall@100"] - expected[R @ 100]) <= 0.005
    assert abs(result["mrr@10"] - expected[RR @ 10]) <= 0.005
    assert 0.5 < result["ndcg@10"] <= 1.0  # a working retriever, not an empty run
    assert result["index_seconds"] > 0 and result["search_qps"] > 0


# -- command line ----------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specrag")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_prints_a_summary_and_the_json_result_last(
    scifact_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "index.yaml"
    config.write_text("type: dense\nparams:\n  name: dense-from-yaml\n")
    args = make_parser().parse_args(
        ["eval", "retrieval", "--data", str(scifact_dir), "--index", str(config), "--limit", "2"]
    )
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["queries"] == 2 and result["index"]["params"]["name"] == "dense-from-yaml"
    assert {"ndcg@10", "recall@100", "mrr@10", "index_seconds", "search_qps", "dataset"} <= set(result)
    assert any(line.strip().startswith("ndcg@10") for line in lines[:-1])


def test_cli_reports_bad_input_with_an_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = make_parser().parse_args(["eval", "retrieval", "--data", str(tmp_path / "none"), "--index", "dense"])
    assert args.func(args) == 2
    assert "no such directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_parser().parse_args(["eval"])  # a command is required
    with pytest.raises(SystemExit):
        make_parser().parse_args(["eval", "retrieval", "--data", "x", "--index", "dense", "--limit", "0"])


def test_index_specs_name_mapping_or_file(tmp_path: Path) -> None:
    (tmp_path / "ix.json").write_text(json.dumps({"type": "dense", "params": {"batch_size": 8}}))
    assert load_index_spec(tmp_path / "ix.json").batch_size == 8
    assert load_index_spec({"type": "dense", "params": {"name": "x"}}).name == "x"
    assert load_index_spec("dense").name == "dense"
    with pytest.raises(InputError, match=r"neither a registered index \(.*dense"):
        load_index_spec("bm42")
    with pytest.raises(InputError, match="no such index config file"):
        load_index_spec(tmp_path / "missing.yaml")


# -- reranking and filtering stages ----------------------------------------------------------------


class ReverseReranker(BaseReranker):
    """Puts the retriever's order upside down: a reranker whose effect on nDCG is known."""

    name = "test-reverse"

    def __init__(self) -> None:
        pass

    def score(self, query: str, hits: list[Hit]) -> list[float]:
        return [float(i) for i in range(len(hits))]


@pytest.fixture(autouse=True)
def _reverse_reranker():
    with registered("reranker", "test-reverse", "tests.eval.test_retrieval:ReverseReranker"):
        yield

TOPICS = ["aspirin blood clotting", "solar panels energy", "whale migration ocean", "bread yeast baking",
          "volcano lava eruption", "chess opening strategy"]


@pytest.fixture()
def topics(tmp_path: Path) -> Path:
    """Six topics, three documents each (one strong, two weaker), one query per topic judging the strong one."""
    corpus, queries, qrels = [], [], []
    for t, words in enumerate(TOPICS):
        corpus.append({"_id": f"t{t}-strong", "title": "", "text": f"{words} {words} {words} facts"})
        corpus.append({"_id": f"t{t}-weak", "title": "", "text": f"{words.split()[0]} is mentioned here once"})
        corpus.append({"_id": f"t{t}-other", "title": "", "text": f"{words.split()[1]} appears in passing"})
        queries.append({"_id": f"q{t}", "text": words})
        qrels.append(f"q{t}\tt{t}-strong\t1")
    root = write_beir(tmp_path / "topics", corpus, queries, qrels)
    (root / "qrels" / "train.tsv").write_text((root / "qrels" / "test.tsv").read_text())
    return root


def test_rerank_and_filter_stages_are_scored(topics: Path) -> None:
    plain = run_retrieval(topics, "bm25s", k=10)
    assert plain["ndcg@10"] == pytest.approx(1.0) and [s["stage"] for s in plain["stages"]] == ["retrieve"]
    assert "kept_f1" not in plain and "rerank" not in plain

    result = run_retrieval(topics, "bm25s", k=10, rerank="test-reverse", rerank_depth=2,
                           filters=["topk", "reorder"], params={"topk": {"k": 2}})
    assert result["ndcg@10"] == pytest.approx(1.0)  # the index's own hits
    assert result["rerank"] == {"type": "test-reverse", "params": {}} and result["rerank_depth"] == 2
    # the best two swapped, the tail untouched: the relevant document now sits second
    assert result["rerank_ndcg@10"] == pytest.approx(1 / np.log2(3))
    assert result["rerank_ms_per_query"] >= 0
    assert [(s["stage"], s["name"]) for s in result["stages"]] == [
        ("retrieve", "bm25s"), ("rerank", "test-reverse"), ("filter", "top-k"), ("filter", "reorder")]
    # the filters see the two reranked hits: both kept, one of them relevant
    assert result["kept_mean"] == 2.0 and result["kept_recall"] == 1.0
    assert result["kept_precision"] == pytest.approx(0.5) and result["kept_f1"] == pytest.approx(2 / 3)
    assert result["filters"] == [{"type": "top-k", "params": {"k": 2, "min_score": None}},
                                 {"type": "reorder", "params": {}}]
    with pytest.raises(InputError, match=r"parameters given for \['mmr'\]"):
        run_retrieval(topics, "bm25s", filters=["topk"], params={"mmr": {"k": 1}})


def test_fit_filter_then_calibrated_filtering_and_refusal_of_another_index(topics: Path, tmp_path: Path) -> None:
    from eval.fit_filter import fit_filter

    out = tmp_path / "bm25s.json"
    params = fit_filter(topics, "bm25s", out, split="train", depth=3)
    assert params["source"] == "bm25s" and params["retriever"]["type"] == "bm25s" and params["depth"] == 3
    assert params["train"]["queries"] == 6 and params["train"]["split"] == "train"
    result = run_retrieval(topics, "bm25s", k=10, filters=["calibrated"], params={"calibrated": {"path": str(out)}})
    assert result["kept_f1"] == pytest.approx(params["train"]["kept_f1"])  # same queries: the fit's own F1
    assert result["kept_f1"] >= params["train"]["raw_kept_f1"]
    with pytest.raises(InputError, match=r'fitted for retriever \{"type": "bm25s".*"k1": 0.9.*applied to retriever '
                                         r'\{"type": "bm25s".*"k1": 1.5'):
        run_retrieval(topics, {"type": "bm25s", "params": {"k1": 1.5}}, filters=["calibrated"],
                      params={"calibrated": {"path": str(out)}})


def test_cli_takes_rerank_filter_and_settings(topics: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = make_parser().parse_args(
        ["eval", "retrieval", "--data", str(topics), "--index", "bm25s", "--rerank", "test-reverse",
         "--rerank-depth", "3", "--filter", "threshold,topk", "--set", "threshold.min_score=-1e9",
         "--set", "topk.k=1"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert {"kept_precision", "kept_recall", "kept_f1", "kept_mean"} <= set(result)
    assert result["kept_mean"] == 1.0 and result["stages"][-1]["name"] == "top-k"
    assert any("filter threshold" in line for line in lines[:-1])
    bad = make_parser().parse_args(["eval", "retrieval", "--data", str(topics), "--index", "bm25s", "--set", "oops"])
    assert bad.func(bad) == 2 and "expected NAME.KEY=VALUE" in capsys.readouterr().err
