// A bare WebSocket client (the `ws` package) that records every frame, for tests that need to see
// the exact wire messages, close codes and timing that a Pusher library would hide.

import { createRequire } from 'node:module';
import { node } from './env.mjs';

const require = createRequire(import.meta.url);
const WebSocket = require('ws');

const DEFAULT_QUERY = 'protocol=7&client=js&version=8.6.0&flash=false';
const open = new Set();

/** Close every raw socket a test left open. */
export function closeAllRaw() {
  for (const s of open) s.terminate();
  open.clear();
}

/** Predicate: message with this event (and channel, when given). */
export const ev = (event, channel) => (m) =>
  m.event === event && (channel === undefined || m.channel === channel);

export class RawSocket {
  /**
   * Open a WebSocket to /app/{key}. Does not wait for anything; see `connect` for that.
   * opts: node (index), query (string, or null for none), origin, headers, path (full override),
   * autoPong (answer Ping control frames, default true), answerPings (answer pusher:ping),
   * deflate (offer permessage-deflate: true, or ws's options object; default: no offer).
   */
  constructor(app, opts = {}) {
    const n = node(opts.node ?? 0);
    const query = opts.query === undefined ? DEFAULT_QUERY : opts.query;
    const path = opts.path ?? `/app/${encodeURIComponent(app.key)}${query === null ? '' : `?${query}`}`;
    this.url = `${n.wsBase}${path}`;
    this.app = app;
    this.answerPings = opts.answerPings ?? false;
    this.messages = [];
    this.binaryFrames = [];
    this.taken = new Set();
    this.waiters = [];
    this.closeInfo = null;
    this.httpStatus = null;
    this.ws = new WebSocket(this.url, {
      origin: opts.origin,
      headers: opts.headers,
      perMessageDeflate: opts.deflate ?? false,
      handshakeTimeout: 5000,
      autoPong: opts.autoPong ?? true,
    });
    this.pings = [];
    this.ws.on('ping', () => this.pings.push(Date.now()));
    open.add(this);
    this.opened = new Promise((resolve) => this.ws.once('open', () => resolve(true)));
    this.closed = new Promise((resolve) => {
      this.ws.once('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString('utf8'), at: Date.now() };
        open.delete(this);
        for (const w of this.waiters.splice(0)) w.closed(this.closeInfo);
        resolve(this.closeInfo);
      });
    });
    this.ws.on('unexpected-response', (req, res) => {
      this.httpStatus = res.statusCode;
      res.resume();
      req.destroy();
      this.ws.emit('close', 1006, Buffer.from(`HTTP ${res.statusCode}`));
    });
    this.ws.on('error', (e) => {
      this.lastError = e;
    });
    this.ws.on('message', (buf, isBinary) => this.#onFrame(buf, isBinary));
    this.createdAt = Date.now();
  }

  /** Open and wait for pusher:connection_established; fails with `what` in the message otherwise. */
  static async connect(app, opts = {}, ms = 4000) {
    const s = new RawSocket(app, opts);
    const m = await s.expect(ev('pusher:connection_established'), ms, 'connection was not established');
    s.established = m;
    s.socketId = JSON.parse(m.data).socket_id;
    return s;
  }

  #onFrame(buf, isBinary) {
    if (isBinary) {
      this.binaryFrames.push(buf);
      return;
    }
    const raw = buf.toString('utf8');
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      msg = { unparsable: true };
    }
    if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) msg = { nonObject: msg };
    msg.raw = raw;
    msg.at = Date.now();
    if (this.answerPings && msg.event === 'pusher:ping') this.send({ event: 'pusher:pong', data: {} });
    const index = this.messages.push(msg) - 1;
    for (const w of [...this.waiters]) {
      if (!this.taken.has(index) && w.pred(msg)) {
        this.taken.add(index);
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(msg);
      }
    }
  }

  /** Bytes read from the TCP socket so far (frame headers included). */
  bytesRead() {
    return this.ws._socket ? this.ws._socket.bytesRead : 0;
  }

  /** The extensions the server accepted, by name, comma-separated ("" when none). */
  get extensions() {
    return this.ws.extensions;
  }

  /** Index to pass as `since` to `seen`/`expectNone`. */
  mark() {
    return this.messages.length;
  }

  send(obj) {
    this.ws.send(typeof obj === 'string' ? obj : JSON.stringify(obj));
  }

  sendBinary(buf) {
    this.ws.send(buf, { binary: true });
  }

  /** Messages since `since` (default: all) that match `pred`. */
  seen(pred, since = 0) {
    return this.messages.slice(since).filter(pred);
  }

  summary(since = 0) {
    const lines = this.messages.slice(since).map((m) => m.raw.slice(0, 300));
    const close = this.closeInfo ? ` [closed ${this.closeInfo.code} "${this.closeInfo.reason}"]` : '';
    return `${lines.length ? lines.join('\n      ') : '(no frames)'}${close}`;
  }

  /**
   * Wait for the first message not yet taken by an earlier expect that matches `pred`.
   * Rejects with an Error whose message starts with `what`.
   */
  expect(pred, ms = 3000, what = 'expected message did not arrive') {
    for (let i = 0; i < this.messages.length; i++) {
      if (!this.taken.has(i) && pred(this.messages[i])) {
        this.taken.add(i);
        return Promise.resolve(this.messages[i]);
      }
    }
    return new Promise((resolve, reject) => {
      const fail = (why) => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error(`${what} (${why}); frames received:\n      ${this.summary()}`));
      };
      const t = setTimeout(() => fail(`nothing matching within ${ms} ms`), ms);
      const w = {
        pred,
        resolve: (m) => {
          clearTimeout(t);
          resolve(m);
        },
        closed: (c) => {
          clearTimeout(t);
          reject(new Error(`${what} (connection closed with ${c.code} "${c.reason}" first); frames received:\n      ${this.summary()}`));
        },
      };
      if (this.closeInfo) {
        clearTimeout(t);
        setImmediate(() => w.closed(this.closeInfo));
        return;
      }
      this.waiters.push(w);
    });
  }

  /** Wait `ms`, then fail with `what` if any message since `since` matches `pred`. */
  async expectNone(pred, ms, what, since = 0) {
    await new Promise((r) => setTimeout(r, ms));
    const bad = this.seen(pred, since);
    if (bad.length) throw new Error(`${what}; offending frame: ${bad[0].raw.slice(0, 300)}`);
  }

  /** Wait for the close frame; resolves {code, reason, at} or rejects with `what`. */
  async expectClose(ms = 3000, what = 'server did not close the connection') {
    if (this.closeInfo) return this.closeInfo;
    let t;
    const timeout = new Promise((_, reject) => {
      t = setTimeout(() => reject(new Error(`${what} within ${ms} ms; frames received:\n      ${this.summary()}`)), ms);
    });
    try {
      return await Promise.race([this.closed, timeout]);
    } finally {
      clearTimeout(t);
    }
  }

  get isOpen() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** Prove the socket is alive: a pusher:ping gets a pusher:pong. */
  async assertAlive(what = 'connection should still be open and answering pings', ms = 2000) {
    if (!this.isOpen) throw new Error(`${what} (it was closed: ${JSON.stringify(this.closeInfo)})`);
    this.send({ event: 'pusher:ping', data: {} });
    await this.expect(ev('pusher:pong'), ms, what);
  }

  /**
   * Send pusher:subscribe and wait for the outcome:
   * {ok: true, msg} on subscription_succeeded, {ok: false, msg} on a pusher:error
   * (with this channel, or without any channel) or pusher:subscription_error.
   */
  async subscribe(channel, extra = {}, ms = 3000) {
    const data = { auth: '', channel, ...extra };
    this.send({ event: 'pusher:subscribe', data });
    const msg = await this.expect(
      (m) =>
        (m.event === 'pusher_internal:subscription_succeeded' && m.channel === channel) ||
        (m.event === 'pusher:error' && (m.channel === channel || m.channel === undefined)) ||
        (m.event === 'pusher:subscription_error' && m.channel === channel),
      ms,
      `no reply to the subscription of "${channel}"`,
    );
    return { ok: msg.event === 'pusher_internal:subscription_succeeded', msg };
  }

  /** Subscribe and fail with `what` unless the subscription succeeds. */
  async mustSubscribe(channel, extra = {}, what) {
    const r = await this.subscribe(channel, extra);
    if (!r.ok) throw new Error(`${what ?? `subscription to "${channel}" was refused`}: ${r.msg.raw}`);
    return r.msg;
  }

  /** pusher:signin with a token from the Node server SDK. */
  async signin(sdk, userData, ms = 3000) {
    const token = sdk.authenticateUser(this.socketId, userData);
    this.send({ event: 'pusher:signin', data: token });
    const msg = await this.expect(
      (m) => m.event === 'pusher:signin_success' || m.event === 'pusher:error',
      ms,
      'no reply to pusher:signin',
    );
    return { ok: msg.event === 'pusher:signin_success', msg, token };
  }

  close() {
    this.ws.close(1000);
  }

  terminate() {
    this.ws.terminate();
    open.delete(this);
  }
}

/** pusher:error data as an object (protocol.md 1.5: object; a JSON string is tolerated by clients). */
export function errorData(m) {
  if (typeof m.data === 'string') {
    try {
      return JSON.parse(m.data);
    } catch {
      return {};
    }
  }
  return m.data ?? {};
}

/** data of a double-encoded server message (protocol.md 1.5): must be a string holding JSON. */
export function innerData(m) {
  return typeof m.data === 'string' ? JSON.parse(m.data) : m.data;
}
