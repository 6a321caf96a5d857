# mindpipe. The README's two commands: `make run` (the whole DAG on the twin) and `make test`.
# Both create .venv from requirements/lock.txt on first use and reuse it afterwards.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test test-fast lint compile lock

setup: $(STAMP)

$(STAMP): requirements/lock.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements/lock.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

run: setup  ## the main job: twin -> every stage (dvc repro) -> metrics, MLflow
	$(BIN)/mindpipe run

test: setup lint  ## the whole suite, end-to-end runs included
	MINDPIPE_PROGRESS=0 $(BIN)/pytest

test-fast: setup  ## skip the end-to-end (slow) tests
	MINDPIPE_PROGRESS=0 $(BIN)/pytest -m "not slow"

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

compile: setup  ## regenerate dvc.yaml, components/ and pipelines/ from the stage registry
	$(BIN)/mindpipe compile
	$(BIN)/mindpipe kfp compile

lock: setup  ## re-resolve requirements/stack.in into requirements/lock.txt
	$(BIN)/pip install --quiet -r requirements/stack.in
	$(BIN)/pip freeze --exclude-editable > requirements/lock.txt
