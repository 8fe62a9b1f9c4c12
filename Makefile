# Closed Loop. `make run` and `make test` are all the set-up a fresh machine needs.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# A second gRPC implementation (grpc-js) for the interop tests.
NODE_DEPS := tests/interop/node_modules/.installed

.PHONY: install protos run test drills bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(NODE_DEPS): tests/interop/package-lock.json
	cd tests/interop && npm ci --no-audit --no-fund --silent
	touch $(NODE_DEPS)

protos: $(STAMP)
	$(BIN)/python protos/generate.py

run: $(STAMP)
	$(BIN)/python -m services

test: $(STAMP) $(NODE_DEPS)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m tests.bench

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var test-artifacts .pytest_cache .mypy_cache .ruff_cache tests/interop/node_modules
