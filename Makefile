# lakeloop: `make demo` runs the loop, `make test` runs the tests. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# tests/integration/test_postgres_stack.py runs the Prefect and MLflow servers on this PostgreSQL
# (it creates and drops its own databases); `make test LAKELOOP_TEST_POSTGRES_URL=` skips it.
LAKELOOP_TEST_POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
export LAKELOOP_TEST_POSTGRES_URL

.PHONY: install system-deps demo up down test test-fast lint format bench openapi clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "lakeloop needs Python 3.11 or newer; set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Flux's CRD schemas for tests/deploy/test_ci_cd.py come from npm (no PyPI package carries them):
# installed when Node.js is, else those checks skip, naming node.
NODE_CHECKS := tests/deploy/node
$(NODE_CHECKS)/node_modules/.installed: $(NODE_CHECKS)/package.json $(NODE_CHECKS)/package-lock.json
	@if command -v npm >/dev/null; then \
		npm ci --prefix $(NODE_CHECKS) --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the Flux schema checks of tests/deploy will skip (install Node.js 20+)"; fi

install: $(STAMP) $(NODE_CHECKS)/node_modules/.installed  ## create .venv and install lakeloop with its dev tools (and the Flux schemas when Node.js is installed)

# Prometheus, the Pushgateway, Alertmanager (with amtool), docker-compose and Chromium from
# Debian's packages: the observability tests run them for real, the alert path runs Prometheus ->
# Alertmanager -> gateway -> Prefect, the compose file is checked with `docker-compose config`, and
# Chromium opens the Swagger page and a drift report offline, headless
# (tests/integration/test_pages_offline.py). Tests that need one skip, naming it, when it is
# missing. Needs root or sudo; CI runs it before `make test`.
SYSTEM_PACKAGES := prometheus prometheus-pushgateway prometheus-alertmanager docker-compose chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
system-deps:  ## install Prometheus, the Pushgateway, Alertmanager, docker-compose and Chromium (Debian/Ubuntu)
	@command -v apt-get >/dev/null || { echo "system-deps needs apt-get; install $(SYSTEM_PACKAGES) by hand"; exit 1; }
	@# Nothing to fetch when all are installed; otherwise fresh package lists first (an old list
	@# can name a Chromium build the mirror no longer has).
	dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq \
		&& $(SUDO) apt-get install -y --no-install-recommends $(SYSTEM_PACKAGES); }

demo: install  ## start the stack, commit a batch, train, serve, predict, stop
	$(BIN)/lakeloop demo

up: install  ## start the stack and keep it running
	$(BIN)/lakeloop up

down: install  ## stop a stack left running
	$(BIN)/lakeloop down

test: install  ## every test: unit, data, integration and the end-to-end loop
	$(BIN)/pytest

test-fast: install  ## tests that need no server
	$(BIN)/pytest tests/unit tests/data

lint: install  ## ruff lint + format check, mypy, import contracts (the floors of ARCHITECTURE.md)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install  ## benchmarks, figures printed side by side
	$(BIN)/python -m benchmarks

openapi: install  ## regenerate api/openapi.json after changing the API or the dataset description
	$(BIN)/python -m api.openapi

clean:
	rm -rf .lakeloop .pytest_cache .ruff_cache .mypy_cache
