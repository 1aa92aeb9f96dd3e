#!/usr/bin/env bash
# Millrace benchmark: async ingestion (req/s, p50/p99), end-to-end jobs/s, the latency and
# overhead of sync webhooks, and flows.
#
#   bash bench/run.sh                   (or: make bench) everything, about 6 minutes
#   BENCH_ONLY=ingest bash bench/run.sh only the ingestion measurements (1, 2, the yardstick
#                                       and signed deliveries), about 4 minutes
#   BENCH_ONLY=sync bash bench/run.sh   only measurement 4 (sync webhooks), about 1.5 minutes
#   BENCH_ONLY=flows bash bench/run.sh  only measurement 5 (flows), about 1 minute
#   BENCH_ONLY=isolation bash bench/run.sh  only measurement 6 (isolation cost; as root), about
#                                           1.5 minutes; not part of the full run
#
# Builds the release binary, then for each measurement starts a fresh `millrace dev` (its own
# nats-server and PostgreSQL in a temporary data directory, the API on a free port, an
# in-process worker) and stops it afterwards:
#   1. ingestion: oha, BENCH_CONNECTIONS connections for BENCH_DURATION s, against
#      POST /api/w/demo/jobs/run/p/u/admin/bench_bash; the worker runs the jobs meanwhile.
#   2. the same with `?tag=bench_idle`, a tag no worker serves (declared by `millrace migrate`,
#      since the API refuses tags without a consumer): the API path alone.
#   2b. the yardstick (bench/bare_handler.rs, an example target): a bare axum handler that
#      publishes each request to JetStream and awaits the PubAck, against a fresh instance's
#      nats-server, with the same oha settings; the report gives measurements 1 and 2 as a
#      percentage of it, and every run's CPU per request by process. Measurement 2 and the
#      yardstick run twice, in the order 2, yardstick, yardstick, 2, so that the machine's drift
#      weighs on both alike: the API path's share is the ratio of their sums.
#   2c. signed deliveries (BENCH_SIGNED=0 skips): a webhook trigger with GitHub's scheme, a 4 KiB
#      body and a delivery id per request (bench/signed_load.rs, since oha cannot vary a header),
#      against the token route with the same body, both to a tag no worker serves: 1 connection
#      for 6 s each, the token route also with an Idempotency-Key per request (signed − keyed p50
#      is what the signature adds), then BENCH_CONNECTIONS for BENCH_DURATION, each route on a
#      fresh instance, BENCH_SIGNED_PAIRS (4) times each, in the order token, signed, signed,
#      token, token, signed…
#   3. end to end: BENCH_BASH_JOBS trivial bash jobs, then BENCH_PYTHON_JOBS trivial python3
#      jobs, submitted async, timed from the first created_at to the last completed_at.
#   4. sync webhooks: POST /api/w/demo/jobs/run_wait_result/p/… of the trivial bash and python3
#      scripts, from 1 caller and from BENCH_SYNC_CALLERS callers (bun and deno: 1 caller), BENCH_SYNC_SECONDS s each;
#      overhead = each call's latency minus its job's duration_ms (read back afterwards with
#      GET /jobs_u/get/{id}, the id from the x-millrace-job-id header). Then the same again with
#      a NATS sniffer (bench.py sniff) timestamping every step, for the breakdown.
#   5. flows (bench/flows.py): per-transition overhead (step k+1 started_at - step k
#      completed_at) over BENCH_FLOWS sequential 10-step bash flows run one at a time; sync calls
#      of a 3-step bash flow from one caller for BENCH_SYNC_SECONDS s (overhead = latency minus
#      the steps' duration_ms); one parallel loop of BENCH_LOOP_ITERATIONS trivial bash steps.
#   6. isolation cost (bench/isolation.py): TWO instances side by side, one running jobs as
#      users of their own (JOB_UID_RANGE, the default as root), one with JOB_UID_RANGE=none;
#      one caller alternates sync calls of the trivial bash, then python3 script between them,
#      BENCH_ISOLATION_CALLS each after 30 warm-up pairs, so that both sides see the same noise.
# Prints a markdown table at the end and keeps it, with the raw results, in target/bench/.
#
# Settings (environment): WORKER_SLOTS (8), BENCH_DURATION (15), BENCH_CONNECTIONS (64),
# BENCH_BASH_JOBS (5000), BENCH_PYTHON_JOBS (1000), BENCH_SUBMITTERS (16) and
# BENCH_QUIET_WAIT (0): how long to wait, before each measurement, for other load on the
# machine to end (the run warns when the machine is busy; other load lowers every figure).
# BENCH_SKIP_IDLE=1 skips measurement 2; BENCH_BIN=FILE measures that binary instead of building.
# Sync webhooks: BENCH_SYNC_SECONDS (8), BENCH_SYNC_CALLERS (16), BENCH_SYNC_BREAKDOWN (0; 1
# adds the sniffed pass, which needs a NATS that lets one client read every subject: dev's
# NATS, with its users of nats/auth.conf, has none, so it is off), BENCH_SKIP_SYNC=1 skips
# measurement 4, BENCH_ONLY=sync runs only it.
# Flows: BENCH_FLOWS (30), BENCH_LOOP_ITERATIONS (1000), BENCH_SKIP_FLOWS=1 skips measurement 5,
# BENCH_ONLY=flows runs only it.
# Isolation: BENCH_ISOLATION_CALLS (500 per instance and language), JOB_UID_RANGE (the isolated
# side's users, 61000-61999); only with BENCH_ONLY=isolation.
# The load generator oha is installed once with cargo into
# ${MILLRACE_TOOLS_DIR:-$HOME/.cache/millrace; /var/cache/millrace as root}/oha (the first build takes several minutes).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

export WORKER_SLOTS=${WORKER_SLOTS:-8}
DURATION=${BENCH_DURATION:-15}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
BASH_JOBS=${BENCH_BASH_JOBS:-5000}
PYTHON_JOBS=${BENCH_PYTHON_JOBS:-1000}
SUBMITTERS=${BENCH_SUBMITTERS:-16}
QUIET_WAIT=${BENCH_QUIET_WAIT:-0}
SYNC_SECONDS=${BENCH_SYNC_SECONDS:-8}
SYNC_CALLERS=${BENCH_SYNC_CALLERS:-16}
SYNC_BREAKDOWN=${BENCH_SYNC_BREAKDOWN:-0}
FLOWS=${BENCH_FLOWS:-30}
LOOP_ITERATIONS=${BENCH_LOOP_ITERATIONS:-1000}
ISOLATION_CALLS=${BENCH_ISOLATION_CALLS:-500}
ONLY=${BENCH_ONLY:-all}
SIGNED=${BENCH_SIGNED:-1}
SIGNED_PAIRS=${BENCH_SIGNED_PAIRS:-4}
# No stream limits on the instances measured: a 15 s run at the yardstick's rate queues more than
# the 250,000 jobs one tag may hold by default, and the refused rest is no throughput (the
# yardstick's rate was the limit's, ~(250,000 − warm-up) / 15 s, not its own).
STREAM_LIMITS=(JOBS_STREAM_MAX_MSGS=-1 JOBS_STREAM_MAX_MSGS_PER_SUBJECT=-1 JOBS_STREAM_MAX_BYTES=-1)
export "${STREAM_LIMITS[@]}"
case "$ONLY" in
all | ingest | sync | flows | isolation) ;;
*) echo "bench: BENCH_ONLY must be all, ingest, sync, flows or isolation" >&2; exit 2 ;;
esac
OHA_VERSION=1.16.0
[ "$DURATION" -ge 6 ] || { echo "bench: BENCH_DURATION must be at least 6 (seconds)" >&2; exit 2; }
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

log() { printf 'bench: %s\n' "$*" >&2; }
die() {
    printf 'bench: error: %s\n' "$*" >&2
    exit 1
}

OUT=$ROOT/target/bench/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"

# --- cleanup: whatever happens, stop the instance and remove its data ------------------------
DEV_PID=
NATS_PID=
DATA=
SAMPLER_PID=
CHILD_PID=
BARE_PID=
STOP_WAIT=30
# Measurement 6 runs two instances: the first one is parked here (pid, nats pid, data
# directory) while the second one is the current one; stop_dev stops both.
PARKED=()

# Runs a long step as a child and waits for it, so that Ctrl-C reaches the trap below at once
# (a foreground oha would catch SIGINT itself, print its results, and the run would go on).
run_child() {
    "$@" &
    CHILD_PID=$!
    local rc=0
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=
    return "$rc"
}

stop_dev() {
    if [ -n "$BARE_PID" ]; then
        kill "$BARE_PID" 2>/dev/null || true
        wait "$BARE_PID" 2>/dev/null || true
        BARE_PID=
    fi
    if [ -n "$CHILD_PID" ]; then
        kill "$CHILD_PID" 2>/dev/null || true
        wait "$CHILD_PID" 2>/dev/null || true
        CHILD_PID=
    fi
    if [ -n "$SAMPLER_PID" ]; then
        kill "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
        SAMPLER_PID=
    fi
    if [ -n "$DEV_PID" ]; then
        kill -TERM "$DEV_PID" 2>/dev/null || true
        for _ in $(seq 1 $((STOP_WAIT * 5))); do
            kill -0 "$DEV_PID" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$DEV_PID" 2>/dev/null; then
            log "millrace dev did not stop within $STOP_WAIT s; killing it"
            kill -KILL "$DEV_PID" 2>/dev/null || true
        fi
        wait "$DEV_PID" 2>/dev/null || true
        DEV_PID=
    fi
    # Normally `dev` stops its services itself; make sure of it if it could not.
    if [ -n "$NATS_PID" ] && kill -0 "$NATS_PID" 2>/dev/null; then
        kill -KILL "$NATS_PID" 2>/dev/null || true
    fi
    NATS_PID=
    if [ -n "$DATA" ]; then
        local pg_real=
        if [ -e "$DATA/postgres" ]; then
            pg_real=$(readlink -f "$DATA/postgres")
            if [ -f "$pg_real/data/postmaster.pid" ]; then
                log "PostgreSQL still running; stopping it"
                if [ "$(id -u)" = 0 ]; then
                    runuser -u postgres -- "$PG_BIN_DIR/pg_ctl" stop -D "$pg_real/data" -m immediate >/dev/null 2>&1 || true
                else
                    "$PG_BIN_DIR/pg_ctl" stop -D "$pg_real/data" -m immediate >/dev/null 2>&1 || true
                fi
            fi
        fi
        rm -rf "$DATA"
        # As root `dev` keeps the cluster outside the data directory (see src/dev.rs).
        case "$pg_real" in
        /var/tmp/millrace-dev-*) rm -rf "$pg_real" ;;
        esac
        DATA=
    fi
    if [ ${#PARKED[@]} -gt 0 ]; then
        DEV_PID=${PARKED[0]} NATS_PID=${PARKED[1]} DATA=${PARKED[2]}
        PARKED=()
        stop_dev
    fi
}

on_exit() {
    local rc=$?
    if [ "$rc" != 0 ]; then
        STOP_WAIT=10
    fi
    if [ "$rc" = 130 ] || [ "$rc" = 143 ]; then
        log "interrupted; stopping"
    elif [ "$rc" != 0 ] && [ -n "$DATA" ] && [ -f "$DATA/dev.log" ]; then
        log "failed; the last lines of millrace dev's output:"
        tail -n 30 "$DATA/dev.log" >&2 || true
    fi
    stop_dev
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build and tools -------------------------------------------------------------------------
BUILT=target/release/millrace
INGESTING=0
{ [ "$ONLY" = all ] || [ "$ONLY" = ingest ]; } && INGESTING=1
# The yardstick and the signed-delivery client (examples, not part of the product).
TOOLS_BUILT=(target/release/examples/bare_handler target/release/examples/signed_load)
if [ -n "${BENCH_BIN:-}" ]; then
    BUILT=$BENCH_BIN
    log "BENCH_BIN: measuring $BUILT without building"
    # The tools do not depend on Millrace's code: built once, kept for A/B runs of old binaries.
    if [ "$INGESTING" = 1 ] && ! ls "${TOOLS_BUILT[@]}" >/dev/null 2>&1 &&
        ! cargo build --release --example bare_handler \
            --example signed_load >"$OUT/build.log" 2>&1; then
        tail -n 40 "$OUT/build.log" >&2
        die "cargo build --release --example bare_handler --example signed_load failed"
    fi
else
    log "building the release binary"
    if ! cargo build --release --bin millrace --example bare_handler --example signed_load \
        >"$OUT/build.log" 2>&1; then
        tail -n 40 "$OUT/build.log" >&2
        die "cargo build --release failed"
    fi
fi
[ -x "$BUILT" ] || die "no $BUILT"
# Copies, so that a rebuild during the run cannot swap a binary between measurements.
BIN=$OUT/millrace
cp "$BUILT" "$BIN"
if [ "$INGESTING" = 1 ]; then
    cp "${TOOLS_BUILT[@]}" "$OUT/"
fi
BARE=$OUT/bare_handler
SIGNED_LOAD=$OUT/signed_load

eval "$(bash scripts/tools.sh nats postgres python js)"
TOOLS=$MILLRACE_TOOLS_DIR # exported by tools.sh
OHA=$TOOLS/oha/bin/oha
if [ "$INGESTING" = 1 ] && ! "$OHA" --version 2>/dev/null | grep -q " $OHA_VERSION\$"; then
    log "installing oha $OHA_VERSION with cargo (once; takes several minutes)"
    cargo install oha --version "$OHA_VERSION" --locked --root "$TOOLS/oha" >&2
fi
PSQL=$PG_BIN_DIR/psql
[ -x "$PSQL" ] || PSQL=psql

# --- one `millrace dev` at a time ------------------------------------------------------------
free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_dev() {
    DATA=$(mktemp -d /tmp/millrace-bench.XXXXXX)
    local port
    port=$(free_port)
    # A session of its own, so that a Ctrl-C in the terminal does not also hit nats-server and
    # PostgreSQL before millrace has drained: this script stops the instance in order.
    BIND_ADDR=127.0.0.1:$port setsid "$BIN" dev --data-dir "$DATA" >"$DATA/dev.log" 2>&1 &
    DEV_PID=$!
    for _ in $(seq 1 600); do
        grep -q '^token:' "$DATA/dev.log" 2>/dev/null && break
        kill -0 "$DEV_PID" 2>/dev/null || die "millrace dev exited during startup"
        sleep 0.1
    done
    grep -q '^token:' "$DATA/dev.log" || die "millrace dev did not start within 60 s"
    MILLRACE_URL=$(sed -n 's/^Millrace is up at \(http[^ ]*\).*/\1/p' "$DATA/dev.log" | head -n 1)
    MILLRACE_TOKEN=$(sed -n 's/^token: *//p' "$DATA/dev.log" | head -n 1)
    export MILLRACE_URL MILLRACE_TOKEN
    NATS_PID=$(pgrep -P "$DEV_PID" -x nats-server || true)
    # Where that nats-server listens (its `-p PORT`), for the sniffer of measurement 4.
    BENCH_NATS_URL=
    if [ -n "$NATS_PID" ]; then
        BENCH_NATS_URL=nats://127.0.0.1:$(tr '\0' '\n' <"/proc/$NATS_PID/cmdline" | sed -n '/^-p$/{n;p;q}')
    fi
    PG_DATA=$DATA/postgres/data
    PG_PORT=$(sed -n 4p "$PG_DATA/postmaster.pid")
    # dev's PostgreSQL takes only its password (kept 0600 beside the cluster).
    PG_PASSWORD_FILE=$DATA/postgres/postgres.password
    log "millrace dev up at $MILLRACE_URL (pid $DEV_PID, WORKER_SLOTS=$WORKER_SLOTS${JOB_UID_RANGE:+, JOB_UID_RANGE=$JOB_UID_RANGE})"
    "$PY" bench/bench.py setup
}

# Keeps the current instance running aside (see PARKED) so that a second one can start.
park_dev() {
    PARKED=("$DEV_PID" "$NATS_PID" "$DATA")
    DEV_PID='' NATS_PID='' DATA=''
}

completed_jobs() {
    PGPASSWORD=$(cat "$PG_PASSWORD_FILE") "$PSQL" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d millrace -Atc \
        "SELECT count(*) FROM jobs WHERE status IN ('success', 'failure', 'canceled')"
}

oha_post() {
    # oha_post SECONDS URL [extra oha options...]; only through run_child (it execs)
    local seconds=$1 url=$2
    shift 2
    exec "$OHA" -z "${seconds}s" -c "$CONNECTIONS" --no-tui --output-format json \
        --wait-ongoing-requests-after-deadline \
        -m POST -H "Authorization: Bearer $MILLRACE_TOKEN" -H "Content-Type: application/json" \
        -d '{}' "$@" "$url"
}

# declare_tag TAG: its consumer, as `millrace migrate` with WORKER_TAGS=TAG declares it on a
# cluster, here against the running dev's NATS and PostgreSQL (as dev's `migrate` user).
declare_tag() {
    local nats_password pg_url
    nats_password=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["migrate"])' \
        "$DATA/nats/users.json")
    pg_url=$("$PY" -c 'import sys, urllib.parse as u; print("postgres://postgres:%s@127.0.0.1:%s/millrace" % (u.quote(open(sys.argv[1]).read().strip(), safe=""), sys.argv[2]))' \
        "$PG_PASSWORD_FILE" "$PG_PORT")
    env -i PATH="$PATH" NATS_URL="$BENCH_NATS_URL" NATS_USER=migrate NATS_PASSWORD="$nats_password" \
        DATABASE_URL="$pg_url" WORKER_TAGS="$1" "${STREAM_LIMITS[@]}" "$BIN" migrate >/dev/null 2>&1 ||
        die "could not declare the tag $1"
}

# --- 1 and 2: ingestion, its yardstick, signed deliveries ------------------------------------
# sampled NAME APP_PID COMMAND...: runs COMMAND (a load generator printing JSON) into
# $OUT/NAME-load.json while the CPU split is sampled, clear of the run's first and last seconds.
# APP_PID (0: none) is a process of the bench's own counted as the application (the yardstick).
sampled() {
    local name=$1 app_pid=$2
    shift 2
    local seconds=$DURATION
    "$PY" bench/bench.py cpu --dev-pid "$DEV_PID" --app-pid "$app_pid" --pg-data "$PG_DATA" \
        --delay 2 --seconds $((seconds - 4)) --out "$OUT/$name-cpu.json" &
    SAMPLER_PID=$!
    run_child "$@" >"$OUT/$name-load.json"
    wait "$SAMPLER_PID" || log "$name: CPU sampling failed"
    SAMPLER_PID=
}

ingest() {
    # ingest NAME QUERY
    local name=$1 query=$2
    "$PY" bench/bench.py quiet --wait "$QUIET_WAIT"
    start_dev
    local url="$MILLRACE_URL/api/w/demo/jobs/run/p/u/admin/bench_bash$query"
    case $name in ingest_idle*) declare_tag bench_idle ;; esac
    log "$name: warm-up, 2 s"
    run_child oha_post 2 "$url" >/dev/null
    local before after
    before=$(completed_jobs)
    log "$name: $CONNECTIONS connections for $DURATION s against $url"
    sampled "$name" 0 oha_post "$DURATION" "$url"
    after=$(completed_jobs)
    # Memory after the run (API and in-process worker together: dev is one process).
    log "$name: millrace dev RSS after the run: $(awk '/^VmRSS/ {print $2, $3}' "/proc/$DEV_PID/status")"
    "$PY" bench/bench.py oha --name "$name" --oha-json "$OUT/$name-load.json" \
        --cpu "$OUT/$name-cpu.json" --connections "$CONNECTIONS" --duration "$DURATION" \
        --drained $((after - before)) --out "$OUT/$name.json"
    stop_dev
}

# The yardstick (bench/bare_handler.rs): publish to JetStream, await the PubAck, answer. Against
# a fresh instance's nats-server and its MILLRACE_JOBS stream, as dev's `api` user, on a tag no
# worker serves; the same oha settings as measurements 1 and 2. ingest_bare NAME
ingest_bare() {
    local name=$1
    "$PY" bench/bench.py quiet --wait "$QUIET_WAIT"
    start_dev
    local password
    password=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["api"])' \
        "$DATA/nats/users.json")
    NATS_URL=$BENCH_NATS_URL NATS_USER=api NATS_PASSWORD=$password \
        "$BARE" --listen 127.0.0.1:0 >"$DATA/bare.log" 2>&1 &
    BARE_PID=$!
    for _ in $(seq 1 100); do
        grep -q '^listening on ' "$DATA/bare.log" 2>/dev/null && break
        kill -0 "$BARE_PID" 2>/dev/null || die "bare_handler exited: $(cat "$DATA/bare.log")"
        sleep 0.1
    done
    local url
    url="http://$(sed -n 's/^listening on //p' "$DATA/bare.log")/publish"
    log "$name: warm-up, 2 s"
    run_child oha_post 2 "$url" >/dev/null
    log "$name: $CONNECTIONS connections for $DURATION s against $url"
    sampled "$name" "$BARE_PID" oha_post "$DURATION" "$url"
    "$PY" bench/bench.py oha --name "$name" --oha-json "$OUT/$name-load.json" \
        --cpu "$OUT/$name-cpu.json" --connections "$CONNECTIONS" --duration "$DURATION" \
        --out "$OUT/$name.json"
    stop_dev
}

# The 64-connection runs of the signed measurement, in order: pair n is token_4k_n and
# signed_4k_n (pair 1 without the suffix), the token route first in odd pairs.
signed_runs() {
    local n suffix
    for n in $(seq 1 "$SIGNED_PAIRS"); do
        suffix=_$n
        [ "$n" = 1 ] && suffix=
        if [ $((n % 2)) = 1 ]; then echo "token_4k$suffix signed_4k$suffix"
        else echo "signed_4k$suffix token_4k$suffix"; fi
    done
}

# signed_instance token|hook|both: a fresh instance, the given routes warmed up.
signed_instance() {
    "$PY" bench/bench.py quiet --wait "$QUIET_WAIT"
    start_dev
    declare_tag bench_idle
    "$PY" bench/bench.py setup-signed --secret "$SIGNED_SECRET"
    TOKEN_TARGET=(--url "$MILLRACE_URL/api/w/demo/jobs/run/p/u/admin/bench_idle" --token "$MILLRACE_TOKEN")
    HOOK_TARGET=(--url "$MILLRACE_URL/api/w/demo/hooks/u/admin/bench_hook" --github-secret "$SIGNED_SECRET")
    log "signed: warm-up ($1), 2 s each"
    if [ "$1" != hook ]; then
        run_child "$SIGNED_LOAD" "${TOKEN_TARGET[@]}" --seconds 2 >/dev/null
    fi
    if [ "$1" != token ]; then
        run_child "$SIGNED_LOAD" "${HOOK_TARGET[@]}" --seconds 2 >/dev/null
    fi
}

# Signed webhook-trigger deliveries (GitHub's scheme, a 4 KiB body, a delivery id each) against
# the token route with the same body, both to a script of a tag no worker serves: first one
# caller each, the token route also with an Idempotency-Key each (the keyed path a delivery id
# takes, so that signed − keyed is what verifying a signature adds), then BENCH_CONNECTIONS each,
# each route on a fresh instance: the second route of one instance would find the first's rows
# in PostgreSQL and its messages in the stream, and pay for them.
signed() {
    SIGNED_SECRET=bench-secret
    signed_instance both
    local c1=6 name
    for name in token_c1 keyed_c1 signed_c1; do
        local target=("${TOKEN_TARGET[@]}") ok=201
        case $name in
        keyed_c1) target+=(--idempotency-key) ;;
        signed_c1) target=("${HOOK_TARGET[@]}") ok=202 ;;
        esac
        log "$name: 1 connection for $c1 s"
        run_child "$SIGNED_LOAD" "${target[@]}" --seconds "$c1" --connections 1 >"$OUT/$name-load.json"
        "$PY" bench/bench.py oha --name "$name" --oha-json "$OUT/$name-load.json" \
            --connections 1 --duration "$c1" --ok-status "$ok" --out "$OUT/$name.json"
    done
    stop_dev
    # In the order token, signed, signed, token, token…: the machine's drift over the runs then
    # weighs on both routes alike.
    for name in $(signed_runs); do
        local route=token ok=201
        case $name in signed_*) route=hook ok=202 ;; esac
        signed_instance "$route"
        local target=("${TOKEN_TARGET[@]}")
        [ "$route" = hook ] && target=("${HOOK_TARGET[@]}")
        log "$name: $CONNECTIONS connections for $DURATION s"
        sampled "$name" 0 "$SIGNED_LOAD" "${target[@]}" --seconds "$DURATION" \
            --connections "$CONNECTIONS"
        "$PY" bench/bench.py oha --name "$name" --oha-json "$OUT/$name-load.json" \
            --cpu "$OUT/$name-cpu.json" --connections "$CONNECTIONS" --duration "$DURATION" \
            --ok-status "$ok" --out "$OUT/$name.json"
        stop_dev
    done
}

START=$(date +%s)
results=()
if [ "$INGESTING" = 1 ]; then
    ingest ingest ""
    results+=("$OUT/ingest.json")
    if [ "${BENCH_SKIP_IDLE:-0}" != 1 ]; then
        ingest ingest_idle "?tag=bench_idle"
        ingest_bare ingest_bare
        ingest_bare ingest_bare_2
        ingest ingest_idle_2 "?tag=bench_idle"
        results+=("$OUT/ingest_idle.json" "$OUT/ingest_bare.json" "$OUT/ingest_bare_2.json"
            "$OUT/ingest_idle_2.json")
    else
        ingest_bare ingest_bare
        results+=("$OUT/ingest_bare.json")
    fi
    if [ "$SIGNED" = 1 ]; then
        signed
        results+=("$OUT/token_c1.json" "$OUT/keyed_c1.json" "$OUT/signed_c1.json")
        for name in $(signed_runs); do results+=("$OUT/$name.json"); done
    fi
fi
if [ "$ONLY" = all ]; then

    # --- 3: end to end -----------------------------------------------------------------------
    "$PY" bench/bench.py quiet --wait "$QUIET_WAIT"
    start_dev
    for lang in bash python3; do
        jobs=$BASH_JOBS
        [ "$lang" = python3 ] && jobs=$PYTHON_JOBS
        run_child "$PY" bench/bench.py e2e --language "$lang" --jobs "$jobs" \
            --concurrency "$SUBMITTERS" --slots "$WORKER_SLOTS" \
            --dev-pid "$DEV_PID" --pg-data "$PG_DATA" --out "$OUT/e2e_$lang.json"
        results+=("$OUT/e2e_$lang.json")
    done
    stop_dev
fi

# --- 4: sync webhooks ------------------------------------------------------------------------
if [ "$ONLY" = sync ] || { [ "$ONLY" = all ] && [ "${BENCH_SKIP_SYNC:-0}" != 1 ]; }; then
    "$PY" bench/bench.py quiet --wait "$QUIET_WAIT"
    start_dev
    passes=(plain)
    if [ "$SYNC_BREAKDOWN" = 1 ]; then
        [ -n "$BENCH_NATS_URL" ] || die "cannot find the port of millrace dev's nats-server"
        passes+=(sniffed)
    fi
    for pass in "${passes[@]}"; do
        for lang in bash python3 bun deno; do
            # bun and deno: one caller, for their latency only.
            many=$SYNC_CALLERS
            case $lang in bun | deno) many=1 ;; esac
            for callers in $(printf '%s\n' 1 "$many" | sort -nu); do
                name=sync_${lang}_c${callers}
                extra=()
                if [ "$pass" = sniffed ]; then
                    name=${name}_sniffed
                    extra+=(--nats-url "$BENCH_NATS_URL")
                elif [ "$lang" = bash ] && [ "$callers" = 1 ]; then
                    extra+=(--floor 500)
                fi
                run_child "$PY" bench/bench.py sync --language "$lang" --seconds "$SYNC_SECONDS" \
                    --concurrency "$callers" --slots "$WORKER_SLOTS" --dev-pid "$DEV_PID" \
                    --pg-data "$PG_DATA" --out "$OUT/$name.json" \
                    --samples-out "$OUT/$name-samples.json" "${extra[@]}"
                results+=("$OUT/$name.json")
            done
        done
    done
    stop_dev
fi

# --- 5: flows ---------------------------------------------------------------------------------
flow_results=()
if [ "$ONLY" = flows ] || { [ "$ONLY" = all ] && [ "${BENCH_SKIP_FLOWS:-0}" != 1 ]; }; then
    "$PY" bench/bench.py quiet --wait "$QUIET_WAIT"
    start_dev
    "$PY" bench/flows.py setup --iterations "$LOOP_ITERATIONS"
    run_child "$PY" bench/flows.py transition --flows "$FLOWS" --out "$OUT/flow_transition.json"
    run_child "$PY" bench/flows.py sync --seconds "$SYNC_SECONDS" --out "$OUT/flow_sync3.json"
    run_child "$PY" bench/flows.py loop --iterations "$LOOP_ITERATIONS" --out "$OUT/flow_loop.json"
    flow_results=("$OUT/flow_transition.json" "$OUT/flow_sync3.json" "$OUT/flow_loop.json")
    stop_dev
fi

# --- 6: isolation cost -----------------------------------------------------------------------
iso_results=()
if [ "$ONLY" = isolation ]; then
    # Jobs run as users of their own only when the worker may change users; this mode wants
    # root rather than guessing from capabilities.
    if [ "$(id -u)" != 0 ]; then
        log "isolation: skipped, not root (jobs run as users of their own only when the worker may change users)"
    else
        ISO_RANGE=${JOB_UID_RANGE:-61000-61999}
        [ "$ISO_RANGE" != none ] || die "isolation: JOB_UID_RANGE=none leaves nothing to compare"
        "$PY" bench/bench.py quiet --wait "$QUIET_WAIT"
        JOB_UID_RANGE=none start_dev
        NONE_URL=$MILLRACE_URL NONE_TOKEN=$MILLRACE_TOKEN
        park_dev
        JOB_UID_RANGE=$ISO_RANGE start_dev
        both=(--none-url "$NONE_URL" --none-token "$NONE_TOKEN"
            --isolated-url "$MILLRACE_URL" --isolated-token "$MILLRACE_TOKEN")
        "$PY" bench/isolation.py check "${both[@]}" --first-uid "${ISO_RANGE%%-*}"
        for lang in bash python3; do
            run_child "$PY" bench/isolation.py ab "${both[@]}" --language "$lang" \
                --calls "$ISOLATION_CALLS" --out "$OUT/isolation_$lang.json"
            iso_results+=("$OUT/isolation_$lang.json")
        done
        stop_dev
    fi
fi

# --- summary ---------------------------------------------------------------------------------
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "${BENCH_BIN:-}" ]; then
    COMMIT="$COMMIT (binary given by BENCH_BIN)"
elif [ -n "$(git status --porcelain -- src migrations nats Cargo.toml Cargo.lock 2>/dev/null)" ]; then
    COMMIT="$COMMIT+uncommitted changes"
fi
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
MEM_GIB=$(awk '/^MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)
MACHINE="$(nproc) cores ($CPU_MODEL), $MEM_GIB GiB, loopback, load generator on the same machine"
COMMAND="bash bench/run.sh"
[ "$ONLY" != all ] && COMMAND="BENCH_ONLY=$ONLY $COMMAND"
{
    if [ ${#results[@]} -gt 0 ]; then
        "$PY" bench/bench.py report --slots "$WORKER_SLOTS" --oha-version "$OHA_VERSION" \
            --command "$COMMAND" --commit "$COMMIT" --when "$(date -u +%Y-%m-%d)" \
            --machine "$MACHINE" "${results[@]}"
    else
        printf '`%s` at %s, %s; %s\n' "$COMMAND" "$COMMIT" "$(date -u +%Y-%m-%d)" "$MACHINE"
    fi
    if [ ${#flow_results[@]} -gt 0 ]; then
        "$PY" bench/flows.py report "${flow_results[@]}"
    fi
    if [ ${#iso_results[@]} -gt 0 ]; then
        "$PY" bench/isolation.py report "${iso_results[@]}"
    fi
} | tee "$OUT/summary.md"
log "done in $(($(date +%s) - START)) s (build excluded); raw results in ${OUT#"$ROOT"/}/"
