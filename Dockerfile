# syntax=docker/dockerfile:1
# The Millrace image: one binary (`millrace api|worker|migrate|dev`) plus the interpreters
# the worker runs scripts with. The Helm chart's default image (helm/millrace) is built
# from this file; docs/kubernetes.md says how to build and push it.
#
#   docker build -t ghcr.io/<owner>/millrace:0.1.0 .
#
# Stages: builder (Rust, release build) -> js (bun and deno binaries from their npm platform
# packages) -> runtime (Debian slim, python3 + a venv with wmill, bash, bun, deno).

ARG DEBIAN_RELEASE=bookworm

# --- build ---------------------------------------------------------------------------------
FROM rust:1-${DEBIAN_RELEASE} AS builder
ARG TARGETARCH
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds; the binary is copied out
# of the cached target dir because the mount is gone after this step. jemalloc fixes its page
# size at build time: arm64 kernels may use 16 or 64 KiB pages, so arm64 builds assume the
# largest (LG_PAGE 16; a 4 KiB build aborts on them).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    if [ "$TARGETARCH" = arm64 ]; then export JEMALLOC_SYS_WITH_LG_PAGE=16; fi \
 && cargo build --release --locked --bin millrace \
 && install -D -m 0755 target/release/millrace /out/millrace \
 && mkdir -p /out/share \
 && for dir in migrations nats; do if [ -d "$dir" ]; then cp -R "$dir" /out/share/; fi; done

# --- bun and deno --------------------------------------------------------------------------
# The npm registry publishes each release's binaries as per-platform packages
# (@oven/bun-linux-<arch>, @deno/linux-<arch>-glibc). `npm pack` fetches one without running
# install scripts; the binary is taken straight out of the tarball.
FROM node:22-${DEBIAN_RELEASE}-slim AS js
ARG BUN_VERSION=1.4.5
ARG DENO_VERSION=2.9.6
ARG TARGETARCH
WORKDIR /js
RUN set -eux; \
    arch="${TARGETARCH:-$(dpkg --print-architecture)}"; \
    case "$arch" in \
      amd64) bun_pkg=@oven/bun-linux-x64; deno_pkg=@deno/linux-x64-glibc ;; \
      arm64) bun_pkg=@oven/bun-linux-aarch64; deno_pkg=@deno/linux-arm64-glibc ;; \
      *) echo "unsupported architecture: $arch" >&2; exit 1 ;; \
    esac; \
    npm pack --silent "$bun_pkg@$BUN_VERSION" "$deno_pkg@$DENO_VERSION"; \
    mkdir -p /out; \
    tar -xzf oven-bun-linux-*.tgz -C /out --strip-components=2 package/bin/bun; \
    tar -xzf deno-linux-*.tgz -C /out --strip-components=1 package/deno; \
    /out/bun --version; \
    /out/deno --version

# --- runtime -------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG WMILL_VERSION=1.850.0
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates bash python3 python3-venv; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --gid 10001 millrace; \
    useradd --uid 10001 --gid 10001 --create-home --home-dir /home/millrace --shell /usr/sbin/nologin millrace
# Python scripts run in this venv, so that `import wmill` works and Debian's python stays
# untouched (it refuses pip installs outside a venv).
RUN set -eux; \
    python3 -m venv /opt/millrace/venv; \
    /opt/millrace/venv/bin/pip install --no-cache-dir --disable-pip-version-check "wmill==${WMILL_VERSION}"; \
    /opt/millrace/venv/bin/python3 -c 'import wmill'
COPY --from=js /out/bun /out/deno /usr/local/bin/
COPY --from=builder /out/millrace /usr/local/bin/millrace
COPY --from=builder /out/share/ /opt/millrace/
# Interpreters by absolute path (the worker never looks them up on PATH). The chart sets the
# same values (worker.runtimes in helm/millrace/values.yaml; scripts/helm-check.sh compares).
ENV WORKER_PYTHON=/opt/millrace/venv/bin/python3 \
    WORKER_BASH=/bin/bash \
    WORKER_BUN=/usr/local/bin/bun \
    WORKER_DENO=/usr/local/bin/deno
WORKDIR /opt/millrace
USER 10001:10001
# 8000: api (BIND_ADDR); 8001: worker health (WORKER_HEALTH_ADDR).
EXPOSE 8000 8001
ENTRYPOINT ["millrace"]
CMD ["api"]
