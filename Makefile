# threshold-fl: `make demo` runs the demo, `make test` runs the tests.
# Both first run scripts/setup_env.sh, which finds Python 3.10, creates .venv and installs
# the project there (first run: about 2 minutes; afterwards about a second).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
export VENV

# Debian installs mosquitto in /usr/sbin, which is not on every user's PATH.
export PATH := $(PATH):/usr/local/sbin:/usr/sbin:/sbin

# Extra arguments for pytest, e.g. make test PYTEST_ARGS="-k layering -x"
PYTEST_ARGS ?=
# Extra arguments for the demo, e.g. make demo DEMO_ARGS="--model mlp --rounds 2"
# (threshold-fl demo --help lists them)
DEMO_ARGS ?=
LINT_PATHS := threshold_fl protocols transports $(wildcard examples/*.py)

.PHONY: help setup demo test lint bench clean distclean

help:
	@echo "make demo       a federation as separate processes over MQTT (threshold-fl demo)"
	@echo "make test       run the test suite"
	@echo "make lint       ruff + mypy (strict)"
	@echo "make bench      every benchmark suite into bench-results/ (threshold-fl bench all)"
	@echo "make clean      remove caches and build outputs (keeps .venv)"
	@echo "make distclean  clean, and remove .venv too"
	@echo "Python 3.10 is found automatically; override with PYTHON=/path/to/python3.10"

setup:
	@bash scripts/setup_env.sh

demo: setup
	$(PY) -m threshold_fl.app.cli demo $(DEMO_ARGS)

# pytest exit status 5 means "no tests collected": a failure for us, not a pass.
test: setup
	@rc=0; $(PY) -m pytest -q --durations=10 $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: FAILED: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$rc

lint: setup
	$(PY) -m ruff check $(LINT_PATHS) tests
	$(PY) -m mypy $(LINT_PATHS)

# Extra arguments, e.g. make bench BENCH_ARGS="--only peers threshold" or "--large"
BENCH_ARGS ?=
# One OpenMP thread: per-role compute, comparable with TenSEAL's single thread (and
# no oversubscription when roles run side by side). Override: make bench OMP_NUM_THREADS=2
OMP_NUM_THREADS ?= 1
bench: setup
	OMP_NUM_THREADS=$(OMP_NUM_THREADS) $(PY) -m threshold_fl.app.cli bench all $(BENCH_ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache bench-results demo-report
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
