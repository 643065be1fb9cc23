# Targets assume scripts/setup.sh has run (the README's commands do that for you).
PY := .venv/bin/python

.PHONY: install test check lint bench bench-quick bench-parity bench-wal

install:
	scripts/setup.sh

## check: what CI runs: lint, then the whole test suite
check: lint
	$(PY) -m pytest

test: install
	$(MAKE) -s check

lint:
	$(PY) -m ruff check fusenas tests scripts
	$(PY) -m ruff format --check fusenas tests scripts
	$(PY) -m mypy
	.venv/bin/lint-imports --no-cache

bench-parity:
	$(PY) scripts/bench_parity.py

bench-wal:
	$(PY) scripts/bench_wal.py

## bench: fusenas (RAID0/1/5/6) vs the raw directory vs a Python passthrough (fio); writes
## docs/benchmarks.md. Takes ~15 minutes; bench-quick is a ~2-minute smoke run. Not part of CI.
bench:
	$(PY) scripts/bench.py $(BENCH_ARGS)

bench-quick:
	$(PY) scripts/bench.py --quick $(BENCH_ARGS)
