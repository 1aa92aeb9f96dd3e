#!/usr/bin/env bash
# The long chaos run of docs/reliability.md: real processes (2 API replicas, 2 workers,
# nats-server with a file store, PostgreSQL with fsync on) under a steady load of async
# webhooks while a worker and an API replica are SIGKILLed, nats-server and PostgreSQL
# restarted, PostgreSQL frozen and the jobs stream filled. Prints one table and fails unless
# nothing was lost, run twice or answered 5xx without Retry-After. About 10 minutes on 2 cores.
#
#   scripts/chaos.sh             # the sizes below; override any of them from the environment
#
# CHAOS_JOBS        accepted jobs at least         (5000)
# CHAOS_RATE        requests per second offered    (60)
# CHAOS_FREEZE_SECS PostgreSQL frozen (SIGSTOP)    (45)
# CHAOS_GAP_SECS    calm after each fault          (5)
# CHAOS_STREAM_MSGS the jobs stream's limit        (2000)
# CI runs the same test with small sizes (the defaults in tests/it/chaos.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

. scripts/tools.sh
export MILLRACE_TOOLS_DIR NATS_SERVER_BIN PG_BIN_DIR WORKER_PYTHON WORKER_BUN WORKER_DENO
export CHAOS_JOBS="${CHAOS_JOBS:-5000}" CHAOS_RATE="${CHAOS_RATE:-60}" \
    CHAOS_FREEZE_SECS="${CHAOS_FREEZE_SECS:-45}" CHAOS_GAP_SECS="${CHAOS_GAP_SECS:-5}" \
    CHAOS_STREAM_MSGS="${CHAOS_STREAM_MSGS:-2000}"
exec cargo test --test it -- --exact chaos::chaos_loses_no_job_and_runs_none_twice_at_once \
    --nocapture
