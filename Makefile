# `make demo` and `make test` are the whole set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Two workers: the suite is mostly TensorFlow start-up and graph building, and the machines
# that run it have two cores.
WORKERS ?= 2

.PHONY: demo test quick lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,test]'
	touch $@

demo: $(STAMP)
	$(BIN)/smpack build variants/linear.yaml --out build --force

lint: $(STAMP)
	$(BIN)/ruff check smpack tests variants bench
	$(BIN)/mypy smpack

# Everything, slow real-model and subprocess tests included.
test: lint
	$(BIN)/python -m pytest -q -n $(WORKERS)

# The edit loop: no lint, no tests marked slow.
quick: $(STAMP)
	$(BIN)/python -m pytest -q -n $(WORKERS) -m "not slow"

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
