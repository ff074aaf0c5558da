#!/usr/bin/env node
// Memory per subscribed idle WebSocket with an independent client library (Node's `ws`), and
// what stays after the sockets leave: opens N connections with C handshakes in flight, each
// subscribing to one of K public channels; reads the server's VmRSS 2 s after the last
// subscription; closes them all, reads VmRSS again 3 s later; repeats the cycle R times.
//
//   node scripts/bench-memory.mjs --url http://127.0.0.1:18200 --pid PID \
//        [--connections 10000] [--inflight 256] [--channels 1000] [--cycles 2] [--key app-key]
//        [--hold 0] [--settle 3]
//
// Prints one JSON line per cycle: rss before, connected, after close (bytes), per-connection
// growth in KiB and the retained growth after the close as a share of the first "before".
// Start a fresh server: figures are only comparable from a clean start. The `ws` package is
// taken from protocol-tests/node_modules (run `npm ci` there first).

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '..', 'protocol-tests', 'package.json'));
const WebSocket = require('ws');

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const url = new URL(args.url ?? 'http://127.0.0.1:18200');
const pid = Number(args.pid);
const n = Number(args.connections ?? 10000);
const inflight = Number(args.inflight ?? 256);
// Seconds to keep the sockets open after the reading (to inspect the server), and to wait
// after they closed before the last reading.
const hold = Number(args.hold ?? 0);
const settle = Number(args.settle ?? 3);
const channels = Number(args.channels ?? 1000);
const cycles = Number(args.cycles ?? 2);
const key = args.key ?? 'app-key';
if (!pid) throw new Error('--pid of the server is required');

const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Opens one socket and resolves once its subscription succeeded. */
function open(i) {
  return new Promise((resolve, reject) => {
    // perMessageDeflate off: the figure is for a plain socket, as most clients open one.
    const ws = new WebSocket(`ws://${url.host}/app/${key}?protocol=7`, { perMessageDeflate: false });
    const timer = setTimeout(() => reject(new Error(`socket ${i} not subscribed in 30 s`)), 30000);
    ws.on('message', (d) => {
      const msg = JSON.parse(d);
      if (msg.event === 'pusher:connection_established') {
        ws.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel: `mem-${i % channels}` } }));
      } else if (msg.event === 'pusher_internal:subscription_succeeded') {
        clearTimeout(timer);
        resolve(ws);
      }
    });
    ws.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

await sleep(500);
const start = rss();
for (let cycle = 1; cycle <= cycles; cycle++) {
  const before = rss();
  const sockets = [];
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: Math.min(inflight, n) }, async () => {
      while (next < n) sockets.push(await open(next++));
    }),
  );
  const openSeconds = (performance.now() - t0) / 1000;
  await sleep(2000);
  const connected = rss();
  await sleep(hold * 1000);
  await Promise.all(
    sockets.map(
      (ws) =>
        new Promise((resolve) => {
          ws.once('close', resolve);
          ws.close();
        }),
    ),
  );
  await sleep(settle * 1000);
  const after = rss();
  console.log(
    JSON.stringify({
      client: 'node-ws',
      cycle,
      connections: n,
      inflight,
      rss_before_bytes: before,
      rss_connected_bytes: connected,
      rss_after_close_bytes: after,
      per_connection_kib: Number(((connected - before) / n / 1024).toFixed(2)),
      retained_vs_start_pct: Number((((after - start) / start) * 100).toFixed(1)),
      open_seconds: Number(openSeconds.toFixed(2)),
    }),
  );
}
process.exit(0);
