# Every target installs from the checked-in lock (requirements.lock), never from a fresh resolve.
# `make lock` is the only target that resolves, and it rewrites the lock.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
LOCK := requirements.lock
SPACE ?= quickstart.yaml

.PHONY: venv sweep test lint bench doctor lock clean

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# --compile-bytecode: every Ray worker process imports torch, Ray and pandas; without .pyc files
# (uv writes none by default, and PYTHONDONTWRITEBYTECODE=1 machines never cache them) each
# import recompiles them: ~10 s of CPU per process instead of ~2, minutes per test suite or sweep.
UV_COMPILE ?= --compile-bytecode

$(VENV)/.stamp: pyproject.toml $(LOCK) | $(UV)
	$(UV) pip install --python $(PY) $(UV_COMPILE) --require-hashes -r $(LOCK)
	$(UV) pip install --python $(PY) --no-deps --no-build-isolation -e .
	$(PY) -m compileall -q platform
	touch $@

venv: $(VENV)/.stamp

doctor: venv
	$(PY) -m speakertune doctor

# the cheap checks first: a broken environment ends in one FAIL line, not a worker traceback
sweep: venv
	$(PY) -m speakertune doctor --quick
	$(PY) jobs/sweep.py --space $(SPACE)

lint: venv
	$(PY) -m ruff check .

# Tests that start a Ray cluster of their own (3 nodes; Ray's autoscaler; `ray up` over SSH) must
# each be the only Ray on the machine (with the suite's local Ray beside it, Ray Train's helpers
# find two clusters): each in its own pytest process, after the suite.
CLUSTER_TESTS := tests/test_multinode.py tests/test_autoscaling.py tests/test_ray_up.py
test: venv lint
	$(PY) -m pytest -q tests $(addprefix --ignore=,$(CLUSTER_TESTS))
	$(PY) -m pytest -q tests/test_multinode.py
	$(PY) -m pytest -q tests/test_autoscaling.py
	$(PY) -m pytest -q tests/test_ray_up.py

bench: venv
	$(PY) benchmarks/run_all.py

lock: | $(UV)
	$(UV) pip compile pyproject.toml --all-extras --universal --generate-hashes \
		--python-version 3.10 --quiet -o $(LOCK)

clean:
	rm -rf $(VENV) data/synth  # never runs/: every sweep's results and best/ live there
