# `make demo` and `make test` work on a fresh clone: they create .venv from the lock first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup demo test lint typecheck pytest bench rehearsal lock clean

setup: $(STAMP)

# requirements-audio.txt goes in with --no-deps: tinysoundfont declares pyaudio, which has no
# Linux wheel and which rendering a WAV never imports, so it must not be built.
$(STAMP): requirements.lock requirements-audio.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-audio.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

demo: setup
	@git rev-parse --git-dir >/dev/null 2>&1 || { git init -q && git add -A && git -c user.name=lakhflow -c user.email=lakhflow@localhost commit -qm "lakhflow demo"; }
	time dvc repro
	@lakhflow summary

lint: setup
	ruff check pipelines flows tests benchmarks
	ruff format --check pipelines flows tests benchmarks

typecheck: setup
	mypy pipelines flows

pytest: setup
	pytest

test: lint typecheck pytest

bench: setup
	for b in benchmarks/*.py; do python $$b || exit 1; done

# The whole chain on a Lakh-shaped archive of 20,000 files and of 10,000, projected to lmd_full's
# 178,561 (benchmarks/lakh_scale.py; about an hour on 2 cores). Other sizes or a subset:
# make rehearsal REHEARSAL="--files 2000 --stages parse,sequences"; a smoke test: REHEARSAL=--quick
REHEARSAL ?=
rehearsal: setup
	python benchmarks/lakh_scale.py --run $(REHEARSAL)

lock: setup
	{ echo "# Full pin set for a reproducible install (pip freeze of a working environment, Python 3.11)."; \
	  echo "# Regenerate with: make lock"; \
	  $(BIN)/python -m pip freeze --exclude-editable --exclude tinysoundfont; } > requirements.lock

clean:
	rm -rf $(VENV) .lakhflow
