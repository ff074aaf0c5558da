// The recovery helper (clients/recovery) with the older clients it supports: pusher-js 7 alone
// and Laravel Echo 1 on pusher-js 7, each behind a proxy the test cuts without a close
// (protocol.md 11.2). The current versions are in recovery.test.mjs.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

import { APPS, URLS, node, serverSdk, uniq, eventually } from '../lib/env.mjs';
import { cuttingProxy } from '../lib/proxy.mjs';
import { enableRecovery } from '../../clients/recovery/dist/index.js';

const require = createRequire(import.meta.url);
const Pusher7 = require('pusher-js-7');
// Echo 1 is CommonJS with an ES-module default export.
const Echo1 = require('laravel-echo-1').default;
const VERSION_7 = require('pusher-js-7/package.json').version;
const VERSION_ECHO_1 = require('laravel-echo-1/package.json').version;

const skip = URLS.length > 1 || node(0).tls ? 'histories are kept on one node, over ws://' : false;
const app = APPS.recover;
const sdk = serverSdk(app);
const clients = [];
after(() => clients.forEach((c) => c.disconnect()));

const options = (port) => ({
  cluster: '',
  wsHost: '127.0.0.1',
  wsPort: port,
  forceTLS: false,
  enabledTransports: ['ws'],
  disableStats: true,
});

const once = (recovery, event) => new Promise((resolve) => recovery.on(event, resolve));

async function publish(channel, from, to) {
  for (let i = from; i < to; i++) await sdk.trigger(channel, 'msg', { n: i });
}

test(`pusher-js ${VERSION_7} with the helper: every event missed while cut, once and in order`, { skip }, async () => {
  assert.match(VERSION_7, /^7\./);
  const p = await cuttingProxy(node(0));
  const channel = uniq('recover-js7-');
  const client = new Pusher7(app.key, options(p.port));
  clients.push(client);
  const recovery = enableRecovery(client);
  const got = [];
  client.subscribe(channel).bind('msg', (d) => got.push(d.n));
  assert.ok(await eventually(() => recovery.position(channel), 5000), 'the subscription gave a position');
  await publish(channel, 0, 5);
  assert.ok(await eventually(() => got.length === 5, 5000));
  const recovered = once(recovery, 'recovered');
  p.cut();
  await publish(channel, 5, 15);
  const r = await recovered;
  assert.equal(r.channel, channel);
  assert.ok(r.count > 0 && r.count <= 10, `recovered ${r.count}`);
  await publish(channel, 15, 18);
  assert.ok(await eventually(() => got.length >= 18, 5000), `got ${got.length}`);
  assert.deepEqual(got, Array.from({ length: 18 }, (_, i) => i));
  p.close();
});

// pusher-js 7 gives the `ws` transport two lives: a connection that dies within twice the
// activity timeout costs one, and with `enabledTransports: ['ws']` the second early death leaves
// it `failed`. Each Echo below is cut once, as a user's connection would be.
test(`Laravel Echo ${VERSION_ECHO_1} on pusher-js ${VERSION_7} with the helper: recovered; beyond the window, recovery failed`, { skip }, async () => {
  assert.match(VERSION_ECHO_1, /^1\./);
  const echoVia = async () => {
    const p = await cuttingProxy(node(0));
    const echo = new Echo1({ broadcaster: 'pusher', key: app.key, ...options(p.port), Pusher: Pusher7 });
    clients.push(echo);
    return { p, echo, recovery: enableRecovery(echo.connector.pusher) };
  };

  // Within the window: the missed events, once and in order, then live ones.
  const a = await echoVia();
  const channel = uniq('recover-echo1-');
  const got = [];
  a.echo.channel(channel).listen('.msg', (d) => got.push(d.n));
  assert.ok(await eventually(() => a.recovery.position(channel), 5000));
  await publish(channel, 0, 2);
  assert.ok(await eventually(() => got.length === 2, 5000));
  const recovered = once(a.recovery, 'recovered');
  a.p.down();
  await publish(channel, 2, 6);
  a.p.up();
  assert.deepEqual(await recovered, { channel, count: 4 });
  await publish(channel, 6, 7);
  assert.ok(await eventually(() => got.length === 7, 5000), `got ${got}`);
  assert.deepEqual(got, [0, 1, 2, 3, 4, 5, 6]);
  a.p.close();

  // The app keeps 20 events per channel: 25 missed cannot all be given back.
  const b = await echoVia();
  const other = uniq('recover-echo1-');
  const seen = [];
  b.echo.channel(other).listen('.msg', (d) => seen.push(d.n));
  assert.ok(await eventually(() => b.recovery.position(other), 5000));
  const failed = once(b.recovery, 'failed');
  b.p.down();
  await publish(other, 0, 25);
  b.p.up();
  assert.deepEqual(await failed, { channel: other, reason: 'window_exceeded' });
  await publish(other, 25, 26);
  assert.ok(await eventually(() => seen.includes(25), 5000), 'live events go on');
  b.p.close();
});
