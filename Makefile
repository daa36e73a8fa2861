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

# The benchmark (docs/performance.md): direct vs ccproxyd vs a bare pass-through (vs LiteLLM with
# LITELLM=/path/to/litellm, from a venv of its own). Uses wrk when installed. BENCH_ARGS passes options.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]' || echo "bench: matplotlib could not be installed; the run will have no chart"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run $(if $(LITELLM),--litellm $(LITELLM)) $(BENCH_ARGS)
