# The two commands of the README: `make study` runs the study, `make test` runs the test suite.
# Both create the environment (.venv, Python 3.11, pinned by pyproject.toml) first if needed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# DVC stages call `python` and `papermill`: the environment's, whoever runs make.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: env study test lint bench clean-env

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

study: env
	$(BIN)/dvc repro

lint: env
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest --nbval-lax tests notebooks

bench: env
	$(BIN)/python benchmarks/train_step.py

clean-env:
	rm -rf $(VENV)
