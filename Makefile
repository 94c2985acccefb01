# One environment (.venv) for everything; `make test` and `make demo` create or reuse it.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
SHARED ?= ../shared/data
OUT ?= out/demo

export PATH := $(abspath $(VENV))/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export AXOLOTL_DO_NOT_TRACK := 1
export WANDB_MODE := disabled
export TOKENIZERS_PARALLELISM := false

.PHONY: install lock lint test test-fast demo bench gguf-check clean

# .ci/constraints.txt pins what the suite passed with, so a fresh machine installs the same versions.
CONSTRAINTS ?= .ci/constraints.txt

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch first (a plain `torch` requirement would pull a multi-GB CUDA build)
	$(PY) -m pip install -q torch==2.13.0 -c $(CONSTRAINTS)
	$(PY) -m pip install -q -e '.[test]' -c $(CONSTRAINTS)
	touch $@

install: $(VENV)/.installed

# refresh the pins from the current environment (run after a green `make test` on purpose-upgraded packages)
lock: install
	{ head -n 2 $(CONSTRAINTS); $(PY) -m pip freeze --exclude-editable | grep -v '^#'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

# lint and format first (seconds): CI enforces the style the same way it enforces the tests
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# two pytest-xdist workers, one unit each at a time (a test module, or a layout of test_vocab.py), longest
# first (tests/_schedule.py replaces loadfile's order), each with its own ports and its share of the cores
# (tests/_plugin_helpers.py: worker_port, worker_threads).
# WORKERS=0 runs serially.
WORKERS ?= 2
PYTEST_PARALLEL := -n $(WORKERS) --dist loadfile

test: lint
	$(PY) -m pytest -q -ra --durations=25 $(PYTEST_PARALLEL)

test-fast: install
	$(PY) -m pytest -q -ra -m "not e2e" $(PYTEST_PARALLEL)

demo: install
	$(PY) -m lep_plugin.cli.lep demo --output $(OUT)

bench: install
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

# llama.cpp (built once from the llama-cpp-python sdist into ~/.cache/lep-plugin) tokenizes and generates
# like transformers on tiny LEP models; not in CI (the first run compiles llama.cpp).
gguf-check: install
	$(PY) benchmarks/gguf_check.py

clean:
	rm -rf out .pytest_cache
