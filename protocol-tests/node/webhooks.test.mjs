// Spec 6: webhooks of the "hooks" app, posted to a receiver this file runs on 127.0.0.1:29613
// (the URL configured in resound.toml). Checks the request (exact Content-Type, X-Pusher-Key,
// signature over the raw body, time_ms in milliseconds, accepted by pusher-http-node's
// webhook().isValid()), the event shapes, and the delayed, cancellable removals.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { APPS, serverSdk, uniq, sleep, eventually } from '../lib/env.mjs';
import { RawSocket, ev, closeAllRaw } from '../lib/raw.mjs';
import { hmac } from '../lib/sign.mjs';

const app = APPS.hooks;
const sdk = serverSdk(app);
const received = []; // {headers, rawBody, body, at}
let receiver;

before(async () => {
  receiver = http.createServer(async (req, res) => {
    let raw = '';
    for await (const chunk of req) raw += chunk;
    let body;
    try {
      body = JSON.parse(raw);
    } catch {
      body = null;
    }
    received.push({ headers: req.headers, rawBody: raw, body, at: Date.now(), path: req.url });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{}');
  });
  await new Promise((resolve, reject) => {
    receiver.once('error', (e) => reject(new Error(`cannot run the webhook receiver on 127.0.0.1:${app.webhookPort}: ${e.message}`)));
    receiver.listen(app.webhookPort, '127.0.0.1', resolve);
  });
});

after(async () => {
  closeAllRaw();
  await new Promise((r) => receiver?.close(r) ?? r());
});

/** Every webhook event (with its request) whose channel is `channel`. */
function eventsFor(channel) {
  const out = [];
  for (const r of received) for (const e of r.body?.events ?? []) if (e.channel === channel) out.push({ ...e, request: r });
  return out;
}

async function waitHook(channel, name, ms, what) {
  const found = await eventually(() => eventsFor(channel).find((e) => e.name === name), ms, 25);
  if (!found) {
    throw new Error(`${what} within ${ms} ms; webhooks seen for ${channel}: ${JSON.stringify(eventsFor(channel).map(({ request, ...e }) => e))}`);
  }
  return found;
}

test('channel_occupied: JSON body signed with the app secret, exact Content-Type, accepted by pusher-http-node', async () => {
  const ch = uniq('hooked-');
  const s = await RawSocket.connect(app);
  const t0 = Date.now();
  await s.mustSubscribe(ch);
  const e = await waitHook(ch, 'channel_occupied', 3000, 'no channel_occupied webhook after the first subscription');
  const { headers, rawBody, body } = e.request;
  assert.equal(headers['content-type'], 'application/json', `webhook Content-Type must be exactly application/json, got ${headers['content-type']}`);
  assert.equal(headers['x-pusher-key'], app.key, 'X-Pusher-Key must be the app key');
  assert.equal(headers['x-pusher-signature'], hmac(app.secret, rawBody), 'X-Pusher-Signature must be HMAC-SHA256 of the raw body');
  assert.ok(sdk.webhook({ headers, rawBody }).isValid(), 'pusher-http-node webhook().isValid() rejected the webhook');
  assert.equal(typeof body.time_ms, 'number', 'time_ms must be a number');
  assert.ok(Math.abs(body.time_ms - t0) < 10000, `time_ms must be Unix time in milliseconds, got ${body.time_ms}`);
  assert.deepEqual({ name: e.name, channel: e.channel }, { name: 'channel_occupied', channel: ch });
  s.close();
});

test('channel_vacated is delayed by the removal delay, and cancelled (with the re-occupation) when the channel is re-joined in time', async () => {
  const ch = uniq('vacate-');
  const s = await RawSocket.connect(app);
  await s.mustSubscribe(ch);
  await waitHook(ch, 'channel_occupied', 3000, 'no channel_occupied webhook');
  const left = Date.now();
  s.send({ event: 'pusher:unsubscribe', data: { channel: ch } });
  const v = await waitHook(ch, 'channel_vacated', 6000, 'no channel_vacated webhook after the last subscriber left');
  assert.ok(v.request.at - left >= app.removalDelay * 1000 - 200, `channel_vacated came ${v.request.at - left} ms after the vacate, before the removal delay`);

  const ch2 = uniq('flap-');
  await s.mustSubscribe(ch2);
  await waitHook(ch2, 'channel_occupied', 3000, 'no channel_occupied webhook');
  s.send({ event: 'pusher:unsubscribe', data: { channel: ch2 } });
  await s.mustSubscribe(ch2);
  await sleep(app.removalDelay * 1000 + 1000);
  const names = eventsFor(ch2).map((e) => e.name);
  assert.deepEqual(names, ['channel_occupied'], `a re-join within the removal delay must send neither channel_vacated nor a second channel_occupied, got ${names}`);
  s.close();
});

test('member_added and member_removed carry the user_id as a string', async () => {
  const ch = uniq('presence-hooked-');
  const s = await RawSocket.connect(app);
  const cd = '{"user_id":10,"user_info":{"name":"Ten"}}';
  await s.mustSubscribe(ch, { auth: `${app.key}:${hmac(app.secret, `${s.socketId}:${ch}:${cd}`)}`, channel_data: cd });
  const added = await waitHook(ch, 'member_added', 3000, 'no member_added webhook');
  assert.equal(added.user_id, '10', `member_added user_id must be the string "10", got ${JSON.stringify(added.user_id)}`);
  s.close();
  const removed = await waitHook(ch, 'member_removed', 6000, 'no member_removed webhook after the member left');
  assert.equal(removed.user_id, '10', 'member_removed user_id must be the string "10"');
});

test('client_event webhook: event, data as a string, socket_id, and user_id on presence', async () => {
  const ch = uniq('presence-chatty-');
  const a = await RawSocket.connect(app);
  const b = await RawSocket.connect(app, { node: 1 });
  await a.mustSubscribe(ch, sdk.authorizeChannel(a.socketId, ch, { user_id: 'talker' }));
  await b.mustSubscribe(ch, sdk.authorizeChannel(b.socketId, ch, { user_id: 'listener' }));
  a.send({ event: 'client-typing', channel: ch, data: { typing: true } });
  await b.expect(ev('client-typing', ch), 3000, 'harness: client event not relayed');
  const e = await waitHook(ch, 'client_event', 3000, 'no client_event webhook');
  assert.equal(e.event, 'client-typing');
  assert.equal(typeof e.data, 'string', `client_event data must be a string (objects serialised), got ${JSON.stringify(e.data)}`);
  assert.deepEqual(JSON.parse(e.data), { typing: true }, `client_event data must be the sent data, got ${e.data}`);
  assert.equal(e.socket_id, a.socketId, 'client_event socket_id must be the sender');
  assert.equal(e.user_id, 'talker', 'client_event on a presence channel must carry the sender user_id');
  a.close();
  b.close();
});

test('cache_miss webhook is sent once for simultaneous subscribers of an empty cache channel', async () => {
  const ch = uniq('cache-hooked-');
  const a = await RawSocket.connect(app);
  const b = await RawSocket.connect(app);
  await Promise.all([a.mustSubscribe(ch), b.mustSubscribe(ch)]);
  await waitHook(ch, 'cache_miss', 3000, 'no cache_miss webhook for an empty cache channel');
  await sleep(500);
  const misses = eventsFor(ch).filter((e) => e.name === 'cache_miss');
  assert.equal(misses.length, 1, `cache_miss webhooks must be de-duplicated, got ${misses.length}`);
  a.close();
  b.close();
});
