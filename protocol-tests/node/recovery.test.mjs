// protocol.md 11.2 with the recovery helper (clients/recovery, built by ./run): pusher-js and
// Laravel Echo in Node, each behind a TCP proxy the test cuts without a close, get every
// event they missed, in order and once; beyond the window they are told recovery failed.
// Histories are kept on one node: skipped on a cluster run.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import net from 'node:net';

import { APPS, URLS, node, serverSdk, uniq, eventually } from '../lib/env.mjs';
import { pusherJs, closeAllClients } from '../lib/clients.mjs';
import { enableRecovery } from '../../clients/recovery/dist/index.js';

const require = createRequire(import.meta.url);
const Pusher = require('pusher-js');
const { default: Echo } = await import('laravel-echo');

const skip = URLS.length > 1 || node(0).tls ? 'histories are kept on one node, over ws://' : false;
const app = APPS.recover;
const sdk = serverSdk(app);
after(closeAllClients);

/** A TCP proxy to node 0; `cut()` destroys every piped connection (no close frame). */
function proxy() {
  const open = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(node(0).port, node(0).host);
    client.pipe(upstream).pipe(client);
    const pair = [client, upstream];
    open.add(pair);
    const drop = () => {
      open.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({
        port: server.address().port,
        cut() {
          for (const [a, b] of open) {
            a.destroy();
            b.destroy();
          }
          open.clear();
        },
        close() {
          this.cut();
          server.close();
        },
      }),
    ),
  );
}

const once = (recovery, event) => new Promise((resolve) => recovery.on(event, resolve));

async function publish(channel, from, to) {
  for (let i = from; i < to; i++) await sdk.trigger(channel, 'msg', { n: i });
}

test('pusher-js with the helper: every event missed while cut, once and in order', { skip }, async () => {
  const p = await proxy();
  const channel = uniq('recover-js-');
  const client = pusherJs(app, { options: { wsHost: '127.0.0.1', wsPort: p.port, enabledTransports: ['ws'] } });
  const recovery = enableRecovery(client);
  const got = [];
  client.subscribe(channel).bind('msg', (d) => got.push(d.n));
  assert.ok(await eventually(() => recovery.position(channel), 5000), 'the subscription gave a position');
  await publish(channel, 0, 10);
  assert.ok(await eventually(() => got.length === 10, 5000));
  const recovered = once(recovery, 'recovered');
  p.cut();
  await publish(channel, 10, 30);
  const r = await recovered;
  assert.equal(r.channel, channel);
  assert.ok(r.count > 0, `recovered ${r.count}`);
  await publish(channel, 30, 35);
  assert.ok(await eventually(() => got.length >= 35, 5000), `got ${got.length}`);
  assert.deepEqual(got, Array.from({ length: 35 }, (_, i) => i));
  p.close();
});

test('Laravel Echo with the helper: recovered, then beyond the window recovery failed', { skip }, async () => {
  const p = await proxy();
  const channel = uniq('recover-echo-');
  const echo = new Echo({
    broadcaster: 'pusher',
    key: app.key,
    cluster: '',
    wsHost: '127.0.0.1',
    wsPort: p.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    Pusher,
  });
  const recovery = enableRecovery(echo.connector.pusher);
  const got = [];
  echo.channel(channel).listen('.msg', (d) => got.push(d.n));
  assert.ok(await eventually(() => recovery.position(channel), 5000));
  const recovered = once(recovery, 'recovered');
  p.cut();
  await publish(channel, 0, 5);
  assert.equal((await recovered).count, 5);
  assert.ok(await eventually(() => got.length === 5, 5000));
  // The app keeps 20 events per channel: 30 missed cannot be given back.
  const failed = once(recovery, 'failed');
  p.cut();
  await publish(channel, 5, 35);
  assert.deepEqual(await failed, { channel, reason: 'window_exceeded' });
  await publish(channel, 35, 36);
  assert.ok(await eventually(() => got.includes(35), 5000), 'live events go on');
  echo.disconnect();
  p.close();
});
