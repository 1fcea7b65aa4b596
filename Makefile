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

.PHONY: setup demo test test-rust test-elixir bench lint fmt fuzz

# Fuzzing the decoders of bytes from disk or another VM (not part of `make
# test`): seeds from a real store, then each target for FUZZ_SECONDS. Needs
# the nightly toolchain and cargo-fuzz (installed here if missing); the
# first run builds RocksDB once more, instrumented, in $(CAUSEWAY_TARGET_DIR)/fuzz.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= postings pairs etf_terms stored_event meta_records

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

fuzz: setup
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
	CAUSEWAY_FUZZ_CORPUS=$(CURDIR)/fuzz/corpus cargo test --release -p causeway_core fuzz_corpus -- --ignored
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  mkdir -p corpus/$$t artifacts/$$t && \
	  cargo +nightly fuzz run --target-dir $(CAUSEWAY_TARGET_DIR)/fuzz $$t corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=5 -malloc_limit_mb=64 -rss_limit_mb=2048 \
	    -artifact_prefix=artifacts/$$t/ -print_final_stats=1 || exit 1; \
	done
