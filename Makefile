# crmops: two set-up commands on a fresh machine.
#   make demo   the nightly job on the embedded default (SQLite demo CRM, local repository)
#   make test   install everything (Debian packages, services, sandbox images) and run the tests
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
BENCH_SIZE ?= medium

.PHONY: venv test testbed testbed-down testbed-status lint demo bench clean-demo

$(BIN)/crmops: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/crmops

testbed: venv
	bash scripts/testbed.sh up

testbed-down:
	bash scripts/testbed.sh down

testbed-status:
	bash scripts/testbed.sh status

test: testbed
	$(BIN)/ruff check crmops tests
	$(BIN)/pytest -p no:cacheprovider --timeout=900 $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check crmops tests
