# The two commands: `make demo` and `make test`. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# llama-cpp-python is compiled for this CPU's feature flags (rag/generation/llama_build.py, standard library only).
LLAMA_KEY := $(shell $(PYTHON) -m rag.generation.llama_build --key)
# Re-install when the package's declared dependencies, the constraints or the CPU's build flags change.
STAMP  := $(VENV)/.specrag-installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)-$(LLAMA_KEY)
# The model packs the demo and the tests use (qwen2.5-1.5b is fetched on demand: specrag models fetch --all).
PACKS  := minilm splade-tiny smollm2-135m qwen2.5-0.5b
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1

.PHONY: demo test test-slow bench install packs clean

demo: packs
	$(BIN)/specrag demo

# Tests marked `slow` are left out here (addopts in pyproject.toml) and run by `make test-slow`.
test: packs
	$(BIN)/python -m pytest

# The slow tier: SciFact end to end with a full dense index (claims such as "hybrid beats both of its
# inputs", and every retrieval pin in eval/expected that is not quick). Run it before changing a README
# figure it covers. The end-to-end RAG pins take hours on a CPU and stay with `specrag eval check`.
# Then the fuzz tests with many more inputs per boundary, and the full fault-injection run (every index
# kind, 20 killed saves each, both commit paths; eval/results/faults.md).
test-slow: packs
	$(BIN)/python -m pytest -m slow
	SPECRAG_FUZZ_EXAMPLES=1000 $(BIN)/python -m pytest -s tests/rag/test_fuzz_inputs.py tests/rag/test_manifest.py
	$(BIN)/python -m bench.faults --trials 20 --fallback

bench: packs
	$(BIN)/python -m bench.indexing
	$(BIN)/python -m bench.bm25
	$(BIN)/python -m bench.dense --split test
	$(BIN)/python -m bench.late --split test
	$(BIN)/python -m bench.chunking
	$(BIN)/python -m bench.compression --repeats 2
	$(BIN)/python -m bench.memory --mb 50
	$(BIN)/python -m bench.encoders --encoder dense --threads 2
	$(BIN)/python -m bench.encoders --encoder splade --threads 2
	$(BIN)/python -m bench.encoders --encoder late --threads 2
	$(BIN)/python -m bench.iterative --data ../shared/data/hotpotqa-dev-fullwiki-500 --limit 100 --indexes dense,late --threads 1
	$(BIN)/specrag --threads 2 bench engines --model qwen2.5-0.5b --data ../shared/data/squad-v1.1-dev --n 20 --threads 2

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel. An unpinned torch would pull a CUDA build of several GB.
	$(BIN)/pip install --quiet torch==2.13.0

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	# llama.cpp first, built for this CPU (6-10 minutes the first time; the wheel is cached per flag set in
	# $${SPECRAG_CACHE:-~/.cache/specrag}/wheels), so that the install below finds it satisfied.
	$(BIN)/python -m rag.generation.llama_build --install
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	rm -f $(VENV)/.specrag-installed-*
	touch $@

packs: $(STAMP)
	$(BIN)/specrag models fetch $(PACKS)

clean:
	rm -rf $(VENV) .specrag
