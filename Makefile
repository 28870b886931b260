# The two commands of the README: `make study` runs the study, `make test` runs the test suite.
# Both create the environment (.venv, Python 3.11, pinned by pyproject.toml) first if needed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# DVC stages call `python` and `papermill`: the environment's, whoever runs make.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: env study report study-full test lint bench bench-runner clean-env

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# jsonschema's optional format checker (pulled in by jupyter-events) spends 1.4 s of every papermill import
	# importing rfc3987_syntax; nothing here validates IRI formats, so it goes (pip check stays clean).
	$(BIN)/python -m pip uninstall --quiet --yes rfc3987-syntax
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# `dvc repro` alone would train one run at a time. repro.study runs the stale training stages on a Dask cluster
# (cluster.yaml; by default one worker process per core, one thread each, so the cores are used without
# being oversubscribed; JOBS=N for N workers), records each in dvc.lock as it finishes, then runs `dvc repro` for
# the rest (complexity, aggregate), which finds every run up to date.
# ARGS passes options to it: ARGS=--dry-run lists what would train (new runs, runs replacing committed ones) and for
# how long, and trains nothing; ARGS="--datasets ph2-dermoscopy --models unet,unetpp --seeds 0" (or
# --stages 'train@ph2-*') trains only the stale runs matching every filter, leaving the aggregate to `make report`;
# a start of more than 10 runs or 2 hours asks first, and without a terminal needs ARGS=--yes.
JOBS ?=
ARGS ?=

study: env
	$(BIN)/python -m repro.study $(if $(JOBS),--workers $(JOBS)) $(ARGS)

# The aggregate and the report from the runs that exist (dvc repro --single-item aggregate report): never trains,
# even where training runs are stale.
report: env
	$(BIN)/python -m repro.study --report-only

# Every variant on every 2D dataset at the papers' scale: meant for a GPU machine.
study-full: env
	$(BIN)/dvc exp run -S scale=paper $$($(BIN)/python scripts/grid_overrides.py full)

lint: env
	$(BIN)/ruff check .

# nbval: the source notebooks at their stored (smoke-scale) defaults, and the executed aggregate notebook of the
# study at params.yaml's scale over its committed results, whose tables it checks (a change that alters a number
# or a verdict fails), once the study has been run at this version: until then there is none. The archived
# first version (results/v1) is not re-executed.
SCALE := $(shell awk '/^scale:/ {print $$2}' params.yaml)
NOTEBOOKS := notebooks/datasets.ipynb notebooks/train.ipynb notebooks/train_universal.ipynb notebooks/complexity.ipynb \
	notebooks/nnunet.ipynb \
	$(wildcard results/$(SCALE)/aggregate.ipynb)

# nbval also runs the training notebook on volumes: the 3D U-Net on MSD Hippocampus at the smoke scale, through
# the same notebook with those parameters injected by papermill (--prepare-only executes nothing).
VOLUME_NOTEBOOK := checkpoints/nbval/train-msd-task04-hippocampus-unet3d.ipynb

$(VOLUME_NOTEBOOK): notebooks/train.ipynb | env
	mkdir -p $(@D)
	$(BIN)/papermill --prepare-only --no-progress-bar notebooks/train.ipynb $@ \
		-p dataset msd-task04-hippocampus -p model unet3d -p scale smoke

test: lint $(VOLUME_NOTEBOOK)
	$(BIN)/python -m pytest --nbval-lax tests $(NOTEBOOKS) $(VOLUME_NOTEBOOK)

bench: env
	$(BIN)/python benchmarks/train_step.py

# The study runner's own cost: per-run overhead against the bare stage command, 1 vs 2 local workers, and the CPU
# its local cluster takes from the runs while it waits on them.
bench-runner: env
	$(BIN)/python benchmarks/study_runner.py
	$(BIN)/python benchmarks/runner_idle_cpu.py

clean-env:
	rm -rf $(VENV)
