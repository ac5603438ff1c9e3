# Everything a fresh machine needs: Python >= 3.11 and network access to the package registry.
# `make repro` and `make test` bootstrap the environment themselves from the committed uv.lock
# (with the `bot` extra: the Telegram bot and its tests), and fetch the pinned npm files: CLDR's Russian
# emoji names for the catalogue, and the chart libraries for `dvc plots show` (into .venv/share/emojich/).

PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
STAMP := $(VENV)/.synced
# Inside the environment: DVC's queued experiments run in temporary copies of the repository that
# share .venv but not other git-ignored folders.
THIRD_PARTY := $(VENV)/share/emojich
NPM_PINS := emojich/data/cldr_packages.json plots/vega_packages.json
PLOTS_TEMPLATE := $(THIRD_PARTY)/plots.html

export DVC_NO_ANALYTICS := 1
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
# Stage commands in dvc.yaml call `python`: it must be the project environment's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup npm-files repro test lint dag bot clean-env

setup: $(STAMP) npm-files

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(STAMP): uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --extra bot --python $(PYTHON)
	@touch $@

# Pinned tarballs from the npm registry, checked against the pins' integrity (tools/npm_fetch.py), and
# the `dvc plots show` template (.dvc/config: plots.html_template) with the chart libraries inlined.
# Run on every `make setup`: both steps are quick no-ops when nothing changed, and a changed pin is
# always seen.
npm-files: $(STAMP)
	@$(VENV)/bin/python tools/npm_fetch.py --into $(THIRD_PARTY)/npm $(NPM_PINS)
	@$(VENV)/bin/python tools/inline_scripts.py plots/template.html $(THIRD_PARTY)/npm $(PLOTS_TEMPLATE)

repro: setup
	$(VENV)/bin/dvc repro

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

dag: setup
	$(VENV)/bin/dvc dag

# The Telegram bot (README, "Telegram bot"); needs the pipeline's outputs and a token file.
BOT_TOKEN_FILE ?= $(HOME)/.config/emojich/bot-token
bot: setup
	$(VENV)/bin/emojich bot --token-file $(BOT_TOKEN_FILE)

clean-env:
	rm -rf $(TOOLS) $(VENV)

# --- Prefect: scheduled runs on this machine (see README, "Scheduled runs with Prefect") -------------
PREFECT_API_URL ?= http://127.0.0.1:4200/api
PREFECT_POOL ?= emojich

.PHONY: prefect-server deploy worker run-pipeline

prefect-server: setup
	$(VENV)/bin/prefect server start --host 127.0.0.1 --port 4200

deploy: setup
	PREFECT_API_URL=$(PREFECT_API_URL) $(VENV)/bin/prefect work-pool inspect $(PREFECT_POOL) >/dev/null 2>&1 \
	  || PREFECT_API_URL=$(PREFECT_API_URL) $(VENV)/bin/prefect work-pool create $(PREFECT_POOL) --type process
	PREFECT_API_URL=$(PREFECT_API_URL) $(VENV)/bin/prefect deploy --all

worker: setup
	EMOJICH_REPO=$(CURDIR) PREFECT_API_URL=$(PREFECT_API_URL) $(VENV)/bin/prefect worker start --pool $(PREFECT_POOL)

run-pipeline: setup
	PREFECT_API_URL=$(PREFECT_API_URL) $(VENV)/bin/prefect deployment run emojich-pipeline/repro --watch
