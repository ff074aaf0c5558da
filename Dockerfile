# syntax=docker/dockerfile:1
#
# The Resound image: a release build of the `resound` binary on Debian slim, run as a non-root
# user, with `curl` for the health check.
#
#   docker build -t resound .
#   docker run --rm -p 8080:8080 --ulimit nofile=1048576:1048576 --stop-timeout 15 resound
#
# Configuration comes from RESOUND_<SECTION>__<KEY> and Laravel Reverb's variables (REVERB_*,
# REDIS_*), and from a TOML file mounted at /etc/resound/resound.toml, which is read when it
# exists (another path: RESOUND_CONFIG_FILE, or pass --config yourself). Arguments given to
# `docker run` go to `resound`, e.g. `--log-format json` or `check-config`.
# See docs/operations.md.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# The cache mounts keep the crate downloads and compiled dependencies between builds; the binary
# is copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin resound \
 && install -D -m 0755 target/release/resound /out/resound

FROM debian:${DEBIAN_RELEASE}-slim

LABEL org.opencontainers.image.title="resound" \
      org.opencontainers.image.description="Pusher Channels protocol v7 server: WebSocket and HTTP API on one port" \
      org.opencontainers.image.licenses="MIT"

# curl: the HEALTHCHECK below (resound has no probe subcommand). ca-certificates: TLS to Redis
# and webhook receivers. Versions are not pinned so a rebuild picks up Debian security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 resound \
 && useradd --system --uid 10001 --gid resound --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin resound \
 && mkdir -p /etc/resound

COPY --from=build /out/resound /usr/local/bin/resound

# Every WebSocket is an open file and resound does not raise its own limit, so the entrypoint
# lifts the soft limit to the hard one the runtime grants (docker run --ulimit, or the container
# runtime's default in Kubernetes).
COPY --chmod=0755 <<'EOF' /usr/local/bin/resound-entrypoint
#!/bin/sh
set -e
ulimit -S -n "$(ulimit -H -n)" 2>/dev/null || true
for arg in "$@"; do
  case "$arg" in
    --config|--config=*) exec /usr/local/bin/resound "$@" ;;
  esac
done
config="${RESOUND_CONFIG_FILE:-/etc/resound/resound.toml}"
if [ -f "$config" ]; then
  exec /usr/local/bin/resound --config "$config" "$@"
fi
exec /usr/local/bin/resound "$@"
EOF

USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM

# /up answers 200 {"health":"OK"} while the process serves. With TLS in the binary
# ([server.tls]) or another port, set RESOUND_HEALTHCHECK_URL, e.g. https://127.0.0.1:8443/up.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/bin/sh", "-c", "curl --fail --silent --show-error --insecure --max-time 2 \"${RESOUND_HEALTHCHECK_URL:-http://127.0.0.1:8080/up}\" > /dev/null || exit 1"]

ENTRYPOINT ["/usr/local/bin/resound-entrypoint"]
CMD []
