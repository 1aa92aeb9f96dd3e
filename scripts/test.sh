#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run`): installs the programs the integration tests
# start (into ${MILLRACE_TOOLS_DIR:-$HOME/.cache/millrace; /var/cache/millrace as root}), then
#   cargo fmt --check
#   cargo clippy --all-targets -- -D warnings
#   cargo test --all-targets
#   scripts/helm-check.sh (when present)
# and stops at the first step that fails, with its exit code.
#
# Environment: TEST_THREADS (default 4) threads per test binary; extra arguments go to the
# test binaries (e.g. scripts/test.sh --nocapture, or a name filter); CI=true turns off
# incremental compilation.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || {
    echo "test.sh: cargo not found: install the Rust toolchain with rustup (https://rustup.rs)" >&2
    exit 1
}

step() { printf '\n==> %s\n' "$*" >&2; }

step "tools"
. scripts/tools.sh
export MILLRACE_TOOLS_DIR NATS_SERVER_BIN PG_BIN_DIR S3S_FS_BIN WORKER_PYTHON WORKER_BUN \
    WORKER_DENO WMILL_PYTHON SCHEMATHESIS_BIN CHROMIUM_BIN PLAYWRIGHT_PYTHON

if [ "${CI:-}" = true ]; then
    export CARGO_INCREMENTAL=0
fi
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

# Integration tests start nats-server, PostgreSQL and s3s-fs processes: on a 2-core machine a
# few test threads per binary are enough.
threads="${TEST_THREADS:-4}"
step "cargo test --all-targets --no-fail-fast -- --test-threads=$threads${*:+ $*}"
log=$(mktemp "${TMPDIR:-/tmp}/millrace-test.XXXXXX")
trap 'rm -f "$log"' EXIT
set +e
cargo test --all-targets --no-fail-fast -- --test-threads="$threads" "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# One closing line over all test binaries (cargo prints one `test result:` line per binary).
summary=$(awk '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i) ~ /^passed;?$/)  p += $(i - 1)
            if ($(i) ~ /^failed;?$/)  f += $(i - 1)
            if ($(i) ~ /^ignored;?$/) s += $(i - 1)
        }
    } END { printf "%d passed, %d failed, %d skipped", p, f, s }' "$log")
if [ "$rc" -ne 0 ]; then
    echo "cargo test failed (exit $rc)" >&2
    echo "tests: $summary"
    exit "$rc"
fi

if [ -f scripts/helm-check.sh ]; then
    step "scripts/helm-check.sh"
    bash scripts/helm-check.sh
fi

# Repeated last, so that the suite's result is the closing line whatever ran after the tests.
echo "tests: $summary"
