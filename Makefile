# The README's commands. Each does its own set-up, idempotently; a second run is fast.
.DEFAULT_GOAL := help
PY := .venv/bin/python

.PHONY: help setup test check lint format run bench clean

help:
	@echo "make run     bring up the local stack (redis, edge node, cloud node, gateway)"
	@echo "make test    lint, type-check and run the test suite (sets everything up first)"
	@echo "make check   lint and type-check only"
	@echo "make bench   run the benchmarks in bench/"

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

run: setup
	$(PY) -m scripts.stack

bench: setup
	$(PY) bench/overhead.py

clean:
	rm -rf .venv .venv-vllm .pytest_cache .mypy_cache .ruff_cache .run
