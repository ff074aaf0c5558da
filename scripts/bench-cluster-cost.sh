#!/usr/bin/env bash
# What a cluster costs, as CPU per delivery: the same work (N benches, each with its own
# channels, subscribers and HTTP publishers) run against
#   single       one node, scaling off (what a single-node user runs)
#   single-redis one node, scaling on (the price of the shared store with no second node)
#   partitioned  N nodes on one Redis, bench i's subscribers and publishes on node i
#   spanning     N nodes, bench i's subscribers on node i, its publishes through node i+1, so
#                every message crosses nodes through Redis
# For each: deliveries, server CPU (user + system of every node, from /proc/PID/stat), Redis's
# CPU, microseconds per delivery with and without Redis, Redis microseconds per published
# message, and the ratio to `single` measured in the same run; once over the whole run (what
# connecting and disconnecting the subscribers cost included) and once over the window in
# which every bench publishes (CPU sampled every 100 ms), which is the cost per delivery alone.
# CPU-seconds do not depend on how many cores there are, so this runs on a small machine; the
# wall-clock throughput of three nodes on three machines does not show here (BENCHMARKS.md,
# "Cluster cost").
#
#   scripts/bench-cluster-cost.sh [--nodes 3] [--subscribers 2000] [--channels 200]
#        [--rate 1000] [--duration 10] [--rounds 1] [--bin target/release/resound]
#        [--bench target/release/resound-bench] [--redis redis://127.0.0.1:6379]
#        [--soketi DIR]
#
# --soketi DIR runs the same phases against Soketi instead (DIR holds its npm installation,
# node_modules/@soketi/soketi; its Redis adapter for the phases with scaling), for a peer's
# figures in the same session. Nothing of Soketi is part of this repository.
#
# --subscribers, --channels and --rate are per bench (there are --nodes benches). Needs a
# Redis on --redis whose process runs on this machine (its CPU is read from /proc). Starts and
# stops its own nodes; prints one JSON line per phase and round, then a table.

set -euo pipefail
NODES=3 SUBS=2000 CHANNELS=200 RATE=1000 DURATION=10 ROUNDS=1
BIN=target/release/resound BENCH=target/release/resound-bench REDIS=redis://127.0.0.1:6379
SOKETI=""
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=$2; shift 2 ;;
    --subscribers) SUBS=$2; shift 2 ;;
    --channels) CHANNELS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --bench) BENCH=$2; shift 2 ;;
    --redis) REDIS=$2; shift 2 ;;
    --soketi) SOKETI=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$BIN" ] && [ -x "$BENCH" ] || { echo "build first: cargo build --release --bin resound --bin resound-bench" >&2; exit 2; }
if [ -n "$SOKETI" ]; then
  SOKETI_JS="$SOKETI/node_modules/@soketi/soketi/bin/server.js"
  [ -f "$SOKETI_JS" ] || { echo "no Soketi at $SOKETI_JS" >&2; exit 2; }
fi
REDIS_PORT="${REDIS##*:}"; REDIS_PORT="${REDIS_PORT%%/*}"
REDIS_PID="$(pgrep -f "redis-server .*:$REDIS_PORT" | head -1 || true)"
[ -n "$REDIS_PID" ] || { echo "no redis-server process listening on port $REDIS_PORT here" >&2; exit 2; }
ulimit -n 20000 2>/dev/null || true

WORK="$(mktemp -d "${TMPDIR:-/tmp}/cluster-cost.XXXXXX")"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

TICK="$(getconf CLK_TCK)"
# user + system clock ticks of a process
ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
# A free port below the ephemeral range, where the benches' own client sockets cannot hold it.
free_port() {
  python3 -c '
import random, socket
for _ in range(200):
    p = random.randint(17000, 19999)
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", p)); print(p); break
    except OSError:
        pass
    finally:
        s.close()'
}

# start_node SCALING(on|off) -> sets NODE_PORT, NODE_PID
start_node() {
  local port; port="$(free_port)"
  local ready=/ready
  if [ -n "$SOKETI" ]; then
    local host="${REDIS#*://}"; host="${host%%/*}"
    local env=(SOKETI_PORT="$port" SOKETI_DEBUG=0 SOKETI_DEFAULT_APP_ID=app-id
      SOKETI_DEFAULT_APP_KEY=app-key SOKETI_DEFAULT_APP_SECRET=app-secret)
    if [ "$1" = on ]; then
      env+=(SOKETI_ADAPTER_DRIVER=redis SOKETI_ADAPTER_REDIS_PREFIX="cost$$"
        SOKETI_DB_REDIS_HOST="${host%%:*}" SOKETI_DB_REDIS_PORT="${host##*:}")
    fi
    env "${env[@]}" node "$SOKETI_JS" start >"$WORK/node-$port.log" 2>&1 &
    ready=/
  else
    local env=(RESOUND_SERVER__PORT="$port" RUST_LOG=warn)
    if [ "$1" = on ]; then
      env+=(RESOUND_SCALING__ENABLED=true RESOUND_SCALING__REDIS_URL="$REDIS" RESOUND_SCALING__CHANNEL="cost$$")
    fi
    env "${env[@]}" "$BIN" >"$WORK/node-$port.log" 2>&1 &
  fi
  NODE_PID=$!; NODE_PORT=$port; PIDS+=("$NODE_PID")
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port$ready" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "node on $port did not become ready:" >&2; tail -5 "$WORK/node-$port.log" >&2; exit 1
}

# phase NAME SCALING SEPARATE_NODES(yes|no) CROSS(yes|no)
phase() {
  local name=$1 scaling=$2 separate=$3 cross=$4 round=$5
  local ports=() pids=()
  if [ "$separate" = yes ]; then
    for _ in $(seq 1 "$NODES"); do start_node "$scaling"; ports+=("$NODE_PORT"); pids+=("$NODE_PID"); done
  else
    start_node "$scaling"
    for _ in $(seq 1 "$NODES"); do ports+=("$NODE_PORT"); done
    pids+=("$NODE_PID")
  fi
  sleep 1
  local before=0 r_before; for p in "${pids[@]}"; do before=$((before + $(ticks "$p"))); done
  r_before="$(ticks "$REDIS_PID")"
  # Every node's and Redis's CPU ticks every 100 ms, to read them over the window in which
  # every bench publishes (connecting and disconnecting the subscribers left out).
  ( while :; do
      line="$(date +%s%3N)"
      for p in "${pids[@]}" "$REDIS_PID"; do line="$line $(ticks "$p" 2>/dev/null || echo 0)"; done
      echo "$line"; sleep 0.1
    done ) >"$WORK/$name.samples" &
  local sampler=$!
  local bench_pids=()
  for i in $(seq 0 $((NODES - 1))); do
    local sub="${ports[$i]}" pub="${ports[$(( (i + 1) % NODES ))]}"
    [ "$cross" = yes ] || pub="$sub"
    "$BENCH" fanout --url "http://127.0.0.1:$sub" --publish-url "http://127.0.0.1:$pub" \
      --subscribers "$SUBS" --channels "$CHANNELS" --rate "$RATE" --duration "$DURATION" \
      --channel-prefix "cost$i-" --json >"$WORK/$name.$i.json" 2>"$WORK/$name.$i.err" &
    bench_pids+=($!)
  done
  local failed=0
  for b in "${bench_pids[@]}"; do wait "$b" || failed=1; done
  local after=0 r_after; for p in "${pids[@]}"; do after=$((after + $(ticks "$p"))); done
  r_after="$(ticks "$REDIS_PID")"
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  PIDS=()
  if [ "$failed" = 1 ]; then echo "a bench of phase $name failed:" >&2; cat "$WORK/$name".*.err >&2; exit 1; fi
  python3 - "$name" "$round" "$TICK" "$((after - before))" "$((r_after - r_before))" "$WORK/$name.samples" "$WORK/$name".*.json <<'EOF'
import json, sys
name, rnd, tick, node_ticks, redis_ticks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
samples = []
for line in open(sys.argv[6]):
    f = line.split()
    if len(f) >= 3:
        samples.append((int(f[0]), sum(int(x) for x in f[1:-1]), int(f[-1])))
deliveries = published = lost = 0
windows = []
for path in sys.argv[7:]:
    for line in open(path):
        line = line.strip()
        if not line.startswith('{'):
            continue
        r = json.loads(line)["results"]
        deliveries += r.get("deliveries", 0)
        published += r.get("http_publish_ok", 0)
        lost += r.get("lost", 0)
        windows.append((r["publish_window_start_unix_ms"], r["publish_window_end_unix_ms"],
                        r.get("deliveries", 0), r.get("http_publish_ok", 0)))
node_s, redis_s = node_ticks / tick, redis_ticks / tick
per = lambda s, n: round(s * 1e6 / n, 2) if n else None
out = {"phase": name, "round": rnd, "deliveries": deliveries, "published": published, "lost": lost,
       "node_cpu_s": round(node_s, 2), "redis_cpu_s": round(redis_s, 2),
       "us_per_delivery_nodes": per(node_s, deliveries),
       "us_per_delivery_with_redis": per(node_s + redis_s, deliveries),
       "redis_us_per_publish": per(redis_s, published)}
# The window in which every bench published: CPU read off the samples (interpolated), and the
# deliveries and publishes of each bench in proportion to its share of that window.
a, b = max(w[0] for w in windows), min(w[1] for w in windows)
def at(t, i):
    for (t0, *v0), (t1, *v1) in zip(samples, samples[1:]):
        if t0 <= t <= t1:
            return v0[i] + (v1[i] - v0[i]) * (t - t0) / max(t1 - t0, 1)
    return None
if b > a and samples:
    n0, n1, r0, r1 = at(a, 0), at(b, 0), at(a, 1), at(b, 1)
    if None not in (n0, n1, r0, r1):
        share = lambda w: (b - a) / max(w[1] - w[0], 1)
        d = sum(w[2] * share(w) for w in windows)
        p = sum(w[3] * share(w) for w in windows)
        wn, wr = (n1 - n0) / tick, (r1 - r0) / tick
        out.update({"window_s": round((b - a) / 1000, 2),
                    "window_us_per_delivery_nodes": per(wn, d),
                    "window_us_per_delivery_with_redis": per(wn + wr, d),
                    "window_redis_us_per_publish": per(wr, p)})
print(json.dumps(out))
EOF
}

echo "nodes=$NODES subscribers/bench=$SUBS channels/bench=$CHANNELS rate/bench=$RATE duration=${DURATION}s rounds=$ROUNDS redis pid $REDIS_PID" >&2
{
  for round in $(seq 1 "$ROUNDS"); do
    phase single off no no "$round"
    phase single-redis on no no "$round"
    phase partitioned on yes no "$round"
    phase spanning on yes yes "$round"
  done
} | tee "$WORK/phases.jsonl"
python3 - "$WORK/phases.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["phase"], []).append(r)
def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None
base = mean([r["us_per_delivery_with_redis"] for r in by.get("single", [])])
wbase = mean([r.get("window_us_per_delivery_with_redis") for r in by.get("single", [])])
print("whole run (connecting, publishing, disconnecting)" + " " * 19 + "| publishing window only")
print(f"{'phase':<13} {'deliveries':>11} {'lost':>5} {'µs/delivery nodes':>18} {'+ Redis':>8} {'Redis µs/publish':>17} {'vs single':>9} "
      f"| {'nodes':>6} {'+ Redis':>8} {'Redis µs/pub':>12} {'vs single':>9}")
for name, rs in by.items():
    total = mean([r["us_per_delivery_with_redis"] for r in rs])
    wtotal = mean([r.get("window_us_per_delivery_with_redis") for r in rs])
    wcols = (f"{mean([r.get('window_us_per_delivery_nodes') for r in rs]):>6.2f} {wtotal:>8.2f} "
             f"{(mean([r.get('window_redis_us_per_publish') for r in rs]) or 0):>12.2f} {wtotal / wbase:>8.2f}x"
             if wtotal and wbase else "n/a")
    print(f"{name:<13} {sum(r['deliveries'] for r in rs):>11} {sum(r['lost'] for r in rs):>5} "
          f"{mean([r['us_per_delivery_nodes'] for r in rs]):>18.2f} {total:>8.2f} "
          f"{(mean([r['redis_us_per_publish'] for r in rs]) or 0):>17.2f} {total / base if base else 0:>8.2f}x | {wcols}")
EOF
