"""The speculative-retrieval benchmark runs both loops on the same questions and reports identity and ratios;
runs over disjoint question ranges (one per core) merge into one summary."""

import json

import pytest

from bench.iterative import main


def test_benchmark_compares_naive_and_speculative_loops_side_by_side(data_dir, tmp_path, capsys):
    halves = [tmp_path / "first.json", tmp_path / "second.json"]
    for skip, out in enumerate(halves):
        code = main(["--data", str(data_dir / "hotpotqa-dev-fullwiki-500"), "--limit", "1", "--skip", str(skip),
                     "--indexes", "bm25s", "--model", "smollm2-135m", "--engine", "transformers:float32",
                     "--stride", "2", "--k", "2", "--out", str(out)])
        assert code == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]["bm25s"]
        assert summary["questions"] == 1 and summary["identical"] == 1
        assert summary["speedup"] > 0 and 0 <= summary["naive_search_share"] <= 1
        assert summary["naive_searches_per_answer"] >= 1
    rows = [json.loads(out.read_text())["results"]["bm25s"]["rows"][0] for out in halves]
    assert [set(r) >= {"naive", "speculative", "identical"} for r in rows] == [True, True]
    assert rows[0]["id"] != rows[1]["id"]

    merged = tmp_path / "merged.json"
    assert main(["--merge", *map(str, halves), "--out", str(merged)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(printed[-1])["results"]["bm25s"]
    assert summary["questions"] == 2 and summary["identical"] == 2
    naive = sum(r["naive"]["seconds"] for r in rows)
    speculative = sum(r["speculative"]["seconds"] for r in rows)
    assert summary["speedup"] == pytest.approx(naive / speculative)
    assert "| bm25s | 2 | 2 |" in "\n".join(printed)
    assert [r["id"] for r in json.loads(merged.read_text())["results"]["bm25s"]["rows"]] == [r["id"] for r in rows]

    with pytest.raises(SystemExit):  # the same range twice would count its questions twice
        main(["--merge", str(halves[0]), str(halves[0])])
    assert "already in an earlier file" in capsys.readouterr().err


def test_remote_index_waits_once_per_search_call_and_answers_as_the_index(monkeypatch):
    """The what-if of a slow index: every call to the index (a batch is one call) waits first; results,
    scoring of given chunks and the signatures the guess cache inspects are the wrapped index's own."""
    import inspect

    import bench.iterative as bench
    from indexes.dense import DenseIndex
    from rag.iterative.speculation import ChunkCache
    from tests.indexes.corpus import QUERIES, SENTENCES, make_chunks

    index = DenseIndex("minilm")
    index.add(make_chunks(list(SENTENCES)))
    waits: list[float] = []
    monkeypatch.setattr(bench.time, "sleep", waits.append)
    remote = bench.RemoteIndex(index, 0.25)

    assert [[h.chunk.id for h in hits] for hits in remote.search(QUERIES, 2)] == \
        [[h.chunk.id for h in hits] for hits in index.search(QUERIES, 2)]
    assert waits == [0.25]  # five queries, one call
    encoded = index.encoder.encode_queries(QUERIES[:2])
    assert len(remote.search_vectors(encoded, 2)) == 2 and waits == [0.25, 0.25]
    assert inspect.signature(remote.search_vectors) == inspect.signature(index.search_vectors)
    ids = [c.id for c in make_chunks(list(SENTENCES))]
    assert list(remote.score_chunks(QUERIES[0], ids)) == list(index.score_chunks(QUERIES[0], ids))
    assert len(waits) == 2 and len(remote) == len(index)  # scoring cached chunks stays local
    cache = ChunkCache(remote)
    assert cache.scored and cache.by_vector  # guesses are ranked as for the index itself


def test_benchmark_names_a_simulated_search_latency_and_refuses_to_merge_it_with_real_runs(
        data_dir, tmp_path, capsys):
    runs = []
    for skip, latency in enumerate(["0", "0.01"]):
        runs.append(tmp_path / f"run-{skip}.json")
        assert main(["--data", str(data_dir / "hotpotqa-dev-fullwiki-500"), "--limit", "1", "--skip", str(skip),
                     "--indexes", "bm25s", "--model", "smollm2-135m", "--engine", "transformers:float32",
                     "--stride", "1", "--k", "2", "--search-latency", latency, "--speculation-stride", "2",
                     "--out", str(runs[-1])]) == 0
    printed = capsys.readouterr().out
    assert "| bm25s (+0.01 s simulated per search call) | 1 | 1 |" in printed
    settings = json.loads(runs[1].read_text())["settings"]
    assert settings["search_latency"] == 0.01 and settings["speculation_stride"] == 2
    speculative = json.loads(runs[1].read_text())["results"]["bm25s"]["rows"][0]["speculative"]
    assert speculative["real_steps"] == 0 and set(speculative["strides"]) <= {1, 2}  # pinned: always guesses
    with pytest.raises(SystemExit):
        main(["--merge", *map(str, runs)])
    assert "search_latency" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data", "x", "--search-latency", "-1"])
    assert "--search-latency" in capsys.readouterr().err
