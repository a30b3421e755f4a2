# The README's commands. Only Python 3.11+ and make are needed: `make dev`, `make test` and
# `make bench` start embedded Postgres and Redis when DATABASE_URL / CELERY_BROKER_URL are unset.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Extra arguments, e.g. `make dev DEV_ARGS="--flower-port 5556"`, `make test PYTEST_ARGS="-m 'not slow'"`,
# `make bench BENCH_ARGS=--write-results` (a full run that rewrites the committed bench/RESULTS.md).
DEV_ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: dev test lint bench

dev: $(VENV)/.installed-embedded
	$(BIN)/webhooks dev $(DEV_ARGS)

test: $(VENV)/.installed-test
	$(BIN)/pytest $(PYTEST_ARGS)

# The code only: ruff would also reformat the Python examples inside README.md.
LINTED := webhooks workers schema tests bench

lint: $(VENV)/.installed-test
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

bench: $(VENV)/.installed-test
	@if [ -f bench/__main__.py ]; then $(BIN)/python -m bench $(BENCH_ARGS); else echo "no benchmarks yet"; fi

# The venv is created once; the project is (re)installed only when pyproject.toml is newer
# than the stamp of that install, so `make test` stays fast when nothing changed.
$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "error: $(PYTHON) is older than Python 3.11; run: make PYTHON=python3.11 ..." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-embedded: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded]'
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@
