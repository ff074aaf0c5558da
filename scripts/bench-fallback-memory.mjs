#!/usr/bin/env node
// Memory per idle connection, by transport: opens N idle WebSockets, xhr_streaming sessions or
// xhr_polling sessions (each with its poll outstanding, as pusher-js keeps one) against a freshly
// started server and reports the growth of its VmRSS per connection.
//
//   node scripts/bench-fallback-memory.mjs --url http://127.0.0.1:18200 --pid PID \
//        --transport ws|xhr_streaming|xhr_polling --connections 2000 [--key app-key]
//
// Start a fresh server for each transport: RSS figures are only comparable from a clean start.
// The `ws` package is taken from protocol-tests/node_modules (run `npm ci` there first).

import { readFileSync } from 'node:fs';
import http from 'node:http';
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
const transport = args.transport ?? 'xhr_streaming';
const n = Number(args.connections ?? 1000);
const key = args.key ?? 'app-key';
if (!pid) throw new Error('--pid of the server is required');

const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });

/** POSTs to `p`; resolves with the first bytes once `until` is in what arrived. */
function post(p, until) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: url.hostname, port: url.port, path: p, method: 'POST', agent }, (res) => {
      let text = '';
      res.on('data', (d) => {
        text += d;
        if (until && text.includes(until)) resolve(text);
      });
      res.on('end', () => resolve(text));
    });
    req.on('error', reject);
    req.end();
  });
}

async function open(i) {
  const base = `/pusher/app/${key}/${i % 1000}/${`m${i}`.padStart(8, '0')}`;
  if (transport === 'ws') {
    const ws = new WebSocket(`ws://${url.host}/app/${key}?protocol=7`);
    await new Promise((resolve, reject) => {
      ws.once('message', resolve);
      ws.once('error', reject);
    });
    return;
  }
  if (transport === 'xhr_streaming') {
    await post(`${base}/xhr_streaming?protocol=7`, 'connection_established');
    return;
  }
  await post(`${base}/xhr?protocol=7`); // o
  await post(`${base}/xhr?protocol=7`); // connection_established
  post(`${base}/xhr?protocol=7`).catch(() => {}); // outstanding, as pusher-js keeps one
}

await sleep(500);
const before = rss();
const started = Date.now();
for (let i = 0; i < n; i += 100) {
  await Promise.all(Array.from({ length: Math.min(100, n - i) }, (_, j) => open(i + j)));
}
await sleep(2000);
const after = rss();
console.log(
  JSON.stringify({
    transport,
    connections: n,
    rss_before_bytes: before,
    rss_after_bytes: after,
    per_connection_kib: Number(((after - before) / n / 1024).toFixed(2)),
    open_seconds: (Date.now() - started) / 1000,
  }),
);
process.exit(0);
