// Spec 2.8 and 3.7: end-to-end encrypted channels. The Node server SDK encrypts with a key derived
// from encryptionMasterKeyBase64; the server relays the ciphertext untouched; pusher-js decrypts.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { APPS, serverSdk, uniq } from '../lib/env.mjs';
import { RawSocket, ev, closeAllRaw } from '../lib/raw.mjs';
import { pusherJs, connected, subscribed, nextEvent, closeAllClients, echo } from '../lib/clients.mjs';

after(() => {
  closeAllRaw();
  closeAllClients();
});

const app = APPS.main;
const sdk = serverSdk(app);

test('event encrypted by the Node SDK is decrypted by pusher-js', async () => {
  const ch = uniq('private-encrypted-orders-');
  const c = pusherJs(app, { node: 1 });
  await connected(c);
  const channel = await subscribed(c, ch);
  const got = nextEvent(channel, 'order-shipped', 3000, 'pusher-js did not receive/decrypt the encrypted event');
  const payload = { order: { id: 7, note: 'größe ✓' } };
  await sdk.trigger(ch, 'order-shipped', payload);
  assert.deepEqual(await got, payload, 'decrypted payload must equal what the SDK encrypted');
});

test('the server relays the ciphertext envelope untouched', async () => {
  const ch = uniq('private-encrypted-raw-');
  const s = await RawSocket.connect(app);
  await s.mustSubscribe(ch, { auth: sdk.authorizeChannel(s.socketId, ch).auth });
  await sdk.trigger(ch, 'secret', { top: 'secret' });
  const m = await s.expect(ev('secret', ch), 3000, 'encrypted event was not delivered');
  assert.equal(typeof m.data, 'string', 'encrypted event data must stay a string');
  const env = JSON.parse(m.data);
  assert.ok(env.nonce && env.ciphertext, `encrypted event must carry nonce and ciphertext, got ${m.data}`);
  assert.ok(!m.raw.includes('top'), 'plaintext leaked into the relayed frame');
  s.close();
});

test('batch event to an encrypted channel is decrypted by pusher-js', async () => {
  const ch = uniq('private-encrypted-batch-');
  const c = pusherJs(app);
  await connected(c);
  const channel = await subscribed(c, ch);
  const got = nextEvent(channel, 'b-event', 3000, 'encrypted batch event was not received/decrypted');
  await sdk.triggerBatch([{ channel: ch, name: 'b-event', data: { n: 3 } }]);
  assert.deepEqual(await got, { n: 3 }, 'encrypted batch event decrypted to other data');
});

test('Laravel Echo encryptedPrivate() listens and decrypts', async () => {
  const e = await echo(app, { node: 1 });
  const name = uniq('invoices.');
  const got = new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('Echo encryptedPrivate listener did not receive the event')), 4000);
    e.encryptedPrivate(name).listen('InvoicePaid', (data) => {
      clearTimeout(t);
      resolve(data);
    });
  });
  await subscribed(e.connector.pusher, `private-encrypted-${name}`);
  await sdk.trigger(`private-encrypted-${name}`, 'App\\Events\\InvoicePaid', { invoice: 12 });
  assert.deepEqual(await got, { invoice: 12 }, 'Echo encryptedPrivate decrypted other data');
});
