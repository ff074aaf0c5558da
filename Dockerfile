# syntax=docker/dockerfile:1
#
# The Resound image: a release build of the `resound` binary on Debian slim, run as a non-root
# user. The binary checks its own health (`resound probe`), so the image has no curl.
#
#   docker build -t resound .
#   docker run --rm -p 8080:8080 --ulimit nofile=1048576:1048576 --stop-timeout 15 \
#     -v "$PWD/resound.toml:/etc/resound/resound.toml:ro" resound
#
# Configuration comes from a TOML file mounted at /etc/resound/resound.toml (another path:
# RESOUND_CONFIG_FILE, or pass --config yourself), from RESOUND_<SECTION>__<KEY> and from Laravel
# Reverb's variables (REVERB_*, REDIS_*). Without a file and without REVERB_APP_ID the entrypoint
# refuses to start rather than serve the public default app (app-id/app-key/app-secret); set
# RESOUND_ALLOW_DEFAULT_APP=true for a throwaway demo. Arguments given to `docker run` go to
# `resound`, e.g. `--log-format json` or `check-config`. See docs/operations.md.
#
# The debug info is split off the binary (about 66 MB → 12 MB); keep it to read a core dump or
# a perf profile of a release: `docker build --target debug-info --output type=local,dest=. .`
# writes resound.debug, which gdb and perf find through the binary's .gnu_debuglink.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# The cache mounts keep the crate downloads and compiled dependencies between builds; the binary
# is copied out of the cached target directory in the same step, its debug info split off.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin resound \
 && mkdir -p /out \
 && objcopy --only-keep-debug target/release/resound /out/resound.debug \
 && objcopy --strip-debug --add-gnu-debuglink=/out/resound.debug \
        target/release/resound /out/resound \
 && chmod 0755 /out/resound

# `--target debug-info --output type=local,dest=DIR` exports the split debug info alone.
FROM scratch AS debug-info
COPY --from=build /out/resound.debug /resound.debug

FROM debian:${DEBIAN_RELEASE}-slim

LABEL org.opencontainers.image.title="resound" \
      org.opencontainers.image.description="Pusher Channels protocol v7 server: WebSocket and HTTP API on one port" \
      org.opencontainers.image.licenses="MIT"

# ca-certificates: TLS to Redis and webhook receivers through the system's trust store (the
# binary also bundles the Mozilla roots). Versions are not pinned so a rebuild picks up Debian
# security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 resound \
 && useradd --system --uid 10001 --gid resound --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin resound \
 && mkdir -p /etc/resound

COPY --from=build /out/resound /usr/local/bin/resound

# Every WebSocket is an open file and resound does not raise its own limit, so the entrypoint
# lifts the soft limit to the hard one the runtime grants (docker run --ulimit, or the container
# runtime's default in Kubernetes). It passes the configuration file when there is one, and
# stops with a message when nothing configures an app.
COPY --chmod=0755 <<'EOF' /usr/local/bin/resound-entrypoint
#!/bin/sh
set -e
ulimit -S -n "$(ulimit -H -n)" 2>/dev/null || true
resound=/usr/local/bin/resound
for arg in "$@"; do
  case "$arg" in
    --config|--config=*) exec "$resound" "$@" ;;
  esac
done
config="${RESOUND_CONFIG_FILE:-/etc/resound/resound.toml}"
if [ -f "$config" ]; then
  exec "$resound" --config "$config" "$@"
fi
if [ -n "${RESOUND_CONFIG_FILE:-}" ]; then
  echo "resound: RESOUND_CONFIG_FILE=$RESOUND_CONFIG_FILE does not exist (is the volume mounted?)" >&2
  exit 2
fi
for arg in "$@"; do
  case "$arg" in
    probe|check-config|help|--help|-h|--version|-V|--env-file|--env-file=*) exec "$resound" "$@" ;;
  esac
done
if [ -n "${REVERB_APP_ID:-}" ] || [ "${RESOUND_ALLOW_DEFAULT_APP:-}" = "true" ]; then
  exec "$resound" "$@"
fi
echo "resound: no configuration: mount a TOML file at $config, set RESOUND_CONFIG_FILE," >&2
echo "resound: or set REVERB_APP_ID, REVERB_APP_KEY and REVERB_APP_SECRET. Refusing to serve the" >&2
echo "resound: public default app (app-id/app-key/app-secret); RESOUND_ALLOW_DEFAULT_APP=true allows it." >&2
exit 2
EOF

USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM

# `resound probe` GETs /up on the port and with the TLS setting the configuration gives (file,
# REVERB_SERVER_PORT, RESOUND_SERVER__PORT or RESOUND_PORT), through the entrypoint so the same
# file is read; exit 0 while the process serves.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/resound-entrypoint", "probe", "--timeout", "2"]

ENTRYPOINT ["/usr/local/bin/resound-entrypoint"]
CMD []
