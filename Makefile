# Two commands from a fresh clone: `make demo` and `make test`. Both do their own set-up.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench clean

# setup.sh is idempotent: it checks Java and WordNet, and reinstalls only when
# pyproject.toml or the script changed since the last install.
setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/curate demo --config configs/demo.yaml --output runs/demo

test: setup
	$(VENV)/bin/ruff check pipeline jobs schemas tests bench
	$(PY) -m pytest -q --durations=25

lint: setup
	$(VENV)/bin/ruff check pipeline jobs schemas tests bench

clean:
	rm -rf runs spark-warehouse metastore_db .pytest_cache
