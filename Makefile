# One command to set up and run the main job (`make demo`: `autofhe demo`, a short search), one
# to set up and run the tests (`make test`). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench clean

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
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check autofhe tests benchmarks

bench: setup
	$(BIN)/python benchmarks/quantized_accuracy.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
