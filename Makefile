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

# Install as a systemd service (as root): a venv of its own under $(PREFIX), the unit,
# and the example config and an empty env file (for API keys) unless they exist.
# DESTDIR puts everything under another root to look at (the venv does not relocate) and skips systemctl.
PREFIX     ?= /opt/ccproxyd
CONFIG_DIR ?= /etc/ccproxyd
UNIT_DIR   ?= /etc/systemd/system

install-service:
	$(PYTHON) -m venv $(DESTDIR)$(PREFIX)
	$(DESTDIR)$(PREFIX)/bin/pip install --quiet --upgrade pip
	$(DESTDIR)$(PREFIX)/bin/pip install --quiet .
	install -d -m 0755 $(DESTDIR)$(UNIT_DIR) $(DESTDIR)$(CONFIG_DIR)
	sed -e 's|/opt/ccproxyd|$(PREFIX)|g' -e 's|/etc/ccproxyd|$(CONFIG_DIR)|g' systemd/ccproxyd.service > $(DESTDIR)$(UNIT_DIR)/ccproxyd.service
	chmod 0644 $(DESTDIR)$(UNIT_DIR)/ccproxyd.service
	test -e $(DESTDIR)$(CONFIG_DIR)/ccproxy.toml || install -m 0644 etc/ccproxy.toml $(DESTDIR)$(CONFIG_DIR)/ccproxy.toml
	test -e $(DESTDIR)$(CONFIG_DIR)/env || install -m 0600 /dev/null $(DESTDIR)$(CONFIG_DIR)/env
	$(DESTDIR)$(PREFIX)/bin/ccproxyd --config $(DESTDIR)$(CONFIG_DIR)/ccproxy.toml check > /dev/null
	if [ -z "$(DESTDIR)" ]; then systemctl daemon-reload; fi
	@echo "installed; put API keys in $(CONFIG_DIR)/env, edit $(CONFIG_DIR)/ccproxy.toml, then: systemctl enable --now ccproxyd"

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

# CPU per request and per chunk, and what each feature adds (bench/cpu.py; docs/performance.md): robust to a busy machine.
# BENCH_CPU_ARGS="--callgrind --rounds 1 --requests 300" counts instructions instead (~20 min).
.PHONY: bench-cpu
bench-cpu: $(BENCH_STAMP)
	$(BIN)/python -m bench.cpu --features $(BENCH_CPU_ARGS)

# Hostile client input, longer than CI runs it (tests/test_fuzz_inbound.py): FUZZ_EXAMPLES per fuzz test, random seeds.
FUZZ_EXAMPLES ?= 2000

fuzz: $(STAMP)
	CCPROXY_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/test_fuzz_inbound.py $(PYTEST_ARGS)

# The full soak (tests/test_soak.py): SOAK_CLIENTS concurrent clients for SOAK_SECONDS; CI runs a short one.
SOAK_SECONDS ?= 60
SOAK_CLIENTS ?= 200

soak: $(STAMP)
	CCPROXY_SOAK_SECONDS=$(SOAK_SECONDS) CCPROXY_SOAK_CLIENTS=$(SOAK_CLIENTS) $(BIN)/python -m pytest -q tests/test_soak.py $(PYTEST_ARGS)
