# Two commands: `make run` serves the chat, `make test` runs the whole suite.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: run serve test lint format clean

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

## test: lint, then the whole suite
test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## autobahn: the Autobahn WebSocket cases against `manage.py serve` (docs/reliability.md)
autobahn: $(VENV)/.requirements-dev
	$(BIN)/python -m tests.conformance.autobahn $(AUTOBAHN_ARGS)

## fuzz: the consumer's fuzz tests with many more examples (docs/reliability.md)
fuzz: $(VENV)/.requirements-dev
	CHAT_FUZZ_EXAMPLES=$${CHAT_FUZZ_EXAMPLES:-5000} $(BIN)/python -m pytest tests/fuzz -s -p no:cacheprovider

.PHONY: autobahn fuzz

lint: $(VENV)/.requirements-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

format: $(VENV)/.requirements-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) staticfiles .pytest_cache .ruff_cache test-db.sqlite3*
