# Two commands: `make run` serves the chat, `make test` runs the whole suite.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
# A PostgreSQL server (no database name) whose role may create databases; each run of
# test-postgres uses a database named after its process id, so runs never share one.
POSTGRES_TEST_SERVER ?= postgres://postgres:postgres@127.0.0.1:5432

.PHONY: run serve test test-sqlite test-postgres lint format clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is needed (set PYTHON=python3.x)"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.requirements: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@touch $@

$(VENV)/.requirements-dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	@touch $@ $(VENV)/.requirements

## run: the development server (daphne's runserver, reloads on code changes)
run: $(VENV)/.requirements
	DEBUG=$${DEBUG:-true} $(BIN)/python manage.py migrate --noinput
	@echo "Starting the chat at http://$(HOST):$(PORT)/"
	DEBUG=$${DEBUG:-true} $(BIN)/python manage.py runserver $(HOST):$(PORT)

## serve: daphne without the reloader, as in production (needs SECRET_KEY and REDIS_URL)
serve: $(VENV)/.requirements
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py serve --host $(HOST) --port $(PORT)

## test: lint, then the whole suite on SQLite, then again on PostgreSQL
test: lint test-sqlite test-postgres

test-sqlite: $(VENV)/.requirements-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## test-postgres: the whole suite on PostgreSQL (skipped without a server, except in CI)
test-postgres: $(VENV)/.requirements-dev
	@if $(BIN)/python -c 'import sys, psycopg; psycopg.connect(sys.argv[1] + "/postgres", connect_timeout=3).close()' \
		'$(POSTGRES_TEST_SERVER)' 2>/dev/null; then \
		echo "DATABASE_URL=$(POSTGRES_TEST_SERVER)/chat_$$$$ pytest $(PYTEST_ARGS)"; \
		DATABASE_URL='$(POSTGRES_TEST_SERVER)'/chat_$$$$ POSTGRES_TEST_URL='$(POSTGRES_TEST_SERVER)/postgres' \
			$(BIN)/python -m pytest $(PYTEST_ARGS); \
	elif [ -n "$$CI$$CHAT_TESTS_REQUIRE_SERVICES" ]; then \
		echo "PostgreSQL is not reachable at $(POSTGRES_TEST_SERVER); CI requires it (see .ci/run)"; exit 1; \
	else \
		echo "PostgreSQL is not reachable at $(POSTGRES_TEST_SERVER): the PostgreSQL run is skipped"; \
	fi

## autobahn: the Autobahn WebSocket cases against `manage.py serve` (docs/reliability.md)
autobahn: $(VENV)/.requirements-dev
	$(BIN)/python -m tests.conformance.autobahn $(AUTOBAHN_ARGS)

## fuzz: the consumer's fuzz tests with many more examples (docs/reliability.md)
fuzz: $(VENV)/.requirements-dev
	CHAT_FUZZ_EXAMPLES=$${CHAT_FUZZ_EXAMPLES:-5000} $(BIN)/python -m pytest tests/fuzz -s -p no:cacheprovider

## soak: bench/soak.py, 300 clients chatting for 10 minutes (docs/reliability.md; SOAK_ARGS="--minutes 1")
soak: $(VENV)/.requirements-dev
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

.PHONY: autobahn fuzz soak

lint: $(VENV)/.requirements-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

format: $(VENV)/.requirements-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) staticfiles .pytest_cache .ruff_cache test-db.sqlite3*
