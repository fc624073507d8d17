# Two commands matter: `make start` and `make test`. Both install what is missing first (idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
NPM_STAMP := node_modules/.installed-$(shell cat package.json package-lock.json 2>/dev/null | sha256sum | cut -c1-16)
DEV_HOME ?= $(CURDIR)/.dev/home
PYTEST_ARGS ?=

.PHONY: install start test lint-imports clean-dev help
.DEFAULT_GOAL := help

help:
	@echo "make start   install what is missing, then start the devnet and one node on embedded defaults"
	@echo "make test    install what is missing, then run the whole test suite"

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

# torch first and exactly pinned, so that no later resolution can pull a CUDA build on a CPU machine.
$(STAMP): pyproject.toml | $(VENV)/bin/activate
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $@

$(NPM_STAMP): package.json
	npm install --no-audit --no-fund --loglevel=error
	rm -f node_modules/.installed-* && touch $@

install: $(STAMP) $(NPM_STAMP)

# The dev node's keystore password is generated once into .dev/password (mode 600, git-ignored).
start: install
	@mkdir -p .dev && if [ ! -s .dev/password ]; then (umask 077 && head -c 24 /dev/urandom | base64 > .dev/password); fi
	$(VENV)/bin/openlora-node --home "$(DEV_HOME)" init --password-file .dev/password
	$(VENV)/bin/openlora-node --home "$(DEV_HOME)" devnet up
	trap '$(VENV)/bin/openlora-node --home "$(DEV_HOME)" devnet down' EXIT; \
	  $(VENV)/bin/openlora-node --home "$(DEV_HOME)" start --password-file .dev/password

lint-imports: install
	$(VENV)/bin/lint-imports

test: install
	$(VENV)/bin/lint-imports
	bash scripts/run-tests.sh $(PYTEST_ARGS)

clean-dev:
	rm -rf .dev
