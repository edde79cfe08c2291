# The harness's two everyday commands: `make bench` (set up, then run the main job) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
SUITE ?= suites/table1.yaml
ARGS ?=

.PHONY: setup bench test report clean

setup: $(VENV)/.installed

# torch first: `pip install torch==2.13.0` takes the CPU wheel where one lies on disk; then the package.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel setuptools
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

bench: setup
	$(VENV)/bin/harness run $(SUITE) $(ARGS)

test: setup
	$(VENV)/bin/pytest -q $(ARGS)

report: setup
	$(VENV)/bin/harness report --format html $(ARGS)

clean:
	rm -rf results/runs results/*.db results/*.db-wal results/*.db-shm reports/*.html .pytest_cache
