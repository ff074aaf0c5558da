// Spec 2.1-2.5 and 3.1-3.6: channel names, the subscribe forms, private/encrypted/presence
// authorization (tokens from the Node server SDK and hand-made ones), unsubscribe, delivery shape.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { APPS, serverSdk, uniq } from '../lib/env.mjs';
import { RawSocket, ev, errorData, innerData, closeAllRaw } from '../lib/raw.mjs';
import { hmac } from '../lib/sign.mjs';

after(closeAllRaw);

const app = APPS.main;
const sdk = serverSdk(app);
const sign = (s) => `${app.key}:${hmac(app.secret, s)}`;

async function expectSubscriptionRefused(s, channel, extra, what, code = 4009) {
  const r = await s.subscribe(channel, extra);
  assert.equal(r.ok, false, `${what}: subscription must be refused, got ${r.msg.raw}`);
  assert.equal(r.msg.event, 'pusher:error', `${what}: refusal must be a pusher:error, got ${r.msg.raw}`);
  if (code !== undefined) assert.equal(errorData(r.msg).code, code, `${what}: error code must be ${code}, got ${r.msg.raw}`);
  return r.msg;
}

test('invalid channel names are refused with 4009', async () => {
  const s = await RawSocket.connect(app);
  for (const name of ['a b', 'é-channel', 'x'.repeat(201), '#foo', 'bad:colon', 'private-with space']) {
    await expectSubscriptionRefused(s, name, {}, `invalid channel name "${name.slice(0, 30)}"`);
  }
  assert.equal(s.seen(ev('pusher_internal:subscription_succeeded')).length, 0, 'an invalid channel name was subscribed');
  await s.assertAlive('an invalid channel name must not close the connection');
  s.close();
});

test('a 200-character channel name is accepted, with every allowed character', async () => {
  const s = await RawSocket.connect(app);
  const base = `pt-_=@,.;${uniq()}`;
  const name = base + 'a'.repeat(200 - base.length);
  assert.equal(name.length, 200, 'harness: name length');
  await s.mustSubscribe(name, {}, 'a 200-character channel name (the SDK limit) was refused');
  s.close();
});

test('public subscribe with auth "", without auth, and with data as a JSON string all succeed with data "{}"', async () => {
  const s = await RawSocket.connect(app);
  const a = uniq('pub-a-');
  const b = uniq('pub-b-');
  const c = uniq('pub-c-');
  s.send({ event: 'pusher:subscribe', data: { auth: '', channel: a } });
  s.send({ event: 'pusher:subscribe', data: { channel: b } });
  s.send({ event: 'pusher:subscribe', data: JSON.stringify({ channel: c }) });
  for (const [ch, form] of [[a, 'auth ""'], [b, 'no auth'], [c, 'data as a JSON string']]) {
    const m = await s.expect(ev('pusher_internal:subscription_succeeded', ch), 2000, `public subscribe with ${form} did not succeed`);
    assert.equal(m.data, '{}', `subscription_succeeded data for a public channel must be the string "{}", got ${m.raw}`);
  }
  s.close();
});

test('subscribe without a channel gets pusher:error 4200', async () => {
  const s = await RawSocket.connect(app);
  s.send({ event: 'pusher:subscribe', data: { auth: '' } });
  const err = await s.expect(ev('pusher:error'), 2000, 'subscribe without channel did not get pusher:error');
  assert.equal(errorData(err).code, 4200, `subscribe without channel must get code 4200, got ${err.raw}`);
  await s.assertAlive();
  s.close();
});

test('private channel: token from the Node server SDK is accepted', async () => {
  const s = await RawSocket.connect(app);
  const ch = uniq('private-orders.');
  const m = await s.mustSubscribe(ch, sdk.authorizeChannel(s.socketId, ch), 'private channel with a valid SDK token was refused');
  assert.equal(m.data, '{}', 'subscription_succeeded data for a private channel must be "{}"');
  s.close();
});

test('private channel: bad signature gets pusher:error 4009 naming the channel; connection stays open', async () => {
  const s = await RawSocket.connect(app);
  const ch = uniq('private-secret-');
  const err = await expectSubscriptionRefused(s, ch, { auth: `${app.key}:${'0'.repeat(64)}` }, 'bad private signature');
  assert.equal(err.channel, ch, `pusher:error for a failed subscription must carry "channel", got ${err.raw}`);
  assert.ok(!/[0-9a-f]{64}/.test(err.raw), 'error message must not reveal the expected signature');
  await s.assertAlive('a failed subscription must not close the connection');
  s.close();
});

test('private channel: token for another socket id, wrong secret, missing auth and wrong key are refused', async () => {
  const s = await RawSocket.connect(app);
  const ch = uniq('private-n-');
  const [a, b] = s.socketId.split('.');
  const otherSocket = `${a}.${(BigInt(b) + 1n).toString()}`;
  await expectSubscriptionRefused(s, ch, { auth: sign(`${otherSocket}:${ch}`) }, 'token signed for another socket id (N1)');
  await expectSubscriptionRefused(
    s,
    ch,
    { auth: `${app.key}:${hmac('wrong-secret', `${s.socketId}:${ch}`)}` },
    'token signed with the wrong secret (N2)',
  );
  await expectSubscriptionRefused(s, ch, {}, 'private subscription without auth');
  await expectSubscriptionRefused(
    s,
    ch,
    { auth: `pt-other-key:${hmac(app.secret, `${s.socketId}:${ch}`)}` },
    'token whose key part is another key',
  );
  await expectSubscriptionRefused(s, `${ch}x`, { auth: sign(`${s.socketId}:${ch}`) }, 'token for another channel');
  s.close();
});

test('private channel: uppercase hex signature and key part in other case are accepted (protocol.md 3.6)', async () => {
  const s = await RawSocket.connect(app);
  const ch = uniq('private-case-');
  const sig = hmac(app.secret, `${s.socketId}:${ch}`);
  await s.mustSubscribe(ch, { auth: `${app.key}:${sig.toUpperCase()}` }, 'uppercase hex signature must be accepted');
  const ch2 = uniq('private-case-');
  const sig2 = hmac(app.secret, `${s.socketId}:${ch2}`);
  await s.mustSubscribe(ch2, { auth: `${app.key.toUpperCase()}:${sig2}` }, 'key part must be compared case-insensitively');
  s.close();
});

test('encrypted channel subscribes with a private-style signature', async () => {
  const s = await RawSocket.connect(app);
  const ch = uniq('private-encrypted-orders-');
  const token = sdk.authorizeChannel(s.socketId, ch);
  assert.ok(token.shared_secret, 'harness: SDK should return a shared_secret');
  await s.mustSubscribe(ch, { auth: token.auth }, 'encrypted channel with a private-style token was refused');
  s.close();
});

test('presence: Node SDK token accepted; roster has self with string ids', async () => {
  const s = await RawSocket.connect(app);
  const ch = uniq('presence-room-');
  const m = await s.mustSubscribe(
    ch,
    sdk.authorizeChannel(s.socketId, ch, { user_id: 'u-1', user_info: { name: 'Ada' } }),
    'presence subscription with a valid SDK token was refused',
  );
  assert.equal(typeof m.data, 'string', 'presence subscription_succeeded data must be a JSON string');
  const { presence } = JSON.parse(m.data);
  assert.deepEqual(presence.ids, ['u-1'], 'presence roster must contain the subscriber itself');
  assert.deepEqual(presence.hash, { 'u-1': { name: 'Ada' } }, 'presence hash must map id to user_info');
  assert.equal(presence.count, 1, 'presence count must be the number of distinct users');
  s.close();
});

test('presence: signature is checked over the exact channel_data bytes (Python and compact forms)', async () => {
  const s = await RawSocket.connect(app);
  const ch = uniq('presence-room-');
  // pusher-http-python's json.dumps: spaces after separators, non-ASCII as \u00eb (vector R4 shape)
  const pyData = '{"user_id": "42", "user_info": {"name": "Zo\\u00eb"}}';
  // compact, raw UTF-8 (vector R5 shape)
  const compact = '{"user_id":"43","user_info":{"name":"Zoë"}}';
  await s.mustSubscribe(
    ch,
    { auth: sign(`${s.socketId}:${ch}:${pyData}`), channel_data: pyData },
    'Python-serialised channel_data (spaces, \\u escapes) was refused: the signature must cover the bytes received',
  );
  const ch2 = uniq('presence-room-');
  await s.mustSubscribe(
    ch2,
    { auth: sign(`${s.socketId}:${ch2}:${compact}`), channel_data: compact },
    'compact UTF-8 channel_data was refused',
  );
  const ch3 = uniq('presence-room-');
  const other = '{"user_id":"42","user_info":{"name":"Zo\\u00eb"}}';
  await expectSubscriptionRefused(
    s,
    ch3,
    { auth: sign(`${s.socketId}:${ch3}:${pyData}`), channel_data: other },
    'token for one serialisation presented with another (N3)',
  );
  s.close();
});

test('presence: numeric user_id 10 is reported as the string "10"', async () => {
  const s = await RawSocket.connect(app);
  const ch = uniq('presence-num-');
  const data = '{"user_id":10,"user_info":{"name":"Mr. Pusher"}}';
  const m = await s.mustSubscribe(ch, { auth: sign(`${s.socketId}:${ch}:${data}`), channel_data: data });
  const { presence } = innerData(m);
  assert.deepEqual(presence.ids, ['10'], `presence ids must be strings: numeric user_id 10 must become "10", got ${m.data}`);
  assert.deepEqual(Object.keys(presence.hash), ['10'], 'presence hash keys must equal ids');
  s.close();
});

test('presence: subscription without channel_data and without sign-in is refused', async () => {
  const s = await RawSocket.connect(app);
  const ch = uniq('presence-nodata-');
  await expectSubscriptionRefused(s, ch, { auth: sign(`${s.socketId}:${ch}`) }, 'presence without channel_data on a connection not signed in');
  s.close();
});

test('duplicate subscribe is answered with subscription_succeeded again', async () => {
  const s = await RawSocket.connect(app);
  const ch = uniq('pub-dup-');
  await s.mustSubscribe(ch);
  await s.mustSubscribe(ch, {}, 'a second subscribe to the same channel must be answered with subscription_succeeded');
  s.close();
});

test('unsubscribe gets no reply, stops delivery, and unknown channels are ignored', async () => {
  const s = await RawSocket.connect(app);
  const ch = uniq('pub-unsub-');
  await s.mustSubscribe(ch);
  const mark = s.mark();
  s.send({ event: 'pusher:unsubscribe', data: { channel: ch } });
  s.send({ event: 'pusher:unsubscribe', data: { channel: uniq('never-subscribed-') } });
  await s.assertAlive();
  await sdk.trigger(ch, 'after-unsubscribe', { x: 1 });
  await s.expectNone(
    (m) => m.event !== 'pusher:pong',
    400,
    'unsubscribe must get no reply and stop delivery (including for unknown channels)',
    mark,
  );
  s.close();
});

test('an HTTP event arrives as {event, channel, data} with the publisher\'s data string untouched', async () => {
  const pub = uniq('pub-shape-');
  const s = await RawSocket.connect(app, { node: 1 });
  await s.mustSubscribe(pub);
  const data = '{"b": 1,  "a":"x\\/y"}';
  await sdk.trigger(pub, 'shape-event', data);
  const m = await s.expect(ev('shape-event', pub), 3000, 'HTTP-published event was not delivered to a subscriber');
  assert.equal(m.data, data, 'API event data must be delivered byte for byte as the publisher sent it');
  assert.deepEqual(Object.keys(m).filter((k) => !['raw', 'at'].includes(k)).sort(), ['channel', 'data', 'event']);
  s.close();
});

test('one publish to two channels gives a subscriber of both two messages', async () => {
  const a = uniq('pub-two-a-');
  const b = uniq('pub-two-b-');
  const s = await RawSocket.connect(app, { node: 1 });
  await s.mustSubscribe(a);
  await s.mustSubscribe(b);
  await sdk.trigger([a, b], 'twice', { n: 1 });
  await s.expect(ev('twice', a), 3000, 'event published to two channels missing on the first');
  await s.expect(ev('twice', b), 3000, 'event published to two channels missing on the second');
  s.close();
});

test('events published one after another arrive in publish order', async () => {
  const ch = uniq('pub-order-');
  const s = await RawSocket.connect(app, { node: 1 });
  await s.mustSubscribe(ch);
  for (let i = 0; i < 20; i++) await sdk.trigger(ch, 'seq', String(i));
  await s.expect((m) => m.event === 'seq' && m.data === '19', 3000, 'not all sequential events arrived');
  const order = s.seen(ev('seq', ch)).map((m) => m.data);
  assert.deepEqual(order, Array.from({ length: 20 }, (_, i) => String(i)), 'events on one connection must keep publish order');
  s.close();
});
