// protocol.md 1.5 (compression, D41): a client offering permessage-deflate (Node's ws, as
// browsers do) receives large events compressed — fewer bytes on its TCP socket — and identical
// to what a client without the extension receives; a client event sent compressed is relayed to
// both kinds of client; small events and clients that offer nothing are served as before.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { APPS, serverSdk, uniq } from '../lib/env.mjs';
import { RawSocket, ev, closeAllRaw } from '../lib/raw.mjs';

after(() => closeAllRaw());

const app = APPS.main;
const sdk = serverSdk(app);

/** Repetitive JSON of about `n` bytes, as dashboards publish. */
function dashboard(n) {
  const rows = [];
  for (let i = 0; JSON.stringify(rows).length < n; i++) {
    rows.push({ id: i, symbol: `SYM${i % 20}`, price: (i * 7) % 1000, change: -0.5, status: 'open' });
  }
  return JSON.stringify(rows);
}

test('a client offering permessage-deflate is answered with no context takeover either way', async () => {
  const s = await RawSocket.connect(app, { deflate: true });
  assert.match(String(s.extensions), /permessage-deflate/, 'the offer was not accepted');
  const plain = await RawSocket.connect(app);
  assert.equal(String(plain.extensions ?? ''), '', 'a client that offers nothing gets no extension');
  await s.assertAlive();
});

test('a large event reaches a deflate client compressed and identical to what a plain client receives', async () => {
  const ch = uniq('dash-');
  const zipped = await RawSocket.connect(app, { deflate: true, node: 1 });
  const plain = await RawSocket.connect(app, { node: 1 });
  await zipped.mustSubscribe(ch);
  await plain.mustSubscribe(ch);
  const data = dashboard(4096);
  const zBefore = zipped.bytesRead();
  const pBefore = plain.bytesRead();
  await sdk.trigger(ch, 'update', data);
  const z = await zipped.expect(ev('update', ch), 3000, 'the deflate client got no event');
  const p = await plain.expect(ev('update', ch), 3000, 'the plain client got no event');
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(z.raw, p.raw, 'both clients must receive the same message');
  assert.equal(z.data, data, 'the data arrives byte for byte');
  const zBytes = zipped.bytesRead() - zBefore;
  const pBytes = plain.bytesRead() - pBefore;
  assert.ok(pBytes >= p.raw.length, `the plain client read ${pBytes} bytes for a ${p.raw.length}-byte message`);
  assert.ok(zBytes * 3 < pBytes, `compressed: ${zBytes} bytes on the socket against ${pBytes} uncompressed`);
});

test('a small event goes uncompressed and equal to both kinds of client', async () => {
  const ch = uniq('small-');
  const zipped = await RawSocket.connect(app, { deflate: true });
  const plain = await RawSocket.connect(app);
  await zipped.mustSubscribe(ch);
  await plain.mustSubscribe(ch);
  const before = zipped.bytesRead();
  await sdk.trigger(ch, 'tick', '{"price":1}');
  const z = await zipped.expect(ev('tick', ch), 3000, 'the deflate client got no small event');
  const p = await plain.expect(ev('tick', ch), 3000, 'the plain client got no small event');
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(z.raw, p.raw);
  assert.equal(zipped.bytesRead() - before, 2 + z.raw.length, 'under the threshold: one plain frame, header and payload');
});

test('a client event sent compressed is relayed to deflate and plain clients alike', async () => {
  const ch = uniq('private-zip-');
  const auth = (sock) => sdk.authorizeChannel(sock.socketId, ch);
  // threshold 0: ws compresses every message it sends.
  const sender = await RawSocket.connect(app, { deflate: { threshold: 0 } });
  const zipped = await RawSocket.connect(app, { deflate: true, node: 1 });
  const plain = await RawSocket.connect(app, { node: 1 });
  for (const s of [sender, zipped, plain]) await s.mustSubscribe(ch, auth(s));
  const data = { rows: JSON.parse(dashboard(3000)) };
  sender.send({ event: 'client-board', channel: ch, data });
  const z = await zipped.expect(ev('client-board', ch), 3000, 'the deflate client got no client event');
  const p = await plain.expect(ev('client-board', ch), 3000, 'the plain client got no client event');
  assert.equal(z.raw, p.raw);
  assert.deepEqual(JSON.parse(z.raw).data, data, 'relayed verbatim after inflation');
  await sender.expectNone(ev('client-board', ch), 200, 'the sender must not get its own event back');
  await sender.assertAlive();
});
