# Two commands a new user needs: `make demo` and `make test`. Both bootstrap .venv:
# `make demo` with only what the demo needs (the `emulator` extra), `make test` with the
# development tools on top (the `dev` extra), also when it follows `make demo`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_STAMP := $(VENV)/.installed-emulator
DEV_STAMP := $(VENV)/.installed-dev
OUTPUT ?= output
DEMO_PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: demo test lint typecheck check bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The `dev` extra includes `emulator`: installing it also satisfies the demo.
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[emulator]"
	touch $(DEMO_STAMP)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(DEV_STAMP) $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	PREFECT_HOME="$(DEMO_PREFECT_HOME)" $(BIN)/prefect-kandinsky demo --output "$(OUTPUT)"

test: $(DEV_STAMP)
	$(BIN)/python -m pytest

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(DEV_STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) output .pytest_cache .mypy_cache .ruff_cache
