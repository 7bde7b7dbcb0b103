# `make demo` and `make test` are the whole set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/smpack build variants/linear.yaml --out build --force

lint: $(STAMP)
	$(BIN)/ruff check smpack tests variants
	$(BIN)/mypy smpack

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
