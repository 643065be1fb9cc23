# Targets assume scripts/setup.sh has run (the README's commands do that for you).
PY := .venv/bin/python

.PHONY: install test check lint bench bench-parity bench-wal

install:
	scripts/setup.sh

## check: what CI runs: lint, then the whole test suite
check: lint
	$(PY) -m pytest

test: install
	$(MAKE) -s check

lint:
	$(PY) -m ruff check fusenas tests scripts
	$(PY) -m mypy

bench-parity:
	$(PY) scripts/bench_parity.py

bench-wal:
	$(PY) scripts/bench_wal.py

bench: bench-parity bench-wal
