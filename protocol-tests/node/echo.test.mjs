// Laravel Echo (broadcaster "reverb", pusher-js underneath) used the way Laravel apps use it:
// public/private listen with the App.Events namespace, presence here/joining/leaving,
// whisper/listenForWhisper, leave. Events are published through pusher-http-node.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { APPS, serverSdk, uniq, eventually } from '../lib/env.mjs';
import { echo, subscribed, closeAllClients } from '../lib/clients.mjs';

after(closeAllClients);

const app = APPS.main;
const sdk = serverSdk(app);

/** Promise + callback pair that fails with `what` after `ms`. */
function expectCall(what, ms = 4000) {
  let resolve;
  let t;
  const p = new Promise((res, rej) => {
    resolve = (v) => {
      clearTimeout(t);
      res(v);
    };
    t = setTimeout(() => rej(new Error(`${what} within ${ms} ms`)), ms);
  });
  return { p, cb: (v) => resolve(v) };
}

test('Echo.socketId() is a Pusher socket id', async () => {
  const e = await echo(app);
  assert.match(e.socketId(), /^\d+\.\d+$/, 'Echo.socketId() must be a valid socket id (used for X-Socket-ID)');
});

test('Echo.channel().listen(".Name") receives an event triggered with that exact name', async () => {
  const e = await echo(app, { node: 1 });
  const name = uniq('news.');
  const got = expectCall('Echo public listener with a leading dot did not fire');
  e.channel(name).listen('.Published', got.cb);
  await subscribed(e.connector.pusher, name);
  await sdk.trigger(name, 'Published', { title: 'Hello' });
  assert.deepEqual(await got.p, { title: 'Hello' });
});

test('Echo.private().listen("Name") receives App\\Events\\Name', async () => {
  const e = await echo(app, { node: 1 });
  const name = uniq('orders.');
  const got = expectCall('Echo private listener (namespace App.Events) did not fire');
  e.private(name).listen('OrderShipped', got.cb);
  await subscribed(e.connector.pusher, `private-${name}`);
  await sdk.trigger(`private-${name}`, 'App\\Events\\OrderShipped', { order: { id: 1 } });
  assert.deepEqual(await got.p, { order: { id: 1 } }, 'Echo private listener got altered data');
});

test('Echo.join(): here lists members, joining and leaving fire for the other user only', async () => {
  const name = uniq('chat.');
  const taylor = await echo(app, { user: { id: 1, name: 'Taylor' } });
  const here1 = expectCall('Echo here() did not fire for the first member');
  const joining = expectCall('Echo joining() did not fire when another user joined');
  const leaving = expectCall('Echo leaving() did not fire when the other user left');
  taylor.join(name).here(here1.cb).joining(joining.cb).leaving(leaving.cb);
  assert.deepEqual(await here1.p, [{ id: 1, name: 'Taylor' }], 'here() must list the subscriber itself');

  const abigail = await echo(app, { node: 1, user: { id: 2, name: 'Abigail' } });
  const here2 = expectCall('Echo here() did not fire for the second member');
  const selfJoin = [];
  abigail.join(name).here(here2.cb).joining((u) => selfJoin.push(u));
  const members = await here2.p;
  assert.deepEqual(
    members.map((m) => m.id).sort(),
    [1, 2],
    `here() must list both members (user_info from channel_data), got ${JSON.stringify(members)}`,
  );
  assert.deepEqual(await joining.p, { id: 2, name: 'Abigail' }, 'joining() must receive the new member\'s user_info');
  assert.deepEqual(selfJoin, [], 'joining() fired for the joiner itself');
  abigail.leave(name);
  assert.deepEqual(await leaving.p, { id: 2, name: 'Abigail' }, 'leaving() must receive the departed member\'s info');
});

test('whisper() reaches listenForWhisper() of the other client, not the sender', async () => {
  const name = uniq('typing.');
  const a = await echo(app, { user: { id: 10, name: 'A' } });
  const b = await echo(app, { node: 1, user: { id: 11, name: 'B' } });
  const got = expectCall('listenForWhisper() did not receive the whisper');
  const echoed = [];
  const pa = a.private(name).listenForWhisper('typing', (d) => echoed.push(d));
  b.private(name).listenForWhisper('typing', got.cb);
  await subscribed(a.connector.pusher, `private-${name}`);
  await subscribed(b.connector.pusher, `private-${name}`);
  pa.whisper('typing', { name: 'A', typing: true });
  assert.deepEqual(await got.p, { name: 'A', typing: true });
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(echoed, [], 'a whisper was echoed to its sender');
});

test('whisper on a presence channel (Echo.join) reaches the other member', async () => {
  const name = uniq('room.');
  const a = await echo(app, { user: { id: 20, name: 'A' } });
  const b = await echo(app, { node: 1, user: { id: 21, name: 'B' } });
  const got = expectCall('presence whisper was not received');
  const ca = a.join(name);
  b.join(name).listenForWhisper('cursor', got.cb);
  await subscribed(a.connector.pusher, `presence-${name}`);
  await subscribed(b.connector.pusher, `presence-${name}`);
  ca.whisper('cursor', { x: 3, y: 4 });
  assert.deepEqual(await got.p, { x: 3, y: 4 }, 'presence whisper data was altered');
});

test('Echo.leave() unsubscribes: the channel becomes unoccupied', async () => {
  const name = uniq('leave.');
  const e = await echo(app);
  e.channel(name).listen('.X', () => {});
  await subscribed(e.connector.pusher, name);
  const occ = async () => (await (await sdk.get({ path: `/channels/${name}` })).json()).occupied;
  assert.equal(await occ(), true, 'channel must be occupied while Echo listens');
  e.leave(name);
  assert.ok(await eventually(async () => (await occ()) === false, 3000), 'Echo.leave() did not unsubscribe the channel');
});
