# statekit — one entry point. `make run` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BUILT := $(VENV)/.statekit-built
RUST_SOURCES := $(shell find rust -name '*.rs') Cargo.toml Cargo.lock
PY_META := pyproject.toml
STREAM_ARGS ?=

.PHONY: help install build run test test-installed bench lint format clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "maturin>=1.9.4,<2"

# Release build of the Rust extension, installed in editable mode with every extra we use.
$(BUILT): $(PY) $(RUST_SOURCES) $(PY_META)
	$(VENV)/bin/maturin develop --release --quiet -E test,bench,dev,redis,s3,postgres,metrics
	@touch $@

install: $(BUILT) ## create .venv and build the extension (release)

build: $(BUILT) ## same as install

run: $(BUILT) ## the stream job on SQLite: crash midway, resume, verify
	rm -rf .statekit/stream-demo
	@echo "--- run 1: killed hard after 400,000 events (exit code 70 is the simulated crash) ---"
	$(PY) -m demo.stream_job --state-dir .statekit/stream-demo --crash-after 400000 $(STREAM_ARGS) \
		|| [ $$? -eq 70 ]
	@echo "--- run 2: restore the newest checkpoint, resume, verify ---"
	$(PY) -m demo.stream_job --state-dir .statekit/stream-demo $(STREAM_ARGS)

test: $(BUILT) ## the whole test suite (Rust unit tests + pytest)
	cargo test --quiet
	$(PY) -m pytest

bench: $(BUILT) ## benchmarks side by side with the peers; prints ratios
	$(PY) -m pytest benches --benchmark-only --benchmark-json=.bench.json -q -p no:randomly
	$(PY) benches/report.py .bench.json

lint: $(BUILT) ## ruff, mypy --strict, stubtest, rustfmt, clippy
	$(VENV)/bin/ruff check python tests benches examples demo
	$(VENV)/bin/ruff format --check python tests benches examples demo
	$(VENV)/bin/mypy --strict python/statekit
	$(PY) -m mypy.stubtest statekit._native
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

format: $(BUILT) ## apply ruff format and rustfmt
	$(VENV)/bin/ruff format python tests benches examples demo
	$(VENV)/bin/ruff check --fix python tests benches examples demo
	cargo fmt

clean: ## remove build outputs and local state
	rm -rf $(VENV) target dist .statekit .bench.json .pytest_cache .mypy_cache .hypothesis
