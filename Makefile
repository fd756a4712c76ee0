# make demo  - set up .venv and transfer the built-in model pair torch -> paddle, then verify it
# make test  - set up .venv and run the test suite
# make padiff-suite PADIFF=/path/to/PaDiff - run PaDiff's own test files through padiff_lite.compat
# make bench - set up .venv and run the transfer benchmark (results: docs/performance.md)
# make bench-convert - the checkpoint conversion benchmark (writes ~5 GB of temporary files; results: docs/checkpoints.md)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

# torchvision (tests/test_vision_twins.py only): the registry's 0.28.0 is a CUDA build that breaks
# `import transformers` next to the CPU torch, so it goes into a folder of its own, which only that test puts on
# sys.path; --upgrade makes a rerun replace it rather than stop at the existing folder
$(BIN)/.installed: requirements-dev.txt setup.py padiff_lite/_fastcopy.c Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip uninstall -q -y paddlecodec
	$(BIN)/pip install -q --no-deps --upgrade --target $(VENV)/torchvision-py torchvision==0.28.0
	$(BIN)/pip install -q --no-deps -e .
	touch $@

.PHONY: setup demo test bench bench-convert padiff-suite
setup: $(BIN)/.installed

demo: setup
	$(BIN)/python -m padiff_lite demo

test: setup
	$(BIN)/python -m pytest -q tests

padiff-suite: setup
	$(BIN)/python tests/padiff_suite/run_padiff_tests.py $(PADIFF)

bench: setup
	$(BIN)/python bench/bench_transfer.py

bench-convert: setup
	$(BIN)/python bench/bench_convert.py
