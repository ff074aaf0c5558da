// TLS terminated by the server itself ([server.tls]): pusher-js with forceTLS: true connects
// over wss:// and the Node server SDK publishes over https://, both trusting a self-signed
// certificate made for this run (NODE_EXTRA_CA_CERTS). Run by `run` against a TLS node it
// starts; PT_URLS is https://localhost:PORT.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';

import { APPS, node, uniq } from '../lib/env.mjs';
import { closeAllClients, connected, nextEvent, pusherJs, subscribed, echo } from '../lib/clients.mjs';
import { serverSdk } from '../lib/env.mjs';

after(() => closeAllClients());

test('pusher-js with forceTLS: true connects over wss:// to the TLS port', async () => {
  assert.equal(node(0).tls, true, 'this file runs against an https:// URL');
  const client = pusherJs(APPS.main);
  await connected(client, 5000, 'pusher-js with forceTLS did not connect over wss://');
  const ch = uniq('tls-');
  const channel = await subscribed(client, ch);
  const arrived = nextEvent(channel, 'secure-event', 4000, 'event published over https:// did not arrive over wss://');
  await serverSdk(APPS.main).trigger(ch, 'secure-event', { ok: true });
  assert.deepEqual(await arrived, { ok: true });
});

test('Laravel Echo private channels work over TLS', async () => {
  const e = await echo(APPS.main);
  const name = uniq('tls-orders-');
  const got = new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('Echo private listener got nothing over TLS')), 4000);
    e.private(name).listen('OrderShipped', (d) => {
      clearTimeout(t);
      resolve(d);
    });
  });
  await subscribed(e.connector.pusher, `private-${name}`);
  await serverSdk(APPS.main).trigger(`private-${name}`, 'App\\Events\\OrderShipped', { id: 7 });
  assert.deepEqual(await got, { id: 7 });
});
