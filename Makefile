# make demo  - set up .venv and transfer the built-in model pair torch -> paddle, then verify it
# make test  - set up .venv and run the test suite
# make bench - set up .venv and run the benchmarks (results go to docs/performance.md by hand)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: requirements-dev.txt setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

.PHONY: setup demo test bench
setup: $(BIN)/.installed

demo: setup
	$(BIN)/python -m padiff_lite demo

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python bench/bench_transfer.py
