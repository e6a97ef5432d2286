# The two commands: `make demo` and `make test`. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install when the package's declared dependencies or the constraints change.
STAMP  := $(VENV)/.specrag-installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)
# The model packs the demo and the tests use (qwen2.5-1.5b is fetched on demand: specrag models fetch --all).
PACKS  := minilm splade-tiny smollm2-135m qwen2.5-0.5b
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1

.PHONY: demo test bench install packs clean

demo: packs
	$(BIN)/specrag demo

test: packs
	$(BIN)/python -m pytest

bench: packs
	$(BIN)/python -m eval.bench_indexing
	$(BIN)/python -m eval.bench_bm25
	$(BIN)/python -m eval.bench_dense --split test
	$(BIN)/python -m eval.bench_late --split test
	$(BIN)/python -m eval.bench_chunking
	$(BIN)/python -m eval.bench_compression --repeats 2

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel. An unpinned torch would pull a CUDA build of several GB.
	$(BIN)/pip install --quiet torch==2.13.0

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	rm -f $(VENV)/.specrag-installed-*
	touch $@

packs: $(STAMP)
	$(BIN)/specrag models fetch $(PACKS)

clean:
	rm -rf $(VENV) .specrag
