# Two commands on a fresh machine: `make run` (the whole platform) and `make test` (the suite).
# Both create .venv, install the pinned dependencies and, as root on Debian/Ubuntu, the sandbox's packages.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt requirements-awscli.txt | cksum | cut -d' ' -f1)

.PHONY: run test lint format bench chaos install system-deps browser-deps screenshots

# RUN_ARGS passes options on: `make run RUN_ARGS=--verbose`, `make run RUN_ARGS=--reset-demo-password`.
run: install
	$(BIN)/python manage.py standalone $(RUN_ARGS)

test: install browser-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Refreshes docs/screenshots (what the README shows) from the browser test.
screenshots: install browser-deps
	EPHEMERA_SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots $(BIN)/python -m pytest functions_app/tests/test_browser.py -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m bench

# A seeded soak under var/chaos, on the embedded default and on a private PostgreSQL + Redis server of its own:
# HTTP traffic while workers are SIGKILLed and Redis and the database restart; prints the history check and the
# recovery time of every fault, and records them in BENCHMARKS.md (Faults). CI runs the short profile, recording
# nothing: `make chaos CHAOS_ARGS="--profile ci"`.
CHAOS_ARGS ?= --record
chaos: install
	rm -rf var/chaos
	env -u DATABASE_URL -u REDIS_URL EPHEMERA_VAR_DIR=var/chaos $(BIN)/python manage.py chaos $(CHAOS_ARGS)

install: system-deps $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-awscli.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(PYTHON) -m venv $(VENV)/awscli
	$(VENV)/awscli/bin/python -m pip install --quiet -r requirements-awscli.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# The sandbox runs handlers under the distribution's /usr/bin/python3; bubblewrap is the fallback isolation
# tool; nft holds the egress policy of network-enabled functions; curl runs the README's examples in the tests.
# Installed only where we may (root with apt); elsewhere the sandbox doctor reports what is missing.
system-deps:
	@if [ ! -x /usr/bin/python3 ] || ! command -v bwrap >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1 || { [ ! -x /usr/sbin/nft ] && ! command -v nft >/dev/null 2>&1; }; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing python3, bubblewrap, nftables and curl with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 bubblewrap nftables curl >/dev/null; \
	  else \
	    echo "NOTE: /usr/bin/python3, bubblewrap, nft or curl is missing and cannot be installed here (not root or no apt)."; \
	  fi; \
	fi

# The browser test drives the distribution's headless Chromium through Playwright (no browser download).
browser-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing chromium with apt-get (for the browser test)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "NOTE: /usr/bin/chromium is missing and cannot be installed here; the browser test will be skipped."; \
	  fi; \
	fi
