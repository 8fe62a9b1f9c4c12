# Closed Loop. `make run` and `make test` are all the set-up a fresh machine needs.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# A second gRPC implementation (grpc-js) for the interop tests.
NODE_DEPS := tests/interop/node_modules/.installed
# buf, which lints the contracts and guards them against breaking changes.
TOOLS := tools/node_modules/.installed
BUF   := tools/node_modules/.bin/buf
# axe-core, the accessibility engine the console's browser tests inject.
A11Y_DEPS := tests/e2e/a11y/node_modules/.installed
# openapi-typescript and tsc, for the typed TypeScript client in clients/typescript.
TS_CLIENT := clients/typescript/node_modules/.installed

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

$(TOOLS): tools/package-lock.json
	cd tools && npm ci --no-audit --no-fund --silent
	touch $(TOOLS)

$(A11Y_DEPS): tests/e2e/a11y/package-lock.json
	cd tests/e2e/a11y && npm ci --no-audit --no-fund --silent
	touch $(A11Y_DEPS)

$(TS_CLIENT): clients/typescript/package-lock.json
	cd clients/typescript && npm ci --no-audit --no-fund --silent
	touch $(TS_CLIENT)

protos: $(STAMP)
	$(BIN)/python protos/generate.py

run: $(STAMP)
	$(BIN)/python -m services

test: $(STAMP) $(NODE_DEPS) $(TOOLS) $(A11Y_DEPS) $(TS_CLIENT)
	$(BIN)/python -m pytest

# The failure drills alone (also part of `make test`); each prints its figures.
drills: $(STAMP)
	$(BIN)/python -m pytest tests/drills -s

bench: $(STAMP)
	$(BIN)/python -m tests.bench

lint: $(STAMP) $(TOOLS)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BUF) lint

clean:
	rm -rf $(VENV) var test-artifacts .pytest_cache .mypy_cache .ruff_cache tests/interop/node_modules \
		tools/node_modules tests/e2e/a11y/node_modules clients/typescript/node_modules \
		clients/python/build
