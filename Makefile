# Two commands set everything up on a fresh machine: `make test` and `make run`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= etc/ccproxy.toml
STAMP  := $(VENV)/.installed

.PHONY: test run check bench fuzz soak install-service clean e2e dist test-dist

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The tests that drive real client programs (the Codex CLI, Claude Code, gemini-cli and opencode from npm into .e2e/,
# and the llm CLI from PyPI into a virtualenv of its own, .e2e/llm); `make test` runs them too when the programs are
# installed, and skips them with the reason otherwise.
E2E_DIR := .e2e
E2E_NPM := @openai/codex @anthropic-ai/claude-code @google/gemini-cli opencode-ai
E2E_BIN := $(CURDIR)/$(E2E_DIR)/node_modules/.bin

$(E2E_DIR)/llm/bin/llm:
	$(PYTHON) -m venv $(E2E_DIR)/llm
	$(E2E_DIR)/llm/bin/pip install --quiet llm

e2e: $(STAMP) $(E2E_DIR)/llm/bin/llm
	npm install --prefix $(E2E_DIR) --no-audit --no-fund --loglevel=error $(E2E_NPM)
	CODEX_BIN=$(E2E_BIN)/codex CCPROXY_TEST_CLAUDE=$(E2E_BIN)/claude CCPROXY_TEST_GEMINI_CLI=$(E2E_BIN)/gemini \
	CCPROXY_TEST_OPENCODE=$(E2E_BIN)/opencode CCPROXY_TEST_LLM=$(CURDIR)/$(E2E_DIR)/llm/bin/llm \
		$(BIN)/python -m pytest -q tests/test_codex_e2e.py tests/test_rules_e2e.py tests/test_gemini_cli_e2e.py \
		tests/test_opencode_e2e.py tests/test_llm_e2e.py -k "codex or claude_code or gemini_cli or opencode or llm" $(PYTEST_ARGS)

run: $(STAMP)
	$(BIN)/ccproxyd --config $(CONFIG) $(RUN_ARGS)

check: $(STAMP)
	$(BIN)/ccproxyd --config $(CONFIG) check

# Install as a systemd service (as root): a venv of its own under $(PREFIX), the unit,
# and the example config and an empty env file (for API keys) unless they exist.
# DESTDIR puts everything under another root to look at (the venv does not relocate) and skips systemctl.
PREFIX     ?= /opt/ccproxyd
# The service's interpreter: the first of these that is Python 3.11+ outside /root, /home and /run/user,
# which the unit cannot read (systemd/service-python says why it passes over one).
SERVICE_PYTHON ?= /usr/bin/python3 $(PYTHON)
CONFIG_DIR ?= /etc/ccproxyd
UNIT_DIR   ?= /etc/systemd/system

# BINARY=dist/ccproxyd-... installs that one file (checked against its .sha256 when one is beside it) as
# $(PREFIX)/bin/ccproxyd instead, with the same unit less one line: NotifyAccess=all, since the one-file
# launcher is the main process and ccproxyd, which notifies, is its child.
install-service:
ifeq ($(BINARY),)
	python=$$(systemd/service-python $(SERVICE_PYTHON)) && $$python -m venv $(DESTDIR)$(PREFIX)
	$(DESTDIR)$(PREFIX)/bin/pip install --quiet --upgrade pip
	$(DESTDIR)$(PREFIX)/bin/pip install --quiet .
else
	if [ -e $(BINARY).sha256 ]; then cd $(dir $(BINARY)) && sha256sum --check --quiet $(notdir $(BINARY)).sha256; fi
	install -D -m 0755 $(BINARY) $(DESTDIR)$(PREFIX)/bin/ccproxyd
endif
	install -d -m 0755 $(DESTDIR)$(UNIT_DIR) $(DESTDIR)$(CONFIG_DIR)
	sed -e 's|/opt/ccproxyd|$(PREFIX)|g' -e 's|/etc/ccproxyd|$(CONFIG_DIR)|g' $(if $(BINARY),-e 's|^NotifyAccess=main$$|NotifyAccess=all|') \
		systemd/ccproxyd.service > $(DESTDIR)$(UNIT_DIR)/ccproxyd.service
	chmod 0644 $(DESTDIR)$(UNIT_DIR)/ccproxyd.service
	test -e $(DESTDIR)$(CONFIG_DIR)/ccproxy.toml || install -m 0644 etc/ccproxy.toml $(DESTDIR)$(CONFIG_DIR)/ccproxy.toml
	test -e $(DESTDIR)$(CONFIG_DIR)/env || install -m 0600 /dev/null $(DESTDIR)$(CONFIG_DIR)/env
	$(DESTDIR)$(PREFIX)/bin/ccproxyd --config $(DESTDIR)$(CONFIG_DIR)/ccproxy.toml check > /dev/null
	if [ -z "$(DESTDIR)" ]; then systemctl daemon-reload; fi
	@echo "installed; put API keys in $(CONFIG_DIR)/env, edit $(CONFIG_DIR)/ccproxy.toml, then: systemctl enable --now ccproxyd"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache $(DIST_VENV) dist

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

# Hostile client input, longer than CI runs it (tests/test_fuzz_inbound.py): FUZZ_EXAMPLES per fuzz test, random seeds;
# and the relay's equivalence with the general path (tests/test_relay.py) on 100 × FUZZ_EXAMPLES generated cases.
FUZZ_EXAMPLES ?= 2000

fuzz: $(STAMP)
	CCPROXY_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/test_fuzz_inbound.py tests/test_relay.py $(PYTEST_ARGS)

# The full soak (tests/test_soak.py): SOAK_CLIENTS concurrent clients for SOAK_SECONDS; CI runs a short one.
SOAK_SECONDS ?= 60
SOAK_CLIENTS ?= 200

soak: $(STAMP)
	CCPROXY_SOAK_SECONDS=$(SOAK_SECONDS) CCPROXY_SOAK_CLIENTS=$(SOAK_CLIENTS) $(BIN)/python -m pytest -q tests/test_soak.py $(PYTEST_ARGS)

# One file to install (README "Set up"): dist/ccproxyd-VERSION-linux-ARCH, an executable holding the interpreter
# and every dependency (PyInstaller one-file, packaging/ccproxyd.spec), and its .sha256. Built in a virtualenv
# of its own that holds only ccproxyd's dependencies. `make test-dist` runs tests/test_dist.py against it.
DIST_VENV := .venv-dist
DIST_NAME := ccproxyd-$(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' ccproxyd/__init__.py)-linux-$(shell uname -m)

$(DIST_VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(DIST_VENV)
	$(DIST_VENV)/bin/pip install --quiet --upgrade pip
	$(DIST_VENV)/bin/pip install --quiet '.[dist,redis,postgres]'
	touch $@

dist: $(DIST_VENV)/.installed
	CCPROXYD_DIST_NAME=$(DIST_NAME) $(DIST_VENV)/bin/pyinstaller --noconfirm --clean --log-level WARN \
		--distpath dist --workpath build/pyinstaller packaging/ccproxyd.spec
	cd dist && sha256sum $(DIST_NAME) > $(DIST_NAME).sha256
	@echo "built dist/$(DIST_NAME), $$(du -m dist/$(DIST_NAME) | cut -f1) MB"

test-dist: $(STAMP)
	CCPROXYD_BINARY=dist/$(DIST_NAME) $(BIN)/python -m pytest -q tests/test_dist.py $(PYTEST_ARGS)
