# The README's commands. Each does its own set-up, idempotently; a second run is fast.
.DEFAULT_GOAL := help
PY := .venv/bin/python
# The interpreter the virtual environments are made with (setup_venvs.sh reads it too).
PYTHON ?= python3

.PHONY: help setup test check lint format run bench lock clean

help:
	@echo "make run     bring up the local stack (redis, edge node, cloud node, gateway)"
	@echo "             options: ARGS=\"--ports gateway=9080 --no-cloud\" (python -m scripts.stack -h)"
	@echo "make test    lint, type-check and run the test suite (sets everything up first)"
	@echo "make check   lint and type-check only"
	@echo "make bench   run the benchmarks in bench/"
	@echo "make lock    re-resolve locks/*.txt, the exact versions setup installs"
	@echo "             (UPGRADE='pkg ...' moves only those packages); review the diff, make test"

setup:
	@scripts/setup_venvs.sh gateway vllm redis compose

check: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: check
	$(PY) -m pytest

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# ARGS passes options on: make run ARGS="--ports gateway=9080 --no-cloud". exec makes the stack
# make's own child, which make sends SIGTERM; --stop-with-parent covers SIGINT, which make
# does not pass on (it waits for the recipe instead).
run: setup
	exec $(PY) -m scripts.stack --stop-with-parent $(ARGS)

bench: setup
	$(PY) bench/overhead.py

# Needs only $(PYTHON) and the package indexes; resolves in a throwaway venv, writes on success.
lock:
	$(PYTHON) -m scripts.lock $(if $(UPGRADE),--upgrade-package $(UPGRADE))

clean:
	rm -rf .venv .venv-vllm .pytest_cache .mypy_cache .ruff_cache .run
