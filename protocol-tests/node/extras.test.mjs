// Opt-in features, on the "extras" app: subscription count events (protocol.md 2.9), the Soketi-style
// pusher:subscription_error that makes Laravel Echo's .error() fire (2.4), and watchlist
// online/offline events (3.8).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { APPS, serverSdk, uniq, eventually } from '../lib/env.mjs';
import { RawSocket, ev, errorData, innerData, closeAllRaw } from '../lib/raw.mjs';
import { pusherJs, connected, subscribed, echo, closeAllClients } from '../lib/clients.mjs';

after(() => {
  closeAllRaw();
  closeAllClients();
});

const app = APPS.extras;
const sdk = serverSdk(app);

test('subscription_count events follow subscribe and unsubscribe on non-presence channels', async () => {
  const ch = uniq('counted-');
  const a = await RawSocket.connect(app);
  await a.mustSubscribe(ch);
  const c1 = await a.expect(ev('pusher_internal:subscription_count', ch), 3000, 'no pusher_internal:subscription_count after subscribing');
  assert.equal(typeof c1.data, 'string', `subscription_count data must be a JSON string, got ${c1.raw}`);
  assert.deepEqual(innerData(c1), { subscription_count: 1 }, `first subscriber must see subscription_count 1, got ${c1.data}`);
  const b = await RawSocket.connect(app, { node: 1 });
  await b.mustSubscribe(ch);
  const c2 = await a.expect(ev('pusher_internal:subscription_count', ch), 3000, 'existing subscriber got no subscription_count when another joined');
  assert.deepEqual(innerData(c2), { subscription_count: 2 }, `second subscriber must raise subscription_count to 2, got ${c2.data}`);
  b.send({ event: 'pusher:unsubscribe', data: { channel: ch } });
  const c3 = await a.expect(ev('pusher_internal:subscription_count', ch), 3000, 'no subscription_count after an unsubscribe');
  assert.deepEqual(innerData(c3), { subscription_count: 1 }, `unsubscribe must lower subscription_count to 1, got ${c3.data}`);

  const pres = uniq('presence-counted-');
  await a.mustSubscribe(pres, sdk.authorizeChannel(a.socketId, pres, { user_id: 'x' }));
  await a.expectNone(ev('pusher_internal:subscription_count', pres), 300, 'subscription_count must not be sent on presence channels');
});

test('pusher-js exposes subscription_count through pusher:subscription_count', async () => {
  const ch = uniq('counted-js-');
  const a = pusherJs(app);
  const b = pusherJs(app, { node: 1 });
  await Promise.all([connected(a), connected(b)]);
  const channel = await subscribed(a, ch);
  const two = new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('pusher-js never saw subscription_count 2')), 3000);
    channel.bind('pusher:subscription_count', (d) => {
      if (d.subscription_count === 2) {
        clearTimeout(t);
        resolve();
      }
    });
  });
  await subscribed(b, ch);
  await two;
  assert.equal(channel.subscriptionCount, 2, 'pusher-js channel.subscriptionCount must be 2');
});

test('failed subscription also sends pusher:subscription_error, and Echo .error() fires', async () => {
  const s = await RawSocket.connect(app);
  const ch = uniq('private-denied-');
  s.send({ event: 'pusher:subscribe', data: { channel: ch, auth: `${app.key}:${'0'.repeat(64)}` } });
  const se = await s.expect(ev('pusher:subscription_error', ch), 3000, 'subscription_error_event = true: no pusher:subscription_error');
  const data = typeof se.data === 'string' ? JSON.parse(se.data) : se.data;
  assert.equal(data.type, 'AuthError', `subscription_error type must be "AuthError", got ${se.raw}`);
  assert.equal(typeof data.status, 'number', `subscription_error status must be a number, got ${se.raw}`);
  const err = await s.expect(ev('pusher:error'), 3000, 'the pusher:error must still be sent with subscription_error_event');
  assert.equal(errorData(err).code, 4009, `auth failure pusher:error must carry 4009, got ${err.raw}`);

  const e = await echo(app, { badAuth: true });
  const fired = await new Promise((resolve) => {
    const t = setTimeout(() => resolve(null), 3000);
    e.private(uniq('secret.')).error((d) => {
      clearTimeout(t);
      resolve(d);
    });
  });
  assert.ok(fired, 'Laravel Echo .error() did not fire for a refused subscription');
});

test('watchlist: pusher-js gets online and offline events for watched users', async () => {
  const watched = uniq('w-');
  const watcher = pusherJs(app, { user: { id: uniq('watcher-'), watchlist: [watched] } });
  await connected(watcher);
  const online = new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('watchlist "online" event did not arrive when a watched user signed in')), 4000);
    watcher.user.watchlist.bind('online', (e) => {
      if (e.user_ids?.includes(watched)) {
        clearTimeout(t);
        resolve(e);
      }
    });
  });
  watcher.signin();
  const signedIn = await eventually(() => watcher.user.user_data !== null, 3000, 20);
  assert.ok(signedIn, 'watcher could not sign in with a watchlist');
  const w = pusherJs(app, { node: 1, user: { id: watched } });
  await connected(w);
  w.signin();
  await online;
  const offline = new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('watchlist "offline" event did not arrive when the watched user left')), 6000);
    watcher.user.watchlist.bind('offline', (e) => {
      if (e.user_ids?.includes(watched)) {
        clearTimeout(t);
        resolve(e);
      }
    });
  });
  w.disconnect();
  await offline;
});

test('watchlist over 100 ids: signin still succeeds and pusher:error 4302 is sent', async () => {
  const s = await RawSocket.connect(app);
  const watchlist = Array.from({ length: 101 }, (_, i) => `wl-${i}`);
  await s.signin(sdk, { id: uniq('big-watcher-'), watchlist });
  const success = await eventually(() => s.seen(ev('pusher:signin_success')).length > 0, 2000);
  assert.ok(success, `signin with 101 watchlist ids must still succeed: ${s.summary()}`);
  const warned = await eventually(() => s.seen((m) => m.event === 'pusher:error' && errorData(m).code === 4302).length > 0, 2000);
  assert.ok(warned, `watchlist over 100 ids must produce pusher:error 4302: ${s.summary()}`);
});

test('watchlist_events frames carry no channel and a JSON-string data', async () => {
  const watched = uniq('w-');
  const s = await RawSocket.connect(app);
  await s.signin(sdk, { id: uniq('raw-watcher-'), watchlist: [watched] });
  const other = await RawSocket.connect(app);
  assert.ok((await other.signin(sdk, { id: watched })).ok, 'harness: the watched user could not sign in');
  const m = await s.expect(
    (x) => x.event === 'pusher_internal:watchlist_events' && x.raw.includes(watched) && x.raw.includes('online'),
    3000,
    'no pusher_internal:watchlist_events announcing the watched user online',
  );
  assert.equal(m.channel, undefined, 'watchlist_events must not carry a channel');
  assert.equal(typeof m.data, 'string', `watchlist_events data must be a JSON string, got ${m.raw}`);
  const { events } = JSON.parse(m.data);
  assert.ok(events.some((e) => e.name === 'online' && e.user_ids.includes(watched)), `got ${m.data}`);
});
