# Two entry points on a fresh machine: `make demo` (the main job on the embedded model) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cachekit run

# In a new random order each time (pytest-randomly, in the dev extra), so that no test depends on
# another's leftovers. pytest prints the seed: rerun one order with
# `pytest --randomly-seed=N`, or keep file order with `pytest -p no:randomly`.
test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) build dist *.egg-info cachekit-run cachekit-bench
