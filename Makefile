# Two commands on a fresh machine (Python >= 3.11 and make): `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Upload a generated sample media folder to an embedded local S3 server, then show the history.
demo: $(STAMP)
	$(BIN)/amgmt demo --dir .amgmt-demo

## Lint (ruff), format check (package, tests, benchmarks) and types (mypy) of the package.
lint: $(STAMP)
	$(BIN)/ruff check amgmt benchmarks
	$(BIN)/ruff format --check amgmt tests benchmarks
	$(BIN)/mypy

## Lint, types, then the whole test suite (starts its own S3 servers on 127.0.0.1). This is what CI runs.
test: lint
	$(BIN)/python -m pytest -q

## The fast loop: the unit tests, no server, well under a minute.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

clean:
	rm -rf $(VENV) .amgmt-demo .pytest_cache
