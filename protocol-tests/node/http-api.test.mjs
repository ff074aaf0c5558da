// Spec 5: the HTTP API through pusher-http-node (and a hand-rolled signer for what the SDK refuses
// to build): triggering, limits, socket_id exclusion, info, batches, channel queries, users,
// connections, health, and request authentication.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { APPS, node, serverSdk, uniq, eventually } from '../lib/env.mjs';
import { RawSocket, ev, closeAllRaw } from '../lib/raw.mjs';
import { pusherJs, connected, subscribed, nextEvent, collect, closeAllClients } from '../lib/clients.mjs';
import { signedRequest, signedQuery, hmac } from '../lib/sign.mjs';

after(() => {
  closeAllRaw();
  closeAllClients();
});

const app = APPS.main;
const sdk = serverSdk(app);

/** Run an SDK call; return {status, json, body} whether it succeeded or not. */
async function call(p) {
  try {
    const res = await p;
    const body = await res.text();
    let json;
    try {
      json = JSON.parse(body);
    } catch {
      json = undefined;
    }
    return { status: res.status, body, json, res };
  } catch (e) {
    if (e.status === undefined) throw e;
    return { status: e.status, body: e.body, json: undefined };
  }
}

const post = (path, body) => call(sdk.post({ path, body }));
const get = (path, params) => call(sdk.get({ path, params }));

test('trigger to one channel: 200 {} with JSON content type, received by pusher-js', async () => {
  const ch = uniq('orders-');
  const c = pusherJs(app, { node: 1 });
  await connected(c);
  const channel = await subscribed(c, ch);
  const got = nextEvent(channel, 'created', 3000, 'event triggered by the Node SDK was not received by pusher-js');
  const r = await call(sdk.trigger(ch, 'created', { id: 1 }));
  assert.equal(r.status, 200, 'trigger must answer exactly 200');
  assert.deepEqual(r.json, {}, `trigger without info must answer {}, got ${r.body}`);
  assert.match(r.res.headers.get('content-type') ?? '', /^application\/json/, 'responses must be application/json');
  assert.deepEqual(await got, { id: 1 }, 'pusher-js received altered data');
});

test('trigger with "channel" (single string) instead of "channels" is accepted', async () => {
  const ch = uniq('single-');
  const s = await RawSocket.connect(app, { node: 1 });
  await s.mustSubscribe(ch);
  const r = await post('/events', { name: 'one', data: '{"x":1}', channel: ch });
  assert.equal(r.status, 200, `body with "channel" must be accepted, got ${r.status} ${r.body}`);
  await s.expect(ev('one', ch), 3000, 'event sent with "channel" was not delivered');
  s.close();
});

test('100 channels per event are accepted, 101 get 400', async () => {
  const base = uniq('many-');
  const chans = Array.from({ length: 101 }, (_, i) => `${base}-${i}`);
  const s = await RawSocket.connect(app, { node: 1 });
  await s.mustSubscribe(chans[99]);
  const ok = await post('/events', { name: 'fan', data: '{}', channels: chans.slice(0, 100) });
  assert.equal(ok.status, 200, `100 channels must be accepted, got ${ok.status} ${ok.body}`);
  await s.expect(ev('fan', chans[99]), 3000, 'event to 100 channels was not delivered to the 100th');
  const bad = await post('/events', { name: 'fan2', data: '{}', channels: chans });
  assert.equal(bad.status, 400, `101 channels must get 400, got ${bad.status} ${bad.body}`);
  s.close();
});

test('data of 10240 bytes is accepted, 10241 bytes get 413', async () => {
  const ch = uniq('size-');
  const ok = await post('/events', { name: 'big', data: 'x'.repeat(10240), channels: [ch] });
  assert.equal(ok.status, 200, `10240-byte data must be accepted, got ${ok.status} ${ok.body}`);
  const bad = await post('/events', { name: 'big', data: 'x'.repeat(10241), channels: [ch] });
  assert.equal(bad.status, 413, `10241-byte data must get 413, got ${bad.status} ${bad.body}`);
  const multi = await post('/events', { name: 'big', data: 'é'.repeat(5121), channels: [ch] });
  assert.equal(multi.status, 413, `data is limited in UTF-8 bytes: 5121 "é" (10242 bytes) must get 413, got ${multi.status}`);
});

test('socket_id exclusion: the excluded pusher-js client does not get the event, others do', async () => {
  const ch = uniq('excl-');
  const ch2 = uniq('excl2-');
  const a = pusherJs(app);
  const b = pusherJs(app, { node: 1 });
  await Promise.all([connected(a), connected(b)]);
  const [ca, cb] = [await subscribed(a, ch), await subscribed(b, ch)];
  const ca2 = await subscribed(a, ch2);
  const aGot = collect(ca, 'ping');
  const aGot2 = collect(ca2, 'ping');
  const bGot = nextEvent(cb, 'ping', 3000, 'non-excluded client did not receive the event');
  await sdk.trigger([ch, ch2], 'ping', { n: 1 }, { socket_id: a.connection.socket_id });
  await bGot;
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(aGot.length + aGot2.length, 0, 'the connection named by socket_id received the event');
});

test('invalid socket_id gets 400', async () => {
  for (const socketId of ['abc', '1.2.3', '12', '-1.5', '1.2x']) {
    const r = await post('/events', { name: 'e', data: '{}', channels: [uniq('c-')], socket_id: socketId });
    assert.equal(r.status, 400, `socket_id "${socketId}" must get 400, got ${r.status} ${r.body}`);
  }
});

test('validation errors get 400: missing name/data/channels, bad channel name, long name, pusher_internal name', async () => {
  const ch = uniq('val-');
  const cases = [
    [{ data: '{}', channels: [ch] }, 'missing name'],
    [{ name: 'e', channels: [ch] }, 'missing data'],
    [{ name: 'e', data: '{}' }, 'neither channel nor channels'],
    [{ name: 'e', data: '{}', channels: ['bad channel'] }, 'invalid channel name'],
    [{ name: 'e'.repeat(201), data: '{}', channels: [ch] }, 'event name over 200 characters'],
    [{ name: 'pusher_internal:member_added', data: '{}', channels: [ch] }, 'event name starting with pusher_internal:'],
  ];
  for (const [body, what] of cases) {
    const r = await post('/events', body);
    assert.equal(r.status, 400, `${what} must get 400, got ${r.status} ${r.body}`);
    const err = JSON.parse(r.body ?? 'null');
    assert.ok(
      err && typeof err.error === 'string' && err.code === 400,
      `error responses should be {"error": message, "code": status} (protocol.md 5.1), got ${r.body}`,
    );
  }
  const malformed = await signedRequest(app, 'POST', '/events', { body: '{"name":' });
  assert.equal(malformed.status, 400, `malformed JSON body must get 400, got ${malformed.status}`);
});

test('trigger with info returns user_count for presence and subscription_count for all channels', async () => {
  const pres = uniq('presence-info-');
  const pub = uniq('info-');
  const empty = uniq('info-empty-');
  const a = await RawSocket.connect(app);
  const b = await RawSocket.connect(app, { node: 1 });
  for (const [s, u] of [[a, 'i1'], [b, 'i1']]) await s.mustSubscribe(pres, sdk.authorizeChannel(s.socketId, pres, { user_id: u }));
  await a.mustSubscribe(pub);
  await b.mustSubscribe(pub);
  const r = await call(sdk.trigger([pres, pub, empty], 'e', {}, { info: 'user_count,subscription_count' }));
  assert.equal(r.status, 200, `trigger with info must answer 200, got ${r.status} ${r.body}`);
  assert.deepEqual(
    r.json,
    {
      channels: {
        [pres]: { user_count: 1, subscription_count: 2 },
        [pub]: { subscription_count: 2 },
        [empty]: { subscription_count: 0 },
      },
    },
    `info response shape (user_count only for presence, distinct users; subscription_count = connections): ${r.body}`,
  );
  a.close();
  b.close();
});

test('batch: 10 events accepted ({} without info), 11 get 400', async () => {
  const ch = uniq('batch-');
  const s = await RawSocket.connect(app, { node: 1 });
  await s.mustSubscribe(ch);
  const ten = Array.from({ length: 10 }, (_, i) => ({ channel: ch, name: `b${i}`, data: String(i) }));
  const r = await call(sdk.triggerBatch(ten));
  assert.equal(r.status, 200, `a batch of 10 must be accepted, got ${r.status} ${r.body}`);
  assert.deepEqual(r.json, {}, `batch without info must answer {}, got ${r.body}`);
  for (let i = 0; i < 10; i++) await s.expect(ev(`b${i}`, ch), 3000, `batch event ${i} was not delivered`);
  const order = s.seen((m) => m.channel === ch && m.event.startsWith('b')).map((m) => m.event);
  assert.deepEqual(order, ten.map((e) => e.name), 'batch events must be delivered in order');
  const eleven = [...ten, { channel: ch, name: 'b10', data: '10' }];
  const r11 = await call(sdk.triggerBatch(eleven.map((e) => ({ ...e }))));
  assert.equal(r11.status, 400, `a batch of 11 must get 400, got ${r11.status} ${r11.body}`);
  s.close();
});

test('batch is all-or-nothing: one invalid item means nothing is published', async () => {
  const ch = uniq('atomic-');
  const s = await RawSocket.connect(app, { node: 1 });
  await s.mustSubscribe(ch);
  const r = await post('/batch_events', {
    batch: [
      { channel: ch, name: 'good', data: '{}' },
      { channel: 'bad channel name', name: 'bad', data: '{}' },
    ],
  });
  assert.equal(r.status, 400, `batch with an invalid item must get 400, got ${r.status} ${r.body}`);
  const big = await post('/batch_events', {
    batch: [
      { channel: ch, name: 'good2', data: '{}' },
      { channel: ch, name: 'big', data: 'x'.repeat(10241) },
    ],
  });
  assert.equal(big.status, 413, `batch with an oversized item must get 413, got ${big.status} ${big.body}`);
  await s.expectNone((m) => m.channel === ch && (m.event === 'good' || m.event === 'good2'), 400, 'a rejected batch published some of its items');
  const missing = await post('/batch_events', { nope: [] });
  assert.equal(missing.status, 400, `batch body without "batch" must get 400, got ${missing.status}`);
  s.close();
});

test('batch with info answers {"batch":[...]} with {} for items without info', async () => {
  const pres = uniq('presence-binfo-');
  const pub = uniq('binfo-');
  const s = await RawSocket.connect(app);
  await s.mustSubscribe(pres, sdk.authorizeChannel(s.socketId, pres, { user_id: 'bi' }));
  const r = await call(
    sdk.triggerBatch([
      { channel: pres, name: 'x', data: '{}', info: 'user_count,subscription_count' },
      { channel: pub, name: 'y', data: '{}' },
      { channel: pub, name: 'z', data: '{}', info: 'subscription_count' },
    ]),
  );
  assert.equal(r.status, 200, `batch with info must answer 200, got ${r.status} ${r.body}`);
  assert.deepEqual(
    r.json,
    { batch: [{ user_count: 1, subscription_count: 1 }, {}, { subscription_count: 0 }] },
    `batch info response shape, got ${r.body}`,
  );
  s.close();
});

test('GET /channels/{name}: occupied always present, counts, user_count on a public channel is 400', async () => {
  const pub = uniq('one-');
  const pres = uniq('presence-one-');
  const unocc = await get(`/channels/${uniq('nobody-')}`);
  assert.equal(unocc.status, 200, `GET /channels/{name} of an unoccupied channel must answer 200, got ${unocc.status}`);
  assert.equal(unocc.json.occupied, false, `unoccupied channel must answer occupied:false, got ${unocc.body}`);
  const s = await RawSocket.connect(app);
  const t = await RawSocket.connect(app);
  await s.mustSubscribe(pub);
  await s.mustSubscribe(pres, sdk.authorizeChannel(s.socketId, pres, { user_id: 'g1' }));
  await t.mustSubscribe(pres, sdk.authorizeChannel(t.socketId, pres, { user_id: 'g2' }));
  const plain = await get(`/channels/${pub}`);
  assert.deepEqual(plain.json, { occupied: true }, `GET /channels/{name} without info must answer {"occupied":true}, got ${plain.body}`);
  const withCount = await get(`/channels/${pub}`, { info: 'subscription_count' });
  assert.deepEqual(withCount.json, { occupied: true, subscription_count: 1 }, `got ${withCount.body}`);
  const bad = await get(`/channels/${pub}`, { info: 'user_count' });
  assert.equal(bad.status, 400, `info=user_count on a public channel must get 400, got ${bad.status} ${bad.body}`);
  const p = await get(`/channels/${pres}`, { info: 'user_count,subscription_count' });
  assert.deepEqual(p.json, { occupied: true, user_count: 2, subscription_count: 2 }, `presence channel info, got ${p.body}`);
  const invalid = await call(sdk.get({ path: '/channels/bad%20name' }));
  assert.equal(invalid.status, 400, `invalid channel name must get 400, got ${invalid.status}`);
  s.close();
  t.close();
  const gone = await eventually(async () => (await get(`/channels/${pub}`)).json?.occupied === false, 3000);
  assert.ok(gone, 'channel must become unoccupied once its last subscriber disconnected');
});

test('GET /channels/{name}/users: ids as strings, {"users":[]} when empty, 400 for non-presence', async () => {
  const pres = uniq('presence-users-');
  const empty = await get(`/channels/${pres}/users`);
  assert.equal(empty.status, 200, `users of an unoccupied presence channel must be 200, got ${empty.status}`);
  assert.deepEqual(empty.json, { users: [] }, `unoccupied presence channel must answer {"users":[]}, got ${empty.body}`);
  const a = await RawSocket.connect(app);
  const b = await RawSocket.connect(app);
  const c = await RawSocket.connect(app, { node: 1 });
  const cd = '{"user_id":10}';
  await a.mustSubscribe(pres, { auth: `${app.key}:${hmac(app.secret, `${a.socketId}:${pres}:${cd}`)}`, channel_data: cd });
  await b.mustSubscribe(pres, sdk.authorizeChannel(b.socketId, pres, { user_id: 'eleven' }));
  await c.mustSubscribe(pres, sdk.authorizeChannel(c.socketId, pres, { user_id: 'eleven' }));
  const r = await get(`/channels/${pres}/users`);
  const ids = (r.json?.users ?? []).map((u) => u.id).sort();
  assert.deepEqual(ids, ['10', 'eleven'], `users endpoint must list distinct users with string ids, got ${r.body}`);
  const pub = await get(`/channels/${uniq('not-presence-')}/users`);
  assert.equal(pub.status, 400, `users endpoint on a non-presence channel must get 400, got ${pub.status}`);
  a.close();
  b.close();
  c.close();
});

test('non-string data is serialised compactly; unknown routes get 404', async () => {
  const ch = uniq('objdata-');
  const s = await RawSocket.connect(app, { node: 1 });
  await s.mustSubscribe(ch);
  const r = await post('/events', { name: 'obj', data: { a: 1, b: [true, null] }, channels: [ch] });
  assert.equal(r.status, 200, `object data should be accepted and serialised (protocol.md 5.4), got ${r.status} ${r.body}`);
  const m = await s.expect(ev('obj', ch), 3000, 'event with object data was not delivered');
  assert.equal(m.data, '{"a":1,"b":[true,null]}', `object data must be delivered as its compact JSON string, got ${m.raw}`);
  s.close();
  const unknown = await get('/no-such-endpoint');
  assert.equal(unknown.status, 404, `an unknown API route must get 404, got ${unknown.status}`);
});

test('/up answers 200', async () => {
  const res = await fetch(`${node(0).httpBase}/up`, { signal: AbortSignal.timeout(3000) });
  assert.equal(res.status, 200, 'health check /up must answer 200');
  const body = await res.json().catch(() => null);
  assert.deepEqual(body, { health: 'OK' }, 'health check body should be {"health":"OK"} like Reverb');
});

test('request authentication: bad signature, wrong key, expired timestamp, body_md5 mismatch get 401; unknown app 404', async () => {
  const body = { name: 'e', data: '{}', channels: [uniq('auth-')] };
  const cases = [
    [{ override: { signature: 'f'.repeat(64) } }, 401, 'bad signature'],
    [{ key: 'pt-other-key' }, 401, 'auth_key of another app'],
    // The exact 600/601 boundary is checked in the server's unit tests (H1). Here the
    // clock may tick between signing and checking, so the refused cases stay well outside.
    [{ timestamp: Math.floor(Date.now() / 1000) - 610 }, 401, 'timestamp 610 s in the past'],
    [{ timestamp: Math.floor(Date.now() / 1000) + 610 }, 401, 'timestamp 610 s in the future'],
    [{ override: { afterSign: { body_md5: 'ec365a775a4cd0599faeb73354201b6f' } } }, 401, 'body_md5 mismatch'],
    [{ secret: 'wrong-secret' }, 401, 'signed with the wrong secret'],
  ];
  for (const [opts, status, what] of cases) {
    const r = await signedRequest(app, 'POST', '/events', { body, ...opts });
    assert.equal(r.status, status, `${what} must get ${status}, got ${r.status} ${r.text}`);
  }
  for (const skew of [-590, 590]) {
    const ok = await signedRequest(app, 'POST', '/events', { body, timestamp: Math.floor(Date.now() / 1000) + skew });
    assert.equal(ok.status, 200, `timestamp ${skew} s off is inside the 600 s window and must be accepted, got ${ok.status} ${ok.text}`);
  }
  // N4: signed for one body, sent with one trailing space more
  const text = JSON.stringify(body);
  const { query } = signedQuery({ app, method: 'POST', path: `/apps/${app.id}/events`, body: text });
  const n4 = await fetch(`${node(0).httpBase}/apps/${app.id}/events?${query}`, {
    method: 'POST',
    body: `${text} `,
    headers: { 'content-type': 'application/json' },
  });
  assert.equal(n4.status, 401, `a body that does not match body_md5 (one extra space, N4) must get 401, got ${n4.status}`);
  const tampered = await fetch(
    `${node(0).httpBase}/apps/${app.id}/events?auth_key=${app.key}&auth_timestamp=${Math.floor(Date.now() / 1000)}&auth_version=1.0`,
    { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } },
  );
  assert.equal(tampered.status, 401, `missing auth_signature must get 401, got ${tampered.status}`);
  const unknown = await signedRequest({ ...app, id: '999999999' }, 'GET', '/channels');
  assert.equal(unknown.status, 404, `unknown app id must get 404, got ${unknown.status}`);
  const disabled = await signedRequest(APPS.disabled, 'POST', '/events', { body });
  assert.equal(disabled.status, 403, `request for a disabled app must get 403, got ${disabled.status}`);
});

test('GET with body_md5 of the empty body (pusher-http-python style) and percent-encoded values are accepted', async () => {
  const py = await signedRequest(app, 'GET', '/channels', { style: 'python', params: { filter_by_prefix: 'presence-', info: 'user_count' } });
  assert.equal(py.status, 200, `GET signed with body_md5 of "" must be accepted (protocol.md 0.4 rule 2), got ${py.status} ${py.text}`);
  const php = await signedRequest(app, 'GET', `/channels/${uniq('presence-enc-')}`, {
    style: 'php',
    params: { info: 'user_count,subscription_count' },
  });
  assert.equal(php.status, 200, `percent-encoded query values must be decoded before signing (N7), got ${php.status} ${php.text}`);
});

// App-wide answers need an app nobody else uses: the "quiet" app, in this one sequence.
const quiet = APPS.quiet;
const qsdk = serverSdk(quiet);

test('GET /channels: {"channels":{}} when nothing is occupied, filter_by_prefix, user_count needs presence- prefix', async () => {
  const empty = await call(qsdk.get({ path: '/channels' }));
  assert.equal(empty.status, 200, `GET /channels must answer 200, got ${empty.status} ${empty.body}`);
  assert.deepEqual(empty.json, { channels: {} }, `no occupied channels must answer {"channels":{}} (an object), got ${empty.body}`);
  const s = await RawSocket.connect(quiet);
  const t = await RawSocket.connect(quiet);
  await s.mustSubscribe('news');
  await s.mustSubscribe('presence-lobby', qsdk.authorizeChannel(s.socketId, 'presence-lobby', { user_id: 'q1' }));
  await t.mustSubscribe('presence-lobby', qsdk.authorizeChannel(t.socketId, 'presence-lobby', { user_id: 'q2' }));
  await s.mustSubscribe('private-room', qsdk.authorizeChannel(s.socketId, 'private-room'));
  await t.signin(qsdk, { id: 'q2' });
  await t.mustSubscribe('#server-to-user-q2');
  const all = await call(qsdk.get({ path: '/channels' }));
  assert.deepEqual(
    all.json,
    { channels: { news: {}, 'presence-lobby': {}, 'private-room': {} } },
    `GET /channels must list occupied channels with {} values (and no #server-to-user- channels), got ${all.body}`,
  );
  const pres = await call(qsdk.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } }));
  assert.deepEqual(pres.json, { channels: { 'presence-lobby': { user_count: 2 } } }, `filter_by_prefix + user_count, got ${pres.body}`);
  const priv = await call(qsdk.get({ path: '/channels', params: { filter_by_prefix: 'private-' } }));
  assert.deepEqual(priv.json, { channels: { 'private-room': {} } }, `filter_by_prefix=private-, got ${priv.body}`);
  const bad = await call(qsdk.get({ path: '/channels', params: { info: 'user_count' } }));
  assert.equal(bad.status, 400, `info=user_count without a presence- prefix filter must get 400, got ${bad.status}`);
  const bad2 = await call(qsdk.get({ path: '/channels', params: { filter_by_prefix: 'private-', info: 'user_count' } }));
  assert.equal(bad2.status, 400, `info=user_count with filter_by_prefix=private- must get 400, got ${bad2.status}`);
  s.close();
  t.close();
  const cleared = await eventually(async () => {
    const r = await call(qsdk.get({ path: '/channels' }));
    return JSON.stringify(r.json) === '{"channels":{}}';
  }, 3000);
  assert.ok(cleared, 'channels must disappear from GET /channels once their subscribers disconnect');
});

test('GET /apps/{id}/connections counts the app\'s open connections', async () => {
  const count = async () => (await call(qsdk.get({ path: '/connections' }))).json;
  const base = await eventually(async () => (await count())?.connections === 0, 3000);
  assert.ok(base, `connections must be 0 for an app without clients, got ${JSON.stringify(await count())}`);
  const socks = await Promise.all([RawSocket.connect(quiet), RawSocket.connect(quiet), RawSocket.connect(quiet, { node: 1 })]);
  const three = await eventually(async () => (await count())?.connections === 3, 3000);
  assert.ok(three, `GET /connections must answer {"connections":3} with three open connections, got ${JSON.stringify(await count())}`);
  for (const s of socks) s.close();
  const zero = await eventually(async () => (await count())?.connections === 0, 3000);
  assert.ok(zero, 'connection count must drop back after the clients disconnect');
});
