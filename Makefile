# One command to set up and run the main job (`make demo`: `autofhe demo`, a short search), one
# to set up and run the tests (`make test`, what CI runs). Both create .venv on first use.
# `make check` is the inner loop: lint and the fast tests (not slow, no FHE execution).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test check lint bench clean

# two test processes: most of the suite's time is subprocesses that use one core each
PYTEST_WORKERS ?= 2

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch must be installed before the project, or pip pulls a CUDA build.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/autofhe demo

test: setup
	$(BIN)/ruff check autofhe tests benchmarks
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal --durations=12 $(PYTEST_ARGS)

check: setup
	$(BIN)/ruff check autofhe tests benchmarks
	$(BIN)/ruff format --check autofhe tests benchmarks
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal -m "not slow and not execute" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check autofhe tests benchmarks

bench: setup
	$(BIN)/python benchmarks/quantized_accuracy.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
