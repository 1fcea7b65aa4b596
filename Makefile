# Causeway — the two commands of the README:
#   make demo   sets everything up and runs the main job (a recorded sample workload)
#   make test   sets everything up and runs every test (cargo test + mix test)
SHELL := /bin/bash
export LANG := C.UTF-8
export LC_ALL := C.UTF-8
export PATH := $(HOME)/.cargo/bin:$(PATH)
# One cargo target directory per machine, outside the clone: RocksDB is compiled
# once (~14 min on 2 cores) and reused by every clone, the NIF build and the tests.
export CAUSEWAY_TARGET_DIR ?= $(HOME)/.cache/causeway/target
export CARGO_TARGET_DIR := $(CAUSEWAY_TARGET_DIR)

.PHONY: setup demo test test-rust test-elixir bench lint fmt

setup:
	@scripts/setup.sh

demo: setup
	mix compile
	mix causeway.demo

test: setup test-rust test-elixir

test-rust:
	cargo test --release --workspace

test-elixir:
	MIX_ENV=test mix test

bench: setup
	cargo bench -p causeway_core
	MIX_ENV=prod mix bench

lint: setup
	cargo fmt --all -- --check
	cargo clippy --release --workspace --all-targets -- -D warnings
	mix format --check-formatted
	MIX_ENV=test mix compile --warnings-as-errors --force

fmt:
	cargo fmt --all
	mix format
