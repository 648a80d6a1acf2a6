# The README's two commands are `make run` and `make test`; both set up first.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# The CPU build on this machine; GPU users: make setup TORCH_SPEC="torch==2.13.0 --index-url ..."
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup run test test-unit bench bench-learning lint format clean
# The learning benches train for many minutes each: `make bench-learning` runs them.
LONG_BENCHES := bench/learning.py bench/ablation.py bench/dataset_cache.py

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

run: setup
	$(VENV)/bin/sdpose pipeline

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

bench: setup
	for script in $(filter-out $(LONG_BENCHES),$(wildcard bench/*.py)); do \
		echo "== $$script"; $(PY) $$script || exit 1; done

bench-learning: setup
	$(PY) bench/learning.py
	$(PY) bench/ablation.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf data/raw data/prepared data/crops models metrics reports .prefect mlruns.db mlartifacts
