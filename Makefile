# matomete — the two set-up commands (see README.md).
#   make demo   an end-to-end run on the embedded default (SQLite, in-process broker); no servers
#   make test   the whole suite; starts this machine's PostgreSQL and Redis if they are down
# Both build ./.venv with Python 3.11+ on first use.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/python -m pip --quiet --disable-pip-version-check
PYTEST_ARGS ?=

# `make demo` installs a plain copy of the package, `make test` an editable one with the test
# extras. Each stamp says which install .venv holds; installing one removes the other's stamp.
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test
PACKAGE_FILES := pyproject.toml README.md $(shell find src workers -type f -name '*.py' 2>/dev/null)

.PHONY: demo test

demo: $(DEMO_STAMP)
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	cd "$$tmp"; \
	MATOMETE_DATABASE_URL="sqlite:///$$tmp/demo.db" \
	MATOMETE_EXPORT_DIR="$$tmp/exports" \
	MATOMETE_KEY_FILE="$$tmp/matomete.key" \
	MATOMETE_SECRET_KEY= \
	"$(CURDIR)/$(VENV)/bin/matomete" demo

test: $(TEST_STAMP)
	bash ops/ensure-services.sh
	$(VENV)/bin/pytest $(PYTEST_ARGS)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(DEMO_STAMP): $(PACKAGE_FILES) | $(VENV)/bin/python
	rm -f $(TEST_STAMP)
	$(PIP) install .
	touch $@

$(TEST_STAMP): pyproject.toml | $(VENV)/bin/python
	rm -f $(DEMO_STAMP)
	$(PIP) install -e '.[test]'
	touch $@
