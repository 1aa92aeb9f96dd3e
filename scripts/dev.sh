#!/usr/bin/env bash
# Runs Millrace locally, from nothing: installs the programs it needs (once, into
# ${MILLRACE_TOOLS_DIR:-$HOME/.cache/millrace; /var/cache/millrace as root}), builds the release binary, then runs
# `millrace dev`, which starts its own nats-server and PostgreSQL under a data directory and
# prints the URL, workspace, token and a curl example. Arguments go to `millrace dev`.
#
#   scripts/dev.sh [ARGS...]      # e.g. scripts/dev.sh --help
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    cat >&2 <<'MSG'
dev.sh: cargo not found. Install the Rust toolchain with rustup (https://rustup.rs):
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh
then open a new shell (or run: . "$HOME/.cargo/env") and rerun scripts/dev.sh.
MSG
    exit 1
fi

# nats-server, PostgreSQL, the worker's Python, bun and deno (bun and deno take ~3 s to install).
# s3s-fs and the test-client venv are for the test suite only.
MILLRACE_TOOLS_COMPONENTS="nats postgres python js" . scripts/tools.sh
export NATS_SERVER_BIN PG_BIN_DIR WORKER_PYTHON WORKER_BUN WORKER_DENO

echo "dev.sh: cargo build --release" >&2
cargo build --release
exec "${CARGO_TARGET_DIR:-target}/release/millrace" dev "$@"
