# Two commands from a fresh clone: `make demo` and `make test`. Both do their own set-up.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint mutate bench clean

# setup.sh is idempotent: it checks Java and WordNet, and reinstalls only when
# pyproject.toml or the script changed since the last install.
setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/curate demo --config configs/demo.yaml --output runs/demo

test: setup
	$(VENV)/bin/ruff check pipeline jobs schemas tests bench
	$(PY) -m pytest -q --durations=25

# Small deliberate bugs in the kernels, each run against the tests that cover its module
# (bench/mutate.py; about 20 minutes on two cores, so not part of `make test`).
mutate: setup
	$(PY) bench/mutate.py

lint: setup
	$(VENV)/bin/ruff check pipeline jobs schemas tests bench

clean:
	rm -rf runs spark-warehouse metastore_db .pytest_cache
