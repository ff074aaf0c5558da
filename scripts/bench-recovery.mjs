#!/usr/bin/env node
// Recovery after an outage (protocol.md 11.2): C clients subscribed to channels with history
// lose their connections at once, M events per channel are published while they are away, then
// all of them reconnect at the same moment and resume. Reports how long until every client had
// its `resound:recovery`, whether each got every missed event exactly once and in order, and the
// server's CPU for the reconnection (from /proc/PID/stat).
//
//   node scripts/bench-recovery.mjs --bin target/release/resound \
//        [--clients 1000] [--channels 100] [--missed 100] [--outage 30]
//
// It starts the binary itself on a free loopback port with one app keeping `rec-*` channels
// (history_max_events = missed + 50, history_ttl = outage + 120 s), and stops it at the end.
// With --url/--pid instead of --bin it uses a running server (app id 1, key rec-key, secret
// rec-secret, `rec-*` in history_channels). The `ws` package comes from protocol-tests/node_modules.

import { spawn } from 'node:child_process';
import { createHash, createHmac } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '..', 'protocol-tests', 'package.json'));
const WebSocket = require('ws');

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const CLIENTS = Number(args.clients ?? 1000);
const CHANNELS = Number(args.channels ?? 100);
const MISSED = Number(args.missed ?? 100);
const OUTAGE_S = Number(args.outage ?? 30);
const APP = { id: '1', key: 'rec-key', secret: 'rec-secret' };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function startServer(bin) {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), 'resound-bench-recovery-'));
  const config = path.join(dir, 'resound.toml');
  writeFileSync(
    config,
    `[server]\nhost = "127.0.0.1"\nport = ${port}\n\n[[apps]]\nid = "${APP.id}"\nkey = "${APP.key}"\n` +
      `secret = "${APP.secret}"\nhistory_channels = ["rec-*"]\nhistory_max_events = ${MISSED + 50}\n` +
      `history_ttl = ${Math.ceil(OUTAGE_S) + 120}\nhistory_max_bytes = ${256 * 1024 * 1024}\n` +
      `max_backend_events_per_second = 1000000\n`,
  );
  const child = spawn(bin, ['--config', config], { stdio: 'ignore' });
  for (let i = 0; i < 100; i++) {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/up`);
      if (r.status === 200) return { url: `http://127.0.0.1:${port}`, pid: child.pid, child };
    } catch {
      /* not up yet */
    }
    await sleep(100);
  }
  child.kill();
  throw new Error(`${bin} did not start`);
}

const server = args.bin
  ? await startServer(path.resolve(args.bin))
  : { url: args.url ?? 'http://127.0.0.1:8080', pid: Number(args.pid) };
const base = new URL(server.url);
const wsUrl = `ws://${base.host}/app/${APP.key}?protocol=7&client=js&version=8.4.0`;
const cpuTicks = () => {
  if (!server.pid) return NaN;
  const f = readFileSync(`/proc/${server.pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return Number(f[11]) + Number(f[12]); // utime + stime, in clock ticks (100 per second)
};

function post(pathname, body) {
  const params = {
    auth_key: APP.key,
    auth_timestamp: Math.floor(Date.now() / 1000).toString(),
    auth_version: '1.0',
    body_md5: createHash('md5').update(body).digest('hex'),
  };
  const query = Object.keys(params)
    .sort()
    .map((k) => `${k}=${params[k]}`)
    .join('&');
  const sig = createHmac('sha256', APP.secret).update(`POST\n${pathname}\n${query}`).digest('hex');
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: base.hostname, port: base.port, path: `${pathname}?${query}&auth_signature=${sig}`, method: 'POST', agent, headers: { 'content-type': 'application/json' } },
      (res) => {
        let text = '';
        res.on('data', (c) => (text += c));
        res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`${res.statusCode} ${text}`))));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

const channelOf = (i) => `rec-${i % CHANNELS}`;

/** One client: its channel, the sequence numbers it got (in arrival order), its position. */
function makeClient(i) {
  return { i, channel: channelOf(i), got: [], position: null, socketId: null, ws: null, recovery: null, recoveredAt: 0, replayed: 0 };
}

function connect(client, resume) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl, { perMessageDeflate: false });
    client.ws = ws;
    let recovering = resume;
    ws.on('message', (raw) => {
      const m = JSON.parse(raw.toString());
      if (m.event === 'pusher:connection_established') {
        const previous = client.socketId;
        client.socketId = JSON.parse(m.data).socket_id;
        const data = { channel: client.channel, auth: '' };
        if (resume) data.resound_resume = { ...(client.position ?? {}), socket_id: previous };
        ws.send(JSON.stringify({ event: 'pusher:subscribe', data }));
      } else if (m.event === 'pusher_internal:subscription_succeeded') {
        if (!resume) resolve();
      } else if (m.event === 'resound:recovery') {
        client.recovery = JSON.parse(m.data);
        client.recoveredAt = performance.now();
        recovering = false;
        resolve();
      } else if (m.event === 'pusher:ping') {
        ws.send('{"event":"pusher:pong","data":{}}');
      } else if (m.event === 'n') {
        client.got.push(JSON.parse(m.data).n);
        if (m.resound_position) client.position = m.resound_position;
        if (recovering) client.replayed++;
      }
    });
    ws.on('error', reject);
  });
}

const clients = Array.from({ length: CLIENTS }, (_, i) => makeClient(i));
// Connected and subscribed (64 handshakes at a time), each with a first position.
for (let i = 0; i < CLIENTS; i += 64) await Promise.all(clients.slice(i, i + 64).map((c) => connect(c, false)));
let seq = 0;
const publishRound = async (count) => {
  // `batch_events`: at most 10 events a request; every channel gets `count` events, in order.
  for (let k = 0; k < count; k++) {
    const n = seq++;
    const events = Array.from({ length: CHANNELS }, (_, c) => ({ name: 'n', channel: `rec-${c}`, data: JSON.stringify({ n }) }));
    for (let b = 0; b < events.length; b += 10) await post(`/apps/${APP.id}/batch_events`, JSON.stringify({ batch: events.slice(b, b + 10) }));
  }
};
await publishRound(1);
await sleep(500);
const before = clients.filter((c) => c.got.length === 1 && c.position).length;
if (before !== CLIENTS) throw new Error(`only ${before} of ${CLIENTS} clients got the first event with a position`);

// The outage: every socket dropped without a close (TCP reset), events published meanwhile.
for (const c of clients) c.ws._socket?.resetAndDestroy?.() ?? c.ws.terminate();
const outageStart = performance.now();
const spacing = (OUTAGE_S * 1000) / MISSED;
for (let k = 0; k < MISSED; k++) {
  await publishRound(1);
  const next = outageStart + (k + 1) * spacing;
  if (next > performance.now()) await sleep(next - performance.now());
}

// Everyone back at once.
const cpu0 = cpuTicks();
const t0 = performance.now();
const results = await Promise.allSettled(clients.map((c) => connect(c, true)));
const all = performance.now() - t0;
await sleep(300);
const cpu = (cpuTicks() - cpu0) / 100;

const times = clients.filter((c) => c.recovery).map((c) => c.recoveredAt - t0).sort((a, b) => a - b);
const pct = (p) => times[Math.min(times.length - 1, Math.floor((p / 100) * times.length))];
const recovered = clients.filter((c) => c.recovery?.status === 'recovered').length;
const failedRecoveries = clients.filter((c) => c.recovery && c.recovery.status !== 'recovered').length;
const exact = clients.filter((c) => c.got.length === MISSED + 1 && c.got.every((n, k) => n === k)).length;
const replayed = clients.reduce((s, c) => s + c.replayed, 0);
const report = {
  scenario: 'recovery',
  clients: CLIENTS,
  channels: CHANNELS,
  missed_per_client: MISSED,
  outage_s: OUTAGE_S,
  reconnect_errors: results.filter((r) => r.status === 'rejected').length,
  recovered,
  recovery_failed: failedRecoveries,
  exactly_once_in_order: exact,
  replayed_events: replayed,
  all_recovered_ms: Math.round(all),
  recovery_p50_ms: Math.round(pct(50)),
  recovery_p99_ms: Math.round(pct(99)),
  server_cpu_s: cpu,
  server_cpu_us_per_replayed_event: replayed ? Math.round((cpu * 1e6) / replayed * 10) / 10 : null,
};
console.log(JSON.stringify(report));
for (const c of clients) c.ws.terminate();
agent.destroy();
server.child?.kill();
process.exit(recovered === CLIENTS && exact === CLIENTS ? 0 : 1);
