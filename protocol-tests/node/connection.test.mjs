// Spec 1: the WebSocket endpoint, handshake checks and close codes, connection_established,
// framing, ping/pong and liveness. Raw `ws` frames, so every byte the server sends is visible.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { APPS, node, eventually, uniq } from '../lib/env.mjs';
import { RawSocket, ev, errorData, closeAllRaw } from '../lib/raw.mjs';

after(closeAllRaw);

const SOCKET_ID = /^\d+\.\d+$/;

/** The handshake must end with pusher:error {code} and then close code {code}, never established. */
async function expectRefused(app, opts, code, what) {
  const s = new RawSocket(app, opts);
  const err = await s.expect(ev('pusher:error'), 3000, `${what}: no pusher:error ${code} was sent`);
  assert.equal(errorData(err).code, code, `${what}: pusher:error code must be ${code}, got ${err.raw}`);
  const c = await s.expectClose(3000, `${what}: connection was not closed after the error`);
  assert.equal(c.code, code, `${what}: close code must be ${code}, got ${c.code} "${c.reason}"`);
  assert.ok(Buffer.byteLength(c.reason) <= 123, `${what}: close reason longer than 123 bytes`);
  assert.equal(
    s.seen(ev('pusher:connection_established')).length,
    0,
    `${what}: pusher:connection_established must not be sent to a refused connection`,
  );
  const first = s.messages[0];
  assert.equal(first.event, 'pusher:error', `${what}: the first frame must be the pusher:error, got ${first.raw}`);
  return { s, err, close: c };
}

test('unknown app key is refused with pusher:error 4001 and close 4001', async () => {
  await expectRefused({ key: 'pt-no-such-key' }, {}, 4001, 'unknown app key');
});

test('pusher:error data is an object whose code is a JSON number (protocol.md 1.8)', async () => {
  const { err } = await expectRefused({ key: 'pt-no-such-key-2' }, {}, 4001, 'unknown app key');
  assert.equal(typeof err.data, 'object', `pusher:error data must be an object, got ${err.raw}`);
  assert.equal(typeof err.data.code, 'number', 'pusher:error data.code must be a number');
  assert.equal(typeof err.data.message, 'string', 'pusher:error data.message must be a string');
});

test('disabled app is refused with 4003', async () => {
  await expectRefused(APPS.disabled, {}, 4003, 'disabled app');
});

test('connection over max_connections is refused with 4004, and the slot frees on close', async () => {
  const a = await RawSocket.connect(APPS.quota);
  const b = await RawSocket.connect(APPS.quota);
  await expectRefused(APPS.quota, {}, 4004, 'third connection with max_connections = 2');
  a.close();
  await a.closed;
  const c = await eventually(async () => {
    const s = new RawSocket(APPS.quota);
    try {
      await s.expect(ev('pusher:connection_established'), 1000, 'x');
      return s;
    } catch {
      s.terminate();
      return null;
    }
  }, 3000, 100);
  assert.ok(c, 'a closed connection must release its max_connections slot');
  b.close();
  c.close();
});

test('Origin not matching allowed_origins is refused with 4009', async () => {
  await expectRefused(APPS.origin, { origin: 'http://evil.example' }, 4009, 'disallowed Origin');
});

test('Origin whose host matches allowed_origins is accepted (port ignored, * wildcard)', async () => {
  const a = await RawSocket.connect(APPS.origin, { origin: 'https://allowed.example:8443' }).catch((e) => {
    throw new Error(`Origin https://allowed.example:8443 must be accepted for allowed_origins ["allowed.example"]: ${e.message}`);
  });
  const b = await RawSocket.connect(APPS.origin, { origin: 'http://a.wild.example' }).catch((e) => {
    throw new Error(`Origin http://a.wild.example must match the pattern "*.wild.example": ${e.message}`);
  });
  a.close();
  b.close();
});

test('tls_only app reached over plain ws:// is refused with 4000', { skip: node(0).tls && 'server is reached over TLS' }, async () => {
  await expectRefused(APPS.tls, {}, 4000, 'tls_only app over ws://');
});

test('protocol=abc is refused with 4006', async () => {
  await expectRefused(APPS.main, { query: 'protocol=abc&client=js&version=8.6.0' }, 4006, 'protocol=abc');
});

test('protocol=3 and protocol=8 are refused with 4007', async () => {
  await expectRefused(APPS.main, { query: 'protocol=3&client=js&version=8.6.0' }, 4007, 'protocol=3');
  await expectRefused(APPS.main, { query: 'protocol=8&client=js&version=8.6.0' }, 4007, 'protocol=8');
});

test('protocol=5 (Android), protocol=4, protocol=6 and a missing protocol are accepted', async () => {
  for (const query of [
    'client=java-client&protocol=5&version=2.4.4',
    'protocol=4',
    'protocol=6&client=Pysher&version=1.0.7',
    'client=js&version=8.6.0',
    null,
  ]) {
    const s = await RawSocket.connect(APPS.main, { query }).catch((e) => {
      throw new Error(`connection with query "${query}" must be accepted: ${e.message}`);
    });
    s.close();
  }
});

test('connection_established carries a double-encoded socket_id and the app activity_timeout', async () => {
  const s = await RawSocket.connect(APPS.main);
  const m = s.established;
  assert.equal(s.messages[0].event, 'pusher:connection_established', 'connection_established must be the first frame');
  assert.equal(typeof m.data, 'string', `connection_established data must be a JSON string, got ${m.raw}`);
  assert.equal(m.channel, undefined, 'connection_established must not carry a channel');
  const d = JSON.parse(m.data);
  assert.equal(typeof d.socket_id, 'string', 'socket_id must be a string');
  assert.match(d.socket_id, SOCKET_ID, 'socket_id must match ^\\d+\\.\\d+$');
  assert.equal(typeof d.activity_timeout, 'number', 'activity_timeout must be a number');
  assert.ok(d.activity_timeout > 0, 'activity_timeout must be > 0');
  assert.equal(d.activity_timeout, APPS.main.activityTimeout, 'activity_timeout must equal the app setting');
  s.close();
});

test('socket ids are unique across many connections', async () => {
  const ids = new Set();
  for (let round = 0; round < 5; round++) {
    const socks = await Promise.all(Array.from({ length: 20 }, () => RawSocket.connect(APPS.main)));
    for (const s of socks) {
      assert.match(s.socketId, SOCKET_ID, 'socket_id must match ^\\d+\\.\\d+$');
      assert.ok(!ids.has(s.socketId), `socket id ${s.socketId} was handed out twice`);
      ids.add(s.socketId);
      s.close();
    }
  }
});

test('pusher:ping without data, with object data, string data and empty-string data gets pusher:pong', async () => {
  const s = await RawSocket.connect(APPS.main);
  const forms = [
    '{"event":"pusher:ping"}',
    '{"event":"pusher:ping","data":{}}',
    '{"event":"pusher:ping","data":"{}"}',
    '{"event":"pusher:ping","data":""}',
  ];
  for (const f of forms) {
    s.send(f);
    const pong = await s.expect(ev('pusher:pong'), 2000, `no pusher:pong for ${f}`);
    assert.equal(pong.channel, undefined, 'pusher:pong must not carry a channel');
    assert.equal(pong.data, '{}', `pusher:pong data must be the string "{}" (protocol.md 1.6), got ${pong.raw}`);
  }
  assert.equal(s.seen(ev('pusher:error')).length, 0, `a ping form produced a pusher:error: ${s.summary()}`);
  s.close();
});

test('WebSocket Ping control frame is answered with a Pong frame', async () => {
  const s = await RawSocket.connect(APPS.main);
  const pong = new Promise((resolve) => s.ws.once('pong', (d) => resolve(d.toString())));
  s.ws.ping('pt-probe');
  const payload = await Promise.race([pong, new Promise((r) => setTimeout(() => r(null), 2000))]);
  assert.equal(payload, 'pt-probe', 'WebSocket Ping frame was not answered with a Pong carrying the same payload');
  s.close();
});

test('malformed JSON, non-object JSON and a missing event get pusher:error 4200 and the socket stays open', async () => {
  const s = await RawSocket.connect(APPS.main);
  for (const bad of ['{"event":', '[1,2,3]', '"pusher:ping"', '{"data":{}}', '{"event":42}']) {
    s.send(bad);
    const err = await s.expect(ev('pusher:error'), 2000, `no pusher:error for malformed frame ${bad}`);
    assert.equal(errorData(err).code, 4200, `malformed frame ${bad} must get code 4200, got ${err.raw}`);
    await s.assertAlive(`connection must stay open after the malformed frame ${bad}`);
  }
  s.close();
});

test('binary frame gets a pusher:error and the socket stays open', async () => {
  const s = await RawSocket.connect(APPS.main);
  s.sendBinary(Buffer.from('{"event":"pusher:ping","data":{}}'));
  const err = await s.expect(ev('pusher:error'), 2000, 'binary frame was not answered with pusher:error');
  assert.equal(errorData(err).code, 4200, `binary frame error should carry code 4200 (protocol.md 1.5), got ${err.raw}`);
  await s.assertAlive('connection must stay open after a binary frame');
  s.close();
});

test('frame larger than max_message_size is closed with 1009', async () => {
  const s = await RawSocket.connect(APPS.main);
  s.send(JSON.stringify({ event: 'pusher:ping', data: { pad: 'x'.repeat(70 * 1024) } }));
  const c = await s.expectClose(3000, 'frame over max_message_size (64 KiB) did not close the connection');
  assert.equal(c.code, 1009, `frame over max_message_size must close with 1009, got ${c.code}`);
});

test('frame just under max_message_size is accepted', async () => {
  const s = await RawSocket.connect(APPS.main);
  const frame = JSON.stringify({ event: 'pusher:ping', data: { pad: 'x'.repeat(60 * 1024) } });
  s.send(frame);
  await s.expect(ev('pusher:pong'), 2000, 'a 60 KiB frame (under the 64 KiB default) must be processed');
  s.close();
});

test('unknown pusher: events are ignored silently', async () => {
  const s = await RawSocket.connect(APPS.main);
  s.send({ event: 'pusher:future_extension', data: {} });
  await s.assertAlive('connection must stay open after an unknown pusher: event');
  assert.equal(s.seen(ev('pusher:error')).length, 0, `unknown pusher: event must be ignored, got ${s.summary()}`);
  s.close();
});

test('plain HTTP GET on the WebSocket route without upgrade is refused with a 4xx', async () => {
  const res = await fetch(`${node(0).httpBase}/app/${APPS.main.key}?protocol=7`, { signal: AbortSignal.timeout(3000) });
  assert.ok(res.status >= 400 && res.status < 500, `GET /app/{key} without Upgrade must get 400/426, got ${res.status}`);
  const up = await fetch(`${node(0).httpBase}/up`, { signal: AbortSignal.timeout(3000) });
  assert.equal(up.status, 200, 'server must keep serving after a non-upgrade request to /app/{key}');
});

test('pusher-js HTTP fallback paths are served: a stream opens with the prelude, then `o` (1.9)', async () => {
  const ctl = new AbortController();
  const t = setTimeout(() => ctl.abort(), 3000);
  const res = await fetch(`${node(0).httpBase}/pusher/app/${APPS.main.key}/123/${uniq('s')}/xhr_streaming?protocol=7`, {
    method: 'POST',
    signal: ctl.signal,
  });
  assert.equal(res.status, 200, `the xhr_streaming path must answer 200, got ${res.status}`);
  const reader = res.body.getReader();
  let text = '';
  while (!text.includes('\no\n')) {
    const { value, done } = await reader.read();
    if (done) break;
    text += Buffer.from(value).toString('utf8');
  }
  ctl.abort();
  clearTimeout(t);
  assert.ok(text.startsWith('h'.repeat(2048) + '\n'), 'a stream starts with a 2048-byte prelude line');
  assert.ok(text.includes('\no\n'), `the open frame must follow the prelude, got ${JSON.stringify(text.slice(2049, 2100))}`);
});

test('silent client is pinged after activity_timeout and dropped with 4201, not before activity_timeout + pong_timeout', async () => {
  const { activityTimeout, pongTimeout } = APPS.idle;
  // Taken before the handshake, the server's last inbound frame from this client: the
  // server's clock for it starts later, so the close may not come sooner than this plus both timeouts.
  const lastInbound = Date.now();
  const silent = new RawSocket(APPS.idle, { autoPong: false });
  const est = await silent.expect(ev('pusher:connection_established'), 3000, 'idle app connection was not established');
  assert.equal(JSON.parse(est.data).activity_timeout, activityTimeout, 'activity_timeout must equal the app setting');
  // A client that answers keeps the connection (checked in parallel).
  const lively = await RawSocket.connect(APPS.idle, { answerPings: true });

  const pinged = await eventually(
    () => silent.seen(ev('pusher:ping')).length > 0 || silent.pings.length > 0,
    (activityTimeout + 3) * 1000,
  );
  assert.ok(pinged, `server did not ping a client silent for activity_timeout (${activityTimeout} s)`);
  const c = await silent.expectClose((pongTimeout + 4) * 1000, 'silent client was not disconnected after the pong timeout');
  assert.equal(c.code, 4201, `silent client must be closed with 4201, got ${c.code} "${c.reason}"`);
  const err = silent.seen(ev('pusher:error'));
  assert.ok(err.length && errorData(err[0]).code === 4201, 'pusher:error 4201 must be sent before the 4201 close');
  assert.ok(
    c.at - lastInbound >= (activityTimeout + pongTimeout) * 1000 - 20,
    `silent client closed ${c.at - lastInbound} ms after its last frame, before activity_timeout + pong_timeout`,
  );
  assert.ok(lively.isOpen, `client answering pings was disconnected: ${JSON.stringify(lively.closeInfo)}`);
  await lively.assertAlive('client answering server pings must stay connected');
  lively.close();
});
