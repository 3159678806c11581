# Both quick-start targets create or refresh the virtual environment themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SPACE ?= quickstart.yaml

.PHONY: venv sweep test lint bench clean

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $@

venv: $(VENV)/.stamp

sweep: venv
	$(PY) jobs/sweep.py --space $(SPACE)

lint: venv
	$(PY) -m ruff check .

test: venv lint
	$(PY) -m pytest -q tests

bench: venv
	$(PY) -m pip install -e '.[dev,bench]'
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs data/synth
