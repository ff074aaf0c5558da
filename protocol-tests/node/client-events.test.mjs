// Spec 4: client events - acceptance rules in order, relaying to the other subscribers only,
// user_id on presence channels only, the rate limit, verbatim data, stripped extra fields.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { APPS, serverSdk, uniq } from '../lib/env.mjs';
import { RawSocket, ev, errorData, closeAllRaw } from '../lib/raw.mjs';
import { pusherJs, connected, subscribed, nextEvent, closeAllClients } from '../lib/clients.mjs';

after(() => {
  closeAllRaw();
  closeAllClients();
});

const app = APPS.main;
const sdk = serverSdk(app);

/** Sender on node 0 and receiver on node 1, both subscribed to `ch` (private or presence). */
async function pair(ch, opts = {}) {
  const a = opts.app ?? app;
  const s = serverSdk(a);
  const auth = (sock, user) =>
    ch.startsWith('presence-') ? s.authorizeChannel(sock.socketId, ch, { user_id: user }) : ch.startsWith('private-') ? s.authorizeChannel(sock.socketId, ch) : {};
  const sender = await RawSocket.connect(a);
  const receiver = await RawSocket.connect(a, { node: 1 });
  await sender.mustSubscribe(ch, auth(sender, 'sender-1'));
  await receiver.mustSubscribe(ch, auth(receiver, 'receiver-1'));
  return { sender, receiver };
}

test('client events on an app with client messages disabled get 4301 and are not relayed', async () => {
  const ch = uniq('private-noclient-');
  const { sender, receiver } = await pair(ch, { app: APPS.noclient });
  sender.send({ event: 'client-typing', channel: ch, data: {} });
  const err = await sender.expect(ev('pusher:error'), 3000, 'client event on an app with client messages disabled got no error');
  assert.equal(errorData(err).code, 4301, `client messages disabled must give 4301, got ${err.raw}`);
  await receiver.expectNone(ev('client-typing'), 300, 'client event was relayed although the app disables client messages');
  await sender.assertAlive('the 4301 error must not close the connection');
});

test('client event on a public channel is rejected and not relayed', async () => {
  const ch = uniq('public-chat-');
  const { sender, receiver } = await pair(ch);
  sender.send({ event: 'client-typing', channel: ch, data: {} });
  const err = await sender.expect(ev('pusher:error'), 3000, 'client event on a public channel got no pusher:error');
  assert.equal(errorData(err).code, 4009, `client event on a public channel should get 4009 (protocol.md 4.1), got ${err.raw}`);
  await receiver.expectNone(ev('client-typing'), 300, 'client event on a public channel was relayed');
});

test('client event on a public cache channel is rejected and not relayed', async () => {
  const ch = uniq('cache-chat-');
  const { sender, receiver } = await pair(ch);
  sender.send({ event: 'client-typing', channel: ch, data: {} });
  await sender.expect(ev('pusher:error'), 3000, 'client event on a cache- (public) channel got no pusher:error');
  await receiver.expectNone(ev('client-typing'), 300, 'client event on a cache- channel was relayed');
});

test('client event on a channel the sender is not subscribed to is rejected and not relayed', async () => {
  const ch = uniq('private-notmine-');
  const receiver = await RawSocket.connect(app, { node: 1 });
  await receiver.mustSubscribe(ch, sdk.authorizeChannel(receiver.socketId, ch));
  const outsider = await RawSocket.connect(app);
  outsider.send({ event: 'client-typing', channel: ch, data: { sneaky: true } });
  const err = await outsider.expect(ev('pusher:error'), 3000, 'client event from a non-subscriber got no pusher:error');
  assert.equal(errorData(err).code, 4009, `client event from a non-subscriber should get 4009, got ${err.raw}`);
  await receiver.expectNone(ev('client-typing'), 300, 'client event from a connection not subscribed to the channel was relayed');
});

test('client event is relayed to other subscribers and never echoed to its sender', async () => {
  const ch = uniq('private-chat-');
  const { sender, receiver } = await pair(ch);
  const third = await RawSocket.connect(app, { node: 1 });
  await third.mustSubscribe(ch, sdk.authorizeChannel(third.socketId, ch));
  sender.send({ event: 'client-typing', channel: ch, data: { typing: true } });
  await receiver.expect(ev('client-typing', ch), 3000, 'client event was not relayed to another subscriber');
  await third.expect(ev('client-typing', ch), 3000, 'client event was not relayed to every other subscriber');
  await sender.expectNone(ev('client-typing'), 300, 'client event was echoed to its sender');
});

test('user_id is added on presence channels and not on private channels', async () => {
  const pres = uniq('presence-chat-');
  const p = await pair(pres);
  p.sender.send({ event: 'client-typing', channel: pres, data: { typing: true } });
  const m = await p.receiver.expect(ev('client-typing', pres), 3000, 'client event on a presence channel was not relayed');
  assert.equal(m.user_id, 'sender-1', `client event on a presence channel must carry the sender's user_id as a string, got ${m.raw}`);

  const priv = uniq('private-chat-');
  const q = await pair(priv);
  await q.sender.signin(sdk, { id: 'signed-sender' });
  q.sender.send({ event: 'client-typing', channel: priv, data: { typing: true } });
  const n = await q.receiver.expect(ev('client-typing', priv), 3000, 'client event on a private channel was not relayed');
  assert.equal('user_id' in n, false, `user_id must not be added on private channels (even for a signed-in sender), got ${n.raw}`);
});

test('extra fields are stripped and a forged user_id is replaced', async () => {
  const pres = uniq('presence-forge-');
  const { sender, receiver } = await pair(pres);
  sender.send({ event: 'client-x', channel: pres, data: { a: 1 }, user_id: 'forged', socket_id: '1.1', extra: true });
  const m = await receiver.expect(ev('client-x', pres), 3000, 'client event with extra fields was not relayed');
  assert.equal(m.user_id, 'sender-1', `a client cannot choose its user_id: relayed ${m.raw}`);
  const keys = Object.keys(JSON.parse(m.raw)).sort();
  assert.deepEqual(keys, ['channel', 'data', 'event', 'user_id'], `relayed client event must only have event/channel/data/user_id, got ${m.raw}`);

  const priv = uniq('private-forge-');
  const q = await pair(priv);
  q.sender.send({ event: 'client-x', channel: priv, data: { a: 1 }, user_id: 'forged', extra: true });
  const n = await q.receiver.expect(ev('client-x', priv), 3000, 'client event was not relayed');
  assert.deepEqual(Object.keys(JSON.parse(n.raw)).sort(), ['channel', 'data', 'event'], `extra fields must be stripped, got ${n.raw}`);
});

test('client event data is relayed byte for byte, as a string and as an object', async () => {
  const ch = uniq('private-bytes-');
  const { sender, receiver } = await pair(ch);
  const objectData = '{"b": 2,  "a": [1, 2.50, "\\u00e9", "é"], "n": null}';
  sender.send(`{"event":"client-obj","channel":"${ch}","data":${objectData}}`);
  const o = await receiver.expect(ev('client-obj', ch), 3000, 'object client event was not relayed');
  assert.ok(o.raw.includes(objectData), `object data must be relayed byte for byte: sent ${objectData}, got ${o.raw}`);
  const stringData = '{"b": 2, "a":"x\\/y"}';
  sender.send({ event: 'client-str', channel: ch, data: stringData });
  const s = await receiver.expect(ev('client-str', ch), 3000, 'string client event was not relayed');
  assert.equal(typeof s.data, 'string', `string data must stay a string, got ${s.raw}`);
  assert.equal(s.data, stringData, 'string data must be relayed unchanged');
  sender.send({ event: 'client-plain', channel: ch, data: 'not json at all' });
  const p = await receiver.expect(ev('client-plain', ch), 3000, 'client event whose data is a non-JSON string was not relayed');
  assert.equal(p.data, 'not json at all');
});

test('the 11th client event within one second gets 4301 and is dropped', async () => {
  const ch = uniq('private-burst-');
  const { sender, receiver } = await pair(ch);
  for (let i = 0; i < 11; i++) sender.send({ event: 'client-burst', channel: ch, data: { i } });
  const err = await sender.expect(ev('pusher:error'), 3000, 'exceeding 10 client events per second got no error');
  assert.equal(errorData(err).code, 4301, `rate limit error must be 4301, got ${err.raw}`);
  await new Promise((r) => setTimeout(r, 400));
  const got = receiver.seen(ev('client-burst', ch)).map((m) => m.data.i);
  assert.equal(got.length, 10, `exactly 10 of 11 burst events must be relayed, got ${got.length}`);
  assert.ok(!got.includes(10), 'the event over the rate limit must be dropped');
  await sender.assertAlive('the rate-limit error must not close the connection');
});

test('client event with a name over 200 characters or data over 10 KB is rejected with 4301', async () => {
  const ch = uniq('private-big-');
  const { sender, receiver } = await pair(ch);
  sender.send({ event: `client-${'n'.repeat(200)}`, channel: ch, data: {} });
  const e1 = await sender.expect(ev('pusher:error'), 3000, 'client event name over 200 characters got no error');
  assert.equal(errorData(e1).code, 4301, `long client event name must get 4301, got ${e1.raw}`);
  sender.send({ event: 'client-big', channel: ch, data: 'x'.repeat(10 * 1024 + 1) });
  const e2 = await sender.expect(ev('pusher:error'), 3000, 'client event data over 10 KB got no error');
  assert.equal(errorData(e2).code, 4301, `client event data over 10 KB must get 4301, got ${e2.raw}`);
  await receiver.expectNone((m) => m.event.startsWith?.('client-'), 300, 'an oversized client event was relayed');
});

test('pusher-js channel.trigger reaches another pusher-js client', async () => {
  const ch = uniq('private-js-');
  const a = pusherJs(app);
  const b = pusherJs(app, { node: 1 });
  await Promise.all([connected(a), connected(b)]);
  const ca = await subscribed(a, ch);
  const cb = await subscribed(b, ch);
  const got = nextEvent(cb, 'client-hello', 3000, 'pusher-js client event did not reach the other client');
  const echoed = [];
  ca.bind('client-hello', (d) => echoed.push(d));
  assert.ok(ca.trigger('client-hello', { from: 'a' }), 'pusher-js refused to send the client event');
  assert.deepEqual(await got, { from: 'a' });
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(echoed, [], 'client event was echoed to its sender');
});

test('client events are relayed on private-encrypted- channels (protocol.md 2.8) and refused on #server-to-user-', async () => {
  const enc = uniq('private-encrypted-whisper-');
  const { sender, receiver } = await pair(enc);
  sender.send({ event: 'client-sealed', channel: enc, data: { nonce: 'n', ciphertext: 'c' } });
  await receiver.expect(ev('client-sealed', enc), 3000, 'client event on an encrypted channel was not relayed');

  const id = uniq('stu-');
  const me = await RawSocket.connect(app);
  await me.signin(sdk, { id });
  await me.mustSubscribe(`#server-to-user-${id}`);
  me.send({ event: 'client-x', channel: `#server-to-user-${id}`, data: {} });
  const err = await me.expect(ev('pusher:error'), 3000, 'client event on a #server-to-user- channel got no error');
  assert.equal(errorData(err).code, 4009, `client event on #server-to-user- must be refused with 4009, got ${err.raw}`);
});
