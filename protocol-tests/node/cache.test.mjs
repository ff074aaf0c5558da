// Spec 2.7: cache channels keep the last HTTP-published event (even with no subscribers) and
// hand it to each new subscriber right after subscription_succeeded; an empty cache gives
// pusher:cache_miss; client events are never cached; entries expire after cache_ttl.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { APPS, serverSdk, uniq, sleep } from '../lib/env.mjs';
import { RawSocket, ev, closeAllRaw } from '../lib/raw.mjs';
import { pusherJs, connected, subscribed, nextEvent, closeAllClients } from '../lib/clients.mjs';

after(() => {
  closeAllRaw();
  closeAllClients();
});

const app = APPS.main;
const sdk = serverSdk(app);

/** Index of the first frame matching pred, or -1. */
const indexOf = (s, pred) => s.messages.findIndex(pred);

test('event published before anyone subscribed is delivered after subscription_succeeded', async () => {
  const ch = uniq('cache-prices-');
  await sdk.trigger(ch, 'price-updated', { price: 41 });
  await sdk.trigger(ch, 'price-updated', { price: 42 });
  const s = await RawSocket.connect(app, { node: 1 });
  await s.mustSubscribe(ch);
  const cached = await s.expect(ev('price-updated', ch), 3000, 'cache channel did not deliver the event published before the subscription');
  assert.equal(cached.data, '{"price":42}', 'the cached event must be the last one published, data untouched');
  assert.ok(
    indexOf(s, ev('pusher_internal:subscription_succeeded', ch)) < indexOf(s, ev('price-updated', ch)),
    'the cached event must come after subscription_succeeded',
  );
  await s.expectNone(ev('pusher:cache_miss', ch), 200, 'cache_miss was sent for a channel with a cached event');
  s.close();
});

test('empty cache channel gives pusher:cache_miss after subscription_succeeded', async () => {
  const ch = uniq('cache-empty-');
  const s = await RawSocket.connect(app);
  await s.mustSubscribe(ch);
  const miss = await s.expect(ev('pusher:cache_miss', ch), 3000, 'subscribing to an empty cache channel must produce pusher:cache_miss');
  assert.equal(miss.channel, ch, 'pusher:cache_miss must carry the channel');
  assert.ok(
    indexOf(s, ev('pusher_internal:subscription_succeeded', ch)) < indexOf(s, ev('pusher:cache_miss', ch)),
    'cache_miss must come after subscription_succeeded',
  );
  s.close();
});

test('private-cache and presence-cache channels also serve the cached event', async () => {
  const pc = uniq('private-cache-state-');
  const prc = uniq('presence-cache-room-');
  await sdk.trigger([pc, prc], 'state', { v: 1 });
  const s = await RawSocket.connect(app);
  await s.mustSubscribe(pc, sdk.authorizeChannel(s.socketId, pc));
  await s.expect(ev('state', pc), 3000, 'private-cache channel did not deliver the cached event');
  await s.mustSubscribe(prc, sdk.authorizeChannel(s.socketId, prc, { user_id: 'c1' }));
  await s.expect(ev('state', prc), 3000, 'presence-cache channel did not deliver the cached event');
  s.close();
});

test('client events (whispers) are never cached', async () => {
  const ch = uniq('private-cache-whisper-');
  const a = await RawSocket.connect(app);
  const b = await RawSocket.connect(app, { node: 1 });
  await a.mustSubscribe(ch, sdk.authorizeChannel(a.socketId, ch));
  await b.mustSubscribe(ch, sdk.authorizeChannel(b.socketId, ch));
  a.send({ event: 'client-typing', channel: ch, data: { typing: true } });
  await b.expect(ev('client-typing', ch), 3000, 'harness: whisper on a private-cache channel was not relayed');
  const c = await RawSocket.connect(app);
  await c.mustSubscribe(ch, sdk.authorizeChannel(c.socketId, ch));
  await c.expect(ev('pusher:cache_miss', ch), 3000, 'a whisper was cached: a later subscriber did not get cache_miss');
  assert.equal(c.seen(ev('client-typing', ch)).length, 0, 'a whisper was served from the cache');
  a.close();
  b.close();
  c.close();
});

test('pusher-js receives the cached event through its normal binding, and cache_miss on an empty channel', async () => {
  const hit = uniq('cache-js-');
  const miss = uniq('cache-js-miss-');
  await sdk.trigger(hit, 'snapshot', { items: [1, 2] });
  const c = pusherJs(app, { node: 1 });
  await connected(c);
  const ch = c.subscribe(hit);
  const got = nextEvent(ch, 'snapshot', 3000, 'pusher-js did not receive the cached event');
  assert.deepEqual(await got, { items: [1, 2] }, 'pusher-js got the cached event with altered data');
  const ch2 = c.subscribe(miss);
  await nextEvent(ch2, 'pusher:cache_miss', 3000, 'pusher-js did not emit pusher:cache_miss on an empty cache channel');
});

test('GET /channels/{name}?info=cache returns {data, ttl} or null', async () => {
  const ch = uniq('cache-info-');
  const empty = await (await sdk.get({ path: `/channels/${ch}`, params: { info: 'cache' } })).json();
  assert.equal(empty.occupied, false, 'a cache channel without subscribers must report occupied:false');
  assert.ok('cache' in empty, `info=cache must return a cache field, got ${JSON.stringify(empty)}`);
  assert.equal(empty.cache, null, 'cache must be null for an empty cache channel');
  await sdk.trigger(ch, 'e', { x: 1 });
  const full = await (await sdk.get({ path: `/channels/${ch}`, params: { info: 'cache' } })).json();
  assert.equal(full.cache?.data, '{"x":1}', `cache.data must be the last event data, got ${JSON.stringify(full)}`);
  assert.equal(typeof full.cache?.ttl, 'number', 'cache.ttl must be a number of seconds');
  assert.ok(full.cache.ttl > 0 && full.cache.ttl <= 1800, `cache.ttl must be within (0, cache_ttl], got ${full.cache.ttl}`);
});

test('cached event expires after cache_ttl', async () => {
  const L = APPS.limits;
  const lsdk = serverSdk(L);
  const ch = uniq('cache-ttl-');
  await lsdk.trigger(ch, 'short-lived', { v: 1 });
  const early = await RawSocket.connect(L);
  await early.mustSubscribe(ch);
  await early.expect(ev('short-lived', ch), 3000, 'harness: cache entry missing before the TTL');
  early.close();
  await sleep((L.cacheTtl + 1) * 1000 + 200);
  const late = await RawSocket.connect(L);
  await late.mustSubscribe(ch);
  await late.expect(ev('pusher:cache_miss', ch), 3000, `cache entry still served after cache_ttl (${L.cacheTtl} s)`);
  late.close();
});
