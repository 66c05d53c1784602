# The README's two commands: `make demo` (main job on the embedded local services) and `make test`
# (lint: ruff and the import contracts of pyproject.toml, then the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.flead-installed

.PHONY: install demo test lint lock down

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "FLEAD needs Python 3.11 or newer; found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

demo: install
	$(BIN)/flead demo

test: install lint
	@# The dashboard test drives Debian's headless Chromium through selenium.
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium chromium-driver)
	@# The production rehearsal runs Dagster on a throwaway cluster of Debian's PostgreSQL.
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update && apt-get install -y postgresql)
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

down: install
	$(BIN)/flead services stop
	$(BIN)/flead local down

# Refresh the lock after changing dependencies in pyproject.toml.
lock: install
	$(BIN)/python -m pip freeze --exclude-editable --disable-pip-version-check | grep -v '^-e ' > constraints.txt
