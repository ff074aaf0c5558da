// Spec 2.6 and 3.3-3.4: presence membership is per user, not per connection; ids are strings;
// member_added / member_removed only on a user's first / last connection and never to that
// connection itself; the member limit; presence on signed-in connections without channel_data.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { APPS, serverSdk, uniq } from '../lib/env.mjs';
import { RawSocket, ev, errorData, innerData, closeAllRaw } from '../lib/raw.mjs';
import { pusherJs, connected, subscribed, nextEvent, collect, closeAllClients } from '../lib/clients.mjs';
import { hmac } from '../lib/sign.mjs';

after(() => {
  closeAllRaw();
  closeAllClients();
});

const app = APPS.main;
const sdk = serverSdk(app);

/** Raw presence subscription for `userId` (user_info optional). */
async function join(channel, userId, userInfo, opts = {}) {
  const s = opts.socket ?? (await RawSocket.connect(opts.app ?? app, { node: opts.node ?? 0 }));
  const member = userInfo === undefined ? { user_id: userId } : { user_id: userId, user_info: userInfo };
  const r = await s.subscribe(channel, serverSdk(opts.app ?? app).authorizeChannel(s.socketId, channel, member));
  return { s, ...r };
}

test('pusher-js: members.me and roster with string ids; member_added reaches others only', async () => {
  const ch = uniq('presence-js-');
  const a = pusherJs(app, { presence: { user_id: 'alice', user_info: { name: 'Alice' } } });
  const b = pusherJs(app, { node: 1, presence: { user_id: 'bob', user_info: { name: 'Bob' } } });
  await Promise.all([connected(a), connected(b)]);
  const chA = await subscribed(a, ch);
  assert.equal(chA.members.me?.id, 'alice', 'pusher-js members.me must be set from the roster (subscriber missing from hash?)');
  assert.equal(chA.members.count, 1, 'first member\'s roster must count 1');
  const added = nextEvent(chA, 'pusher:member_added', 3000, 'member_added did not reach an existing member');
  const chBpending = b.subscribe(ch);
  const bAdded = collect(chBpending, 'pusher:member_added');
  const chB = await subscribed(b, ch);
  const member = await added;
  assert.equal(member.id, 'bob', 'member_added must carry the joining user id');
  assert.deepEqual(member.info, { name: 'Bob' }, 'member_added must carry the user_info');
  assert.equal(chB.members.count, 2, 'the joiner\'s roster must contain both users');
  const ids = [];
  chB.members.each((m) => ids.push(m.id));
  assert.deepEqual(ids.sort(), ['alice', 'bob']);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(bAdded.length, 0, 'the joiner must not receive member_added about itself');
});

test('two connections of one user are one member: member_added/removed only on first/last, never to that user', async () => {
  const ch = uniq('presence-tabs-');
  const observer = await join(ch, 'obs', { name: 'Observer' }, { node: 1 });
  assert.ok(observer.ok, 'observer could not join');
  const o = observer.s;

  const tab1 = await join(ch, 'u7', { name: 'Seven' });
  assert.ok(tab1.ok, 'first tab could not join');
  const added = await o.expect(ev('pusher_internal:member_added', ch), 3000, 'first connection of a user must produce member_added');
  assert.equal(typeof added.data, 'string', 'member_added data must be a JSON string');
  assert.deepEqual(innerData(added), { user_id: 'u7', user_info: { name: 'Seven' } }, 'member_added data shape');

  const beforeTab2 = o.mark();
  const tab2 = await join(ch, 'u7', { name: 'Seven' });
  assert.ok(tab2.ok, 'second tab of an existing member could not join');
  const roster = innerData(tab2.msg).presence;
  assert.equal(roster.count, 2, `second tab: count must stay at 2 distinct users, got ${tab2.msg.data}`);
  assert.deepEqual([...roster.ids].sort(), ['obs', 'u7'], 'second tab roster must list each user once');
  await o.expectNone(
    ev('pusher_internal:member_added', ch),
    300,
    'a second connection of the same user produced another member_added',
    beforeTab2,
  );
  assert.equal(o.seen(ev('pusher_internal:member_added', ch)).length, 1);
  assert.equal(
    tab1.s.seen(ev('pusher_internal:member_added', ch)).length,
    0,
    'a user\'s own connection must not get member_added for that user',
  );

  tab1.s.close();
  await tab1.s.closed;
  await o.expectNone(ev('pusher_internal:member_removed', ch), 400, 'member_removed was sent while the user still had a connection');

  const mark = tab2.s.mark();
  tab2.s.send({ event: 'pusher:unsubscribe', data: { channel: ch } });
  const removed = await o.expect(ev('pusher_internal:member_removed', ch), 3000, 'last connection leaving must produce member_removed');
  assert.equal(typeof removed.data, 'string', 'member_removed data must be a JSON string');
  assert.deepEqual(innerData(removed), { user_id: 'u7' }, 'member_removed data must be {"user_id": id}');
  await tab2.s.expectNone(ev('pusher_internal:member_removed', ch), 200, 'the leaver received member_removed about itself', mark);
});

test('a member without user_info: hash value null, member_added without user_info', async () => {
  const ch = uniq('presence-noinfo-');
  const { s: o } = await join(ch, 'watcher', { name: 'W' }, { node: 1 });
  const r = await join(ch, 'bare');
  assert.ok(r.ok, `member without user_info was refused: ${r.msg.raw}`);
  const { presence } = innerData(r.msg);
  assert.ok('bare' in presence.hash, `a member without user_info must still be a key of hash, got ${r.msg.data}`);
  assert.equal(presence.hash.bare, null, `hash value for a member without user_info should be null (protocol.md 2.3), got ${r.msg.data}`);
  const added = await o.expect(ev('pusher_internal:member_added', ch), 3000, 'member_added missing');
  assert.deepEqual(innerData(added), { user_id: 'bare' }, `member_added must omit user_info when the member has none, got ${added.data}`);
});

test('two tabs with different user_info: the earliest connection\'s info is kept', async () => {
  const ch = uniq('presence-info2-');
  const first = await join(ch, 'same', { v: 'first' });
  assert.ok(first.ok, 'first tab refused');
  const second = await join(ch, 'same', { v: 'second' });
  assert.ok(second.ok, 'second tab refused');
  const third = await join(ch, 'viewer', undefined, { node: 1 });
  assert.deepEqual(
    innerData(third.msg).presence.hash.same,
    { v: 'first' },
    `the roster must keep the user_info of the user\'s earliest connection (protocol.md 2.6), got ${third.msg.data}`,
  );
});

test('numeric user_id appears as a string in member_added and member_removed', async () => {
  const ch = uniq('presence-numeric-');
  const { s: o } = await join(ch, 'watcher', undefined, { node: 1 });
  const s = await RawSocket.connect(app);
  const data = '{"user_id":10,"user_info":{"name":"Mr. Pusher"}}';
  await s.mustSubscribe(ch, { auth: `${app.key}:${hmac(app.secret, `${s.socketId}:${ch}:${data}`)}`, channel_data: data });
  const added = await o.expect(ev('pusher_internal:member_added', ch), 3000, 'member_added missing');
  assert.equal(innerData(added).user_id, '10', `presence ids must be strings: member_added user_id must be "10", got ${added.data}`);
  s.close();
  const removed = await o.expect(ev('pusher_internal:member_removed', ch), 3000, 'member_removed missing after close');
  assert.equal(innerData(removed).user_id, '10', `member_removed user_id must be "10", got ${removed.data}`);
});

test('member limit: a new distinct user beyond max_presence_members_per_channel is refused, another tab is accepted', async () => {
  const L = APPS.limits;
  const ch = uniq('presence-full-');
  for (let i = 1; i <= L.maxPresenceMembers; i++) {
    const r = await join(ch, `m${i}`, undefined, { app: L });
    assert.ok(r.ok, `member ${i} of ${L.maxPresenceMembers} must be accepted: ${r.msg.raw}`);
  }
  const over = await join(ch, 'one-too-many', undefined, { app: L });
  assert.equal(over.ok, false, 'a distinct user beyond the presence member limit must be refused');
  assert.equal(over.msg.event, 'pusher:error', `member limit refusal must be a pusher:error, got ${over.msg.raw}`);
  assert.equal(errorData(over.msg).code, 4100, `member limit refusal code should be 4100 (protocol.md 2.4), got ${over.msg.raw}`);
  const tab = await join(ch, 'm1', undefined, { app: L });
  assert.ok(tab.ok, `another connection of an existing member must be accepted at the limit: ${tab.msg.raw}`);
  assert.equal(innerData(tab.msg).presence.count, L.maxPresenceMembers, 'an extra tab must not change the member count');
});

test('user_info larger than max_presence_member_size is refused', async () => {
  const L = APPS.limits;
  const ch = uniq('presence-big-');
  const r = await join(ch, 'big', { bio: 'x'.repeat(L.maxMemberSize + 50) }, { app: L });
  assert.equal(r.ok, false, 'oversized user_info must be refused');
  assert.equal(r.msg.event, 'pusher:error', `oversized member refusal must be a pusher:error, got ${r.msg.raw}`);
  assert.equal(errorData(r.msg).code, 4301, `oversized member code should be 4301 (protocol.md 2.4), got ${r.msg.raw}`);
  const ok = await join(ch, 'small', { bio: 'x'.repeat(20) }, { app: L });
  assert.ok(ok.ok, `user_info under the limit must be accepted: ${ok.msg.raw}`);
});

test('presence without channel_data is accepted on a signed-in connection, member from user_data', async () => {
  const ch = uniq('presence-signed-');
  const s = await RawSocket.connect(app);
  const si = await s.signin(sdk, { id: 'sig-1', user_info: { name: 'Signed' } });
  assert.ok(si.ok, `signin failed: ${si.msg.raw}`);
  const m = await s.mustSubscribe(
    ch,
    { auth: sdk.authorizeChannel(s.socketId, ch).auth },
    'presence subscription without channel_data on a signed-in connection was refused',
  );
  const { presence } = innerData(m);
  assert.deepEqual(presence.ids, ['sig-1'], 'member id must come from the sign-in user_data.id');
  assert.deepEqual(presence.hash['sig-1'], { name: 'Signed' }, 'member info must come from the sign-in user_data.user_info');
  s.close();
});

test('pusher-js: presence auth without channel_data after signin() uses the signed-in user', async () => {
  const ch = uniq('presence-jssigned-');
  const c = pusherJs(app, { presence: null, user: { id: 'js-77', user_info: { name: 'JS' } } });
  await connected(c);
  c.signin();
  const channel = await subscribed(c, ch, 5000);
  assert.equal(channel.members.me?.id, 'js-77', 'pusher-js members.me must be the signed-in user');
  assert.deepEqual(channel.members.me?.info, { name: 'JS' });
});
