# Two commands set everything up on a fresh machine: `make test` and `make run`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= etc/ccproxy.toml
STAMP  := $(VENV)/.installed

.PHONY: test run check bench fuzz soak install-service clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

run: $(STAMP)
	$(BIN)/ccproxyd --config $(CONFIG)

check: $(STAMP)
	$(BIN)/ccproxyd --config $(CONFIG) check

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
