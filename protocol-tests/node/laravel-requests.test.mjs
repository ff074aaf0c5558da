// Spec 5.7 and 7.6: the requests a Laravel app sends through pusher-http-php 7.2 (its "reverb" and
// "pusher" broadcast drivers), reproduced byte for byte: json_encode escaping ("\/", "\u00e9"),
// "channel" for one channel and "channels" for several, body_md5 on every POST, Guzzle's RFC 3986
// query encoding, socket_id for broadcast(...)->toOthers(), and Laravel's presence channel_data.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { APPS, node, serverSdk, uniq } from '../lib/env.mjs';
import { RawSocket, ev, innerData, closeAllRaw } from '../lib/raw.mjs';
import { echo, subscribed, closeAllClients } from '../lib/clients.mjs';
import { phpJsonEncode, signedQuery, md5, hmac } from '../lib/sign.mjs';

after(() => {
  closeAllRaw();
  closeAllClients();
});

const app = APPS.main;
const sdk = serverSdk(app);

/** What Pusher\Pusher::trigger() sends for Laravel's PusherBroadcaster::broadcast(). */
function laravelTriggerBody(channels, event, payload, socketId) {
  const body = { name: event, data: phpJsonEncode(payload) };
  if (channels.length === 1) body.channel = channels[0];
  else body.channels = channels;
  if (socketId) body.socket_id = socketId;
  return phpJsonEncode(body);
}

/** Send like pusher-http-php through Guzzle; returns {status, text, json}. */
async function phpRequest(method, path, { body = '', params = {} } = {}) {
  const fullPath = `/apps/${app.id}${path}`;
  const { query } = signedQuery({ app, method, path: fullPath, params, body, style: 'php' });
  const headers = { 'X-Pusher-Library': 'pusher-http-php 7.2.7' };
  if (method === 'POST') headers['Content-Type'] = 'application/json';
  const res = await fetch(`${node(0).httpBase}${fullPath}?${query}`, {
    method,
    headers,
    body: method === 'POST' ? body : undefined,
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, text, json, query };
}

const payload = { order: { id: 1, url: 'https://shop.example/o/1' }, note: 'café' };

test('harness: the PHP-style body escapes "/" and non-ASCII like json_encode', () => {
  const body = laravelTriggerBody(['private-orders.1'], 'App\\Events\\OrderShipped', payload);
  assert.equal(
    body,
    '{"name":"App\\\\Events\\\\OrderShipped","data":"{\\"order\\":{\\"id\\":1,\\"url\\":\\"https:\\\\\\/\\\\\\/shop.example\\\\\\/o\\\\\\/1\\"},\\"note\\":\\"caf\\\\u00e9\\"}","channel":"private-orders.1"}',
  );
});

test('Laravel broadcast to one channel ("channel" key, escaped JSON) reaches Echo private().listen()', async () => {
  const name = uniq('orders.');
  const e = await echo(app, { node: 1 });
  const got = new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('Echo did not receive the event broadcast by Laravel (single "channel" body)')), 4000);
    e.private(name).listen('OrderShipped', (d) => {
      clearTimeout(t);
      resolve(d);
    });
  });
  const raw = await RawSocket.connect(app, { node: 1 });
  await raw.mustSubscribe(`private-${name}`, sdk.authorizeChannel(raw.socketId, `private-${name}`));
  await subscribed(e.connector.pusher, `private-${name}`);
  const body = laravelTriggerBody([`private-${name}`], 'App\\Events\\OrderShipped', payload);
  const r = await phpRequest('POST', '/events', { body });
  assert.equal(r.status, 200, `Laravel's single-channel trigger must get exactly 200, got ${r.status} ${r.text}`);
  assert.equal(r.text.trim(), '{}', `Laravel's trigger must be answered {}, got ${r.text}`);
  assert.deepEqual(await got, payload, 'Echo must receive the payload json_encode produced');
  const m = await raw.expect(ev('App\\Events\\OrderShipped', `private-${name}`), 3000, 'raw subscriber did not get the Laravel event');
  assert.equal(m.data, phpJsonEncode(payload), 'the json_encode string (with \\/ and \\u00e9) must be delivered byte for byte');
});

test('Laravel broadcast to several channels uses "channels" and reaches each', async () => {
  const a = uniq('news.');
  const b = uniq('news.');
  const raw = await RawSocket.connect(app, { node: 1 });
  await raw.mustSubscribe(a);
  await raw.mustSubscribe(b);
  const r = await phpRequest('POST', '/events', { body: laravelTriggerBody([a, b], 'App\\Events\\Published', { id: 2 }) });
  assert.equal(r.status, 200, `multi-channel Laravel trigger must get 200, got ${r.status} ${r.text}`);
  await raw.expect(ev('App\\Events\\Published', a), 3000, 'first channel of a "channels" trigger missed');
  await raw.expect(ev('App\\Events\\Published', b), 3000, 'second channel of a "channels" trigger missed');
});

test('broadcast(...)->toOthers(): the socket from X-Socket-ID does not get the event', async () => {
  const name = uniq('orders.');
  const sender = await echo(app);
  const other = await echo(app, { node: 1 });
  const senderGot = [];
  const otherGot = new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('toOthers() event did not reach the other Echo client')), 4000);
    other.private(name).listen('OrderShipped', (d) => {
      clearTimeout(t);
      resolve(d);
    });
  });
  sender.private(name).listen('OrderShipped', (d) => senderGot.push(d));
  await subscribed(sender.connector.pusher, `private-${name}`);
  await subscribed(other.connector.pusher, `private-${name}`);
  const body = laravelTriggerBody([`private-${name}`], 'App\\Events\\OrderShipped', { id: 3 }, sender.socketId());
  const r = await phpRequest('POST', '/events', { body });
  assert.equal(r.status, 200, `toOthers() trigger must get 200, got ${r.status} ${r.text}`);
  await otherGot;
  await new Promise((res) => setTimeout(res, 300));
  assert.deepEqual(senderGot, [], 'toOthers(): the sender\'s own socket received the event');
});

test('Laravel presence channel_data (string user_id, escaped "/") is accepted over its exact bytes', async () => {
  const ch = uniq('presence-chat.');
  const s = await RawSocket.connect(app);
  const channelData = phpJsonEncode({ user_id: '1', user_info: { id: 1, name: 'Taylor Otwell', avatar: 'https://x.example/a.png' } });
  assert.ok(channelData.includes('\\/'), 'harness: channel_data should contain \\/');
  const m = await s.mustSubscribe(
    ch,
    { auth: `${app.key}:${hmac(app.secret, `${s.socketId}:${ch}:${channelData}`)}`, channel_data: channelData },
    'Laravel-shaped presence channel_data was refused (signature must cover the received bytes)',
  );
  const { presence } = innerData(m);
  assert.deepEqual(presence.ids, ['1']);
  assert.equal(presence.hash['1'].avatar, 'https://x.example/a.png');
});

test('Guzzle-encoded GET channel info (info=user_count%2Csubscription_count) is accepted', async () => {
  const ch = uniq('presence-room.');
  const s = await RawSocket.connect(app);
  await s.mustSubscribe(ch, sdk.authorizeChannel(s.socketId, ch, { user_id: '5' }));
  const r = await phpRequest('GET', `/channels/${ch}`, { params: { info: 'user_count,subscription_count' } });
  assert.ok(r.query.includes('info=user_count%2Csubscription_count'), 'harness: query must carry the RFC 3986 comma');
  assert.equal(r.status, 200, `Guzzle-encoded info must be decoded before signing, got ${r.status} ${r.text}`);
  assert.deepEqual(r.json, { occupied: true, user_count: 1, subscription_count: 1 }, `got ${r.text}`);
});

test('Laravel GET /channels and /users answers are JSON objects PHP can read', async () => {
  const ch = uniq('presence-lobby.');
  const s = await RawSocket.connect(app);
  await s.mustSubscribe(ch, sdk.authorizeChannel(s.socketId, ch, { user_id: '8' }));
  const list = await phpRequest('GET', '/channels', { params: { filter_by_prefix: ch, info: 'user_count' } });
  assert.equal(list.status, 200, `PHP-signed GET /channels failed: ${list.status} ${list.text}`);
  assert.deepEqual(list.json, { channels: { [ch]: { user_count: 1 } } }, `got ${list.text}`);
  const users = await phpRequest('GET', `/channels/${ch}/users`);
  assert.equal(users.status, 200, `PHP-signed GET users failed: ${users.status} ${users.text}`);
  assert.deepEqual(users.json, { users: [{ id: '8' }] });
});

test('Laravel terminateUserConnections: body {} with body_md5 99914b93...', async () => {
  const id = uniq('lv-');
  const s = await RawSocket.connect(app);
  await s.signin(sdk, { id });
  assert.equal(md5('{}'), '99914b932bd37a50b983c5e7c90ae93b');
  const r = await phpRequest('POST', `/users/${id}/terminate_connections`, { body: '{}' });
  assert.equal(r.status, 200, `PHP terminate_connections must get 200, got ${r.status} ${r.text}`);
  const c = await s.expectClose(3000, 'PHP terminate_connections did not close the signed-in connection');
  assert.equal(c.code, 4009, `terminated connection must close with 4009, got ${c.code}`);
});

test('PHP triggerBatch body is accepted', async () => {
  const ch = uniq('batch.');
  const raw = await RawSocket.connect(app, { node: 1 });
  await raw.mustSubscribe(ch);
  const body = phpJsonEncode({
    batch: [
      { channel: ch, name: 'App\\Events\\A', data: phpJsonEncode({ u: 'a/b' }) },
      { channel: ch, name: 'App\\Events\\B', data: phpJsonEncode({ u: 'c' }), socket_id: raw.socketId },
    ],
  });
  const r = await phpRequest('POST', '/batch_events', { body });
  assert.equal(r.status, 200, `PHP batch must get 200, got ${r.status} ${r.text}`);
  const a = await raw.expect(ev('App\\Events\\A', ch), 3000, 'first PHP batch item was not delivered');
  assert.equal(a.data, '{"u":"a\\/b"}');
  await raw.expectNone(ev('App\\Events\\B', ch), 300, 'batch item with socket_id was delivered to the excluded socket');
});
