# Shortcuts for the project scripts; each target is a thin wrapper.
#   make dev ARGS="--help"   make test   make bench   make chaos   make fmt   make lint   make tools

ARGS ?=

.PHONY: dev test bench chaos fmt lint tools

dev:
	bash scripts/dev.sh $(ARGS)

test:
	bash scripts/test.sh $(ARGS)

bench:
	bash bench/run.sh $(ARGS)

chaos:
	bash scripts/chaos.sh

fmt:
	cargo fmt

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

tools:
	bash scripts/tools.sh
