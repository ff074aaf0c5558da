#!/usr/bin/env node
// Memory per idle connection, by transport: opens N idle WebSockets, xhr_streaming sessions or
// xhr_polling sessions (each with its poll outstanding, as pusher-js keeps one) against a freshly
// started server and reports the growth of its VmRSS per connection.
//
//   node scripts/bench-fallback-memory.mjs --url http://127.0.0.1:18200 --pid PID \
//        --transport ws|xhr_streaming|xhr_polling --connections 2000 [--key app-key]
//
// With `--publishes M` (and `--rate R` per second, `--app-id`, `--secret`), the connections then
// subscribe to one channel and M events published through the HTTP API are timed from publish to
// arrival (same process, one clock): delivery p50/p99 and losses, for ws and xhr_streaming.
//
// Start a fresh server for each transport: RSS figures are only comparable from a clean start.
// The `ws` package is taken from protocol-tests/node_modules (run `npm ci` there first).

import { createHash, createHmac } from 'node:crypto';
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

const CHANNEL = 'bench-fanout';
const latencies = [];
const onMessage = (msg) => {
  if (msg.event === 'tick') latencies.push(performance.now() - JSON.parse(msg.data).t);
  if (msg.event === 'pusher_internal:subscription_succeeded') subscribed += 1;
};
let subscribed = 0;
const sessions = [];

/** Feeds a stream's lines (`a[...]` frames) to `onMessage`. */
function streamLines(res) {
  let partial = '';
  res.setEncoding('utf8');
  res.on('data', (d) => {
    partial += d;
    let end;
    while ((end = partial.indexOf('\n')) !== -1) {
      const line = partial.slice(0, end);
      partial = partial.slice(end + 1);
      if (line[0] === 'a') for (const m of JSON.parse(line.slice(1))) onMessage(JSON.parse(m));
    }
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
    ws.on('message', (d) => onMessage(JSON.parse(d)));
    sessions.push({ subscribe: (m) => ws.send(m) });
    return;
  }
  if (transport === 'xhr_streaming') {
    await new Promise((resolve, reject) => {
      const req = http.request({ host: url.hostname, port: url.port, path: `${base}/xhr_streaming?protocol=7`, method: 'POST', agent }, (res) => {
        res.once('data', resolve);
        streamLines(res);
      });
      req.on('error', reject);
      req.end();
    });
    sessions.push({
      subscribe: (m) =>
        new Promise((resolve) => {
          const req = http.request({ host: url.hostname, port: url.port, path: `${base}/xhr_send`, method: 'POST', agent }, (res) => {
            res.resume();
            res.on('end', resolve);
          });
          req.end(JSON.stringify([m]));
        }),
    });
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
const publishes = Number(args.publishes ?? 0);
if (publishes > 0) {
  const appId = args['app-id'] ?? 'app-id';
  const secret = args.secret ?? 'app-secret';
  const sub = JSON.stringify({ event: 'pusher:subscribe', data: { channel: CHANNEL } });
  for (let i = 0; i < sessions.length; i += 100) await Promise.all(sessions.slice(i, i + 100).map((s) => s.subscribe(sub)));
  const deadline = Date.now() + 20000;
  while (subscribed < n && Date.now() < deadline) await sleep(50);
  const publish = (t) => {
    const body = JSON.stringify({ name: 'tick', channel: CHANNEL, data: JSON.stringify({ t }) });
    const p = `/apps/${appId}/events`;
    const q = `auth_key=${key}&auth_timestamp=${Math.floor(Date.now() / 1000)}&auth_version=1.0&body_md5=${createHash('md5').update(body).digest('hex')}`;
    const sig = createHmac('sha256', secret).update(`POST\n${p}\n${q}`).digest('hex');
    return new Promise((resolve) => {
      const req = http.request({ host: url.hostname, port: url.port, path: `${p}?${q}&auth_signature=${sig}`, method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
        res.resume();
        res.on('end', resolve);
      });
      req.end(body);
    });
  };
  const every = 1000 / Number(args.rate ?? 10);
  for (let i = 0; i < publishes; i += 1) {
    publish(performance.now());
    await sleep(every);
  }
  await sleep(3000);
  const sorted = [...latencies].sort((a, b) => a - b);
  const q = (x) => Number((sorted[Math.min(sorted.length - 1, Math.floor(x * sorted.length))] ?? NaN).toFixed(2));
  console.log(
    JSON.stringify({
      transport,
      subscribed,
      expected: publishes * n,
      delivered: latencies.length,
      p50_ms: q(0.5),
      p99_ms: q(0.99),
      max_ms: Number(sorted.at(-1)?.toFixed(2)),
    }),
  );
}
process.exit(0);
