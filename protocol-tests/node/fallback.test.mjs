// pusher-js's HTTP fallback transports (docs/protocol.md 1.9): pusher-js 8 in Node with
// enabledTransports ['xhr_streaming'] and ['xhr_polling'], next to WebSocket clients on the same
// channels; Laravel Echo over xhr_streaming; the default transport list falling back to HTTP when
// nothing listens on the WebSocket port. Each HTTP client talks to one node (a session lives on
// the node that created it); publishers and WebSocket peers sit on the other node in a cluster run.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { APPS, serverSdk, uniq, sleep } from '../lib/env.mjs';
import { RawSocket, ev, innerData, closeAllRaw } from '../lib/raw.mjs';
import { pusherJs, echo, connected, subscribed, nextEvent, collect, closeAllClients } from '../lib/clients.mjs';

after(closeAllClients);
after(closeAllRaw);

const app = APPS.main;
const sdk = serverSdk(app);
// The server's disconnect delay (protocol-tests/resound.toml: 2 s) plus margin.
const DEPARTURE_MS = 8000;

function transportOf(client) {
  return client.connection.connection?.transport?.name;
}

for (const transport of ['xhr_streaming', 'xhr_polling']) {
  const only = { enabledTransports: [transport] };
  const http = (opts = {}) => pusherJs(app, { node: 1, ...opts, options: { ...only, ...(opts.options ?? {}) } });

  test(`${transport}: pusher-js connects over HTTP with a Pusher socket id`, async () => {
    const c = http();
    const socketId = await connected(c, 8000, `pusher-js did not connect over ${transport}`);
    assert.match(socketId, /^\d+\.\d+$/);
    assert.equal(transportOf(c), transport, `the connection must use ${transport}`);
  });

  test(`${transport}: public, private and presence subscriptions receive triggered events`, async () => {
    const c = http({ presence: { user_id: uniq('u-'), user_info: { name: 'Ada' } } });
    await connected(c, 8000);
    for (const prefix of ['pub-', 'private-', 'presence-']) {
      const name = uniq(`${transport}-${prefix}`).replace('pub-', '');
      const ch = await subscribed(c, name, 5000);
      const got = nextEvent(ch, 'greet', 5000, `${name}: triggered event did not arrive over ${transport}`);
      await sdk.trigger(name, 'greet', { on: name });
      assert.deepEqual(await got, { on: name });
    }
  });

  test(`${transport}: a burst of triggers arrives complete and in order`, async () => {
    const c = http();
    await connected(c, 8000);
    const name = uniq(`${transport}-burst-`);
    const ch = await subscribed(c, name, 5000);
    const got = collect(ch, 'tick');
    const n = 100;
    for (let i = 0; i < n; i += 1) await sdk.trigger(name, 'tick', { i });
    const end = Date.now() + 10000;
    while (got.length < n && Date.now() < end) await sleep(50);
    assert.deepEqual(
      got.map((g) => g.data.i),
      [...Array(n).keys()],
      `${n} triggers must arrive in order over ${transport}`,
    );
  });

  test(`${transport}: client events both ways with a WebSocket peer on a presence channel; member_removed when the HTTP client leaves`, async () => {
    const name = uniq(`presence-${transport}-`);
    const httpUser = uniq('http-');
    const wsUser = uniq('ws-');
    const peer = await RawSocket.connect(app, { node: 0 });
    await peer.mustSubscribe(name, sdk.authorizeChannel(peer.socketId, name, { user_id: wsUser }));
    const c = http({ presence: { user_id: httpUser } });
    await connected(c, 8000);
    const ch = await subscribed(c, name, 5000);
    await peer.expect(ev('pusher_internal:member_added', name), 5000, 'the WebSocket peer was not told of the HTTP member');

    // HTTP -> WebSocket, with the sender's user_id.
    const echoes = collect(ch, 'client-hi');
    assert.ok(ch.trigger('client-hi', { from: 'http' }), 'pusher-js refused to send the client event');
    const m = await peer.expect(ev('client-hi', name), 5000, 'client event from the HTTP client did not reach the WebSocket peer');
    assert.equal(m.user_id, httpUser, 'a presence client event carries the sender user_id');
    assert.deepEqual(m.data, { from: 'http' });

    // WebSocket -> HTTP.
    const got = nextEvent(ch, 'client-hi', 5000, 'client event from the WebSocket peer did not reach the HTTP client', true);
    peer.send({ event: 'client-hi', channel: name, data: { from: 'ws' } });
    const { data, meta } = await got;
    assert.deepEqual(data, { from: 'ws' });
    assert.equal(meta.user_id, wsUser);
    await sleep(300);
    assert.deepEqual(
      echoes.filter((e) => e.data.from === 'http'),
      [],
      'a client event must never be echoed to its sender',
    );

    c.disconnect();
    const removed = await peer.expect(
      ev('pusher_internal:member_removed', name),
      DEPARTURE_MS,
      `an HTTP client that disconnected (${transport}) was not removed from presence`,
    );
    assert.deepEqual(innerData(removed), { user_id: httpUser });
    await peer.assertAlive();
  });

  test(`${transport}: terminateUserConnections closes the signed-in HTTP connection with 4009`, async () => {
    const id = uniq('term-');
    const c = http({ user: { id } });
    await connected(c, 8000);
    c.signin();
    await c.user.signinDonePromise;
    const err = nextEvent(c.connection, 'error', 5000, `terminated ${transport} client got no error`);
    const res = await sdk.terminateUserConnections(id);
    assert.equal(res.status, 200);
    const e = await err;
    assert.equal(e.data?.code ?? e.error?.data?.code, 4009, `expected 4009, got ${JSON.stringify(e)}`);
  });
}

test('Laravel Echo over xhr_streaming: listen, presence here, whisper to a WebSocket Echo', async () => {
  const name = uniq('room-');
  const viaHttp = await echo(app, { node: 1, user: { id: 71, name: 'Http' }, options: { enabledTransports: ['xhr_streaming'] } });
  assert.equal(transportOf(viaHttp.connector.pusher), 'xhr_streaming');
  const viaWs = await echo(app, { node: 0, user: { id: 72, name: 'Ws' } });

  const heard = new Promise((resolve) => viaHttp.channel(name).listen('.Published', resolve));
  await subscribed(viaHttp.connector.pusher, name, 5000);
  await sdk.trigger(name, 'Published', { title: 'over http' });
  assert.deepEqual(await heard, { title: 'over http' });

  const here = new Promise((resolve) => viaHttp.join(name).here(resolve));
  await here;
  const joined = new Promise((resolve) => viaHttp.join(name).joining(resolve));
  const whisper = new Promise((resolve) => viaHttp.join(name).listenForWhisper('typing', resolve));
  const wsPresence = viaWs.join(name);
  await new Promise((resolve) => wsPresence.here(resolve));
  assert.deepEqual(await joined, { id: 72, name: 'Ws' });
  wsPresence.whisper('typing', { who: 'ws' });
  assert.deepEqual(await whisper, { who: 'ws' });
});

test('the default transport list with nothing on the WebSocket port ends up connected over HTTP', async () => {
  // A port nobody listens on: bind, read the port, close.
  const port = await new Promise((resolve) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const p = srv.address().port;
      srv.close(() => resolve(p));
    });
  });
  const c = pusherJs(app, { node: 1, options: { enabledTransports: undefined, wsPort: port, wssPort: port } });
  await connected(c, 20000, 'pusher-js with its default transports did not fall back to HTTP');
  assert.match(transportOf(c), /^xhr_(streaming|polling)$/);
  const name = uniq('fallback-default-');
  const ch = await subscribed(c, name, 5000);
  const got = nextEvent(ch, 'hello', 5000);
  await sdk.trigger(name, 'hello', { ok: true });
  assert.deepEqual(await got, { ok: true });
});
