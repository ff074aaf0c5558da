// Spec 2.10, 3.5 and 5.6.6: user sign-in, server-to-user delivery, the #server-to-user-{id}
// channel guard, and terminating a user's connections.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { APPS, serverSdk, uniq } from '../lib/env.mjs';
import { RawSocket, ev, errorData, closeAllRaw } from '../lib/raw.mjs';
import { pusherJs, connected, nextEvent, closeAllClients } from '../lib/clients.mjs';
import { hmac } from '../lib/sign.mjs';

after(() => {
  closeAllRaw();
  closeAllClients();
});

const app = APPS.main;
const sdk = serverSdk(app);

test('pusher:signin with a valid token gets signin_success echoing user_data', async () => {
  const s = await RawSocket.connect(app);
  const r = await s.signin(sdk, { id: uniq('user-'), user_info: { name: 'Ada' } });
  assert.ok(r.ok, `valid pusher:signin was refused: ${r.msg.raw}`);
  const data = typeof r.msg.data === 'string' ? JSON.parse(r.msg.data) : r.msg.data;
  assert.equal(data.user_data, r.token.user_data, 'signin_success must echo user_data as the same string');
  s.close();
});

test('pusher:signin with a bad signature gets pusher:error 4009 and the connection stays open', async () => {
  const s = await RawSocket.connect(app);
  s.send({ event: 'pusher:signin', data: { auth: `${app.key}:${'1'.repeat(64)}`, user_data: '{"id":"mallory"}' } });
  const err = await s.expect(ev('pusher:error'), 3000, 'bad signin signature did not get a pusher:error');
  assert.equal(errorData(err).code, 4009, `bad signin must get code 4009, got ${err.raw}`);
  assert.equal(s.seen(ev('pusher:signin_success')).length, 0, 'bad signin was accepted');
  await s.assertAlive('a failed sign-in must not close the connection');
  s.close();
});

test('pusher:signin is checked over the exact user_data bytes (Python serialisation)', async () => {
  const s = await RawSocket.connect(app);
  const userData = '{"id": "py-user", "user_info": {"name": "Zo\\u00eb"}}';
  s.send({
    event: 'pusher:signin',
    data: { auth: `${app.key}:${hmac(app.secret, `${s.socketId}::user::${userData}`)}`, user_data: userData },
  });
  const m = await s.expect((x) => x.event === 'pusher:signin_success' || x.event === 'pusher:error', 3000, 'no reply to signin');
  assert.equal(m.event, 'pusher:signin_success', `Python-style user_data was refused: the signature must cover the bytes received: ${m.raw}`);
  s.close();
});

test('second signin: same id accepted again, a different id refused', async () => {
  const s = await RawSocket.connect(app);
  const id = uniq('user-');
  assert.ok((await s.signin(sdk, { id })).ok, 'first signin failed');
  const same = await s.signin(sdk, { id });
  assert.ok(same.ok, `signing in again as the same user must succeed: ${same.msg.raw}`);
  const other = await s.signin(sdk, { id: `${id}-other` });
  assert.equal(other.ok, false, 'signing in as a different user on a signed-in connection must be refused');
  assert.equal(errorData(other.msg).code, 4009, `refused re-signin must carry 4009, got ${other.msg.raw}`);
  s.close();
});

test('#server-to-user-X subscription is refused unless signed in as X', async () => {
  const id = uniq('stu-');
  const anon = await RawSocket.connect(app);
  let r = await anon.subscribe(`#server-to-user-${id}`);
  assert.equal(r.ok, false, '#server-to-user-X subscription accepted on a connection that is not signed in');
  assert.equal(errorData(r.msg).code, 4009, `refusal must carry 4009, got ${r.msg.raw}`);
  const other = await RawSocket.connect(app);
  await other.signin(sdk, { id: `${id}-other` });
  r = await other.subscribe(`#server-to-user-${id}`);
  assert.equal(r.ok, false, '#server-to-user-X subscription accepted for a connection signed in as another user');
  const me = await RawSocket.connect(app);
  await me.signin(sdk, { id });
  r = await me.subscribe(`#server-to-user-${id}`);
  assert.ok(r.ok, `#server-to-user-X must be accepted for a connection signed in as X: ${r.msg.raw}`);
  assert.equal(r.msg.data, '{}');
});

test('sendToUser reaches every pusher-js connection signed in as that user, and nobody else', async () => {
  const id = uniq('buyer-');
  const tab1 = pusherJs(app, { user: { id } });
  const tab2 = pusherJs(app, { node: 1, user: { id } });
  const stranger = pusherJs(app, { user: { id: `${id}-x` } });
  const anon = pusherJs(app);
  await Promise.all([tab1, tab2, stranger, anon].map((c) => connected(c)));
  for (const c of [tab1, tab2, stranger]) c.signin();
  // pusher-js subscribes #server-to-user-{id} once signed in; wait until the user object is bound.
  await Promise.all(
    [tab1, tab2, stranger].map((c) =>
      waitFor(() => c.user.user_data && c.user.serverToUserChannel?.subscribed, 4000, 'pusher-js signin() did not complete'),
    ),
  );
  const got1 = nextEvent(tab1.user, 'order-ready', 3000, 'sendToUser did not reach the first connection of the user');
  const got2 = nextEvent(tab2.user, 'order-ready', 3000, 'sendToUser did not reach the second connection of the user');
  const leaks = [];
  stranger.user.bind('order-ready', (d) => leaks.push(['stranger', d]));
  anon.connection.bind('message', (m) => m.event === 'order-ready' && leaks.push(['anonymous', m]));
  await sdk.sendToUser(id, 'order-ready', { order: 5 });
  assert.deepEqual(await got1, { order: 5 }, 'sendToUser data altered');
  assert.deepEqual(await got2, { order: 5 }, 'sendToUser data altered');
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(leaks, [], 'sendToUser reached a connection not signed in as that user');
});

test('sendToUser reaches a signed-in raw connection that never subscribed to #server-to-user-X', async () => {
  const id = uniq('raw-user-');
  const s = await RawSocket.connect(app, { node: 1 });
  await s.signin(sdk, { id });
  await sdk.sendToUser(id, 'direct', { hello: 'world' });
  const m = await s.expect(ev('direct'), 3000, 'sendToUser must reach every connection signed in as the user');
  assert.equal(m.channel, `#server-to-user-${id}`, 'server-to-user events must carry channel "#server-to-user-{id}"');
  assert.equal(m.data, '{"hello":"world"}');
  s.close();
});

test('terminate_connections closes signed-in sockets of that user with 4009; others untouched', async () => {
  const id = uniq('term-');
  const a = await RawSocket.connect(app);
  const b = await RawSocket.connect(app, { node: 1 });
  const other = await RawSocket.connect(app);
  const presenceOnly = await RawSocket.connect(app);
  const anon = await RawSocket.connect(app);
  await a.signin(sdk, { id });
  await b.signin(sdk, { id });
  await other.signin(sdk, { id: `${id}-other` });
  const ch = uniq('presence-term-');
  await presenceOnly.mustSubscribe(ch, sdk.authorizeChannel(presenceOnly.socketId, ch, { user_id: id }));

  const res = await sdk.terminateUserConnections(id);
  assert.equal(res.status, 200, 'terminate_connections must answer 200');
  assert.deepEqual(await res.json(), {}, 'terminate_connections must answer {}');
  for (const [s, name] of [[a, 'first'], [b, 'second']]) {
    const err = await s.expect(ev('pusher:error'), 3000, `terminated user's ${name} connection got no pusher:error`);
    assert.equal(errorData(err).code, 4009, `terminated connection must get pusher:error 4009, got ${err.raw}`);
    const c = await s.expectClose(3000, `terminated user's ${name} connection was not closed`);
    assert.equal(c.code, 4009, `terminated connection must be closed with 4009, got ${c.code}`);
  }
  await other.assertAlive('a connection signed in as another user was terminated');
  await presenceOnly.assertAlive('a connection only in a presence channel (not signed in) was terminated');
  await anon.assertAlive('an anonymous connection was terminated');
});

test('terminate_connections for an unknown user answers {}', async () => {
  const res = await sdk.terminateUserConnections(uniq('nobody-'));
  assert.equal(res.status, 200, `terminate_connections for an unknown user must answer 200, got ${res.status}`);
  assert.deepEqual(await res.json(), {}, 'terminate_connections must answer {}');
});

async function waitFor(fn, ms, what) {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`${what} within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
