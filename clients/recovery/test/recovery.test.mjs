// The helper with pusher-js and Laravel Echo in Node, against a real server (RESOUND_BIN,
// default ../../target/debug/resound) started on a free port, each client behind a TCP proxy
// that the test cuts without a close.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, createHmac } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

import { enableRecovery } from "../dist/index.js";

const require = createRequire(import.meta.url);
const Pusher = require("pusher-js");
const { default: Echo } = await import("laravel-echo");

const HERE = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.RESOUND_BIN ?? join(HERE, "../../../target/debug/resound");
const APP = { id: "77", key: "rec-key", secret: "rec-secret" };
const SMALL = { id: "78", key: "rec-small-key", secret: "rec-small-secret" };

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function startServer() {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "resound-recovery-"));
  const config = join(dir, "resound.toml");
  writeFileSync(
    config,
    `[server]\nhost = "127.0.0.1"\nport = ${port}\n\n` +
      `[[apps]]\nid = "${APP.id}"\nkey = "${APP.key}"\nsecret = "${APP.secret}"\nhistory_channels = ["chat-*"]\n\n` +
      `[[apps]]\nid = "${SMALL.id}"\nkey = "${SMALL.key}"\nsecret = "${SMALL.secret}"\nhistory_channels = ["chat-*"]\nhistory_max_events = 5\n`,
  );
  const child = spawn(BIN, ["--config", config], { stdio: "ignore" });
  for (let i = 0; i < 150; i++) {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/up`);
      if (r.status === 200) return { port, child };
    } catch {
      /* not up yet */
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill();
  throw new Error(`${BIN} did not start`);
}

const server = await startServer();
after(() => server.child.kill());

/** A TCP proxy to the server; `cut()` destroys every piped connection (no close frame). */
function proxy() {
  const open = new Set();
  const s = net.createServer((client) => {
    const upstream = net.connect(server.port, "127.0.0.1");
    client.pipe(upstream).pipe(client);
    const pair = [client, upstream];
    open.add(pair);
    const drop = () => {
      open.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", drop).on("close", drop);
    upstream.on("error", drop).on("close", drop);
  });
  return new Promise((resolve) =>
    s.listen(0, "127.0.0.1", () =>
      resolve({
        port: s.address().port,
        cut() {
          for (const [a, b] of open) {
            a.destroy();
            b.destroy();
          }
          open.clear();
        },
        close() {
          this.cut();
          s.close();
        },
      }),
    ),
  );
}

/** A signed `POST /apps/{id}/events`, as the server SDKs send it. */
async function trigger(app, channel, name, data) {
  const body = JSON.stringify({ name, channels: [channel], data });
  const path = `/apps/${app.id}/events`;
  const params = {
    auth_key: app.key,
    auth_timestamp: Math.floor(Date.now() / 1000).toString(),
    auth_version: "1.0",
    body_md5: createHash("md5").update(body).digest("hex"),
  };
  const query = Object.keys(params)
    .sort()
    .map((k) => `${k}=${params[k]}`)
    .join("&");
  const signature = createHmac("sha256", app.secret).update(`POST\n${path}\n${query}`).digest("hex");
  const r = await fetch(`http://127.0.0.1:${server.port}${path}?${query}&auth_signature=${signature}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body,
  });
  assert.equal(r.status, 200, await r.text());
}

function pusherVia(p, app) {
  return new Pusher(app.key, {
    cluster: "local",
    wsHost: "127.0.0.1",
    wsPort: p.port,
    forceTLS: false,
    enabledTransports: ["ws"],
  });
}

function until(what, check, ms = 10_000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const t = setInterval(() => {
      if (check()) {
        clearInterval(t);
        resolve();
      } else if (Date.now() - started > ms) {
        clearInterval(t);
        reject(new Error(`timed out waiting for ${what}`));
      }
    }, 20);
  });
}

const once = (recovery, event) => new Promise((resolve) => recovery.on(event, resolve));

async function publish(app, channel, from, to) {
  for (let i = from; i < to; i++) await trigger(app, channel, "msg", JSON.stringify({ n: i }));
}

test("pusher-js with the helper gets every event missed while cut, once and in order", async () => {
  const p = await proxy();
  const pusher = pusherVia(p, APP);
  const recovery = enableRecovery(pusher);
  const got = [];
  pusher.subscribe("chat-js").bind("msg", (d) => got.push(d.n));
  await until("the subscription", () => recovery.position("chat-js") !== undefined);
  await publish(APP, "chat-js", 0, 20);
  await until("20 events", () => got.length === 20);
  const recovered = once(recovery, "recovered");
  p.cut();
  await publish(APP, "chat-js", 20, 40); // while pusher-js reconnects
  const r = await recovered;
  assert.equal(r.channel, "chat-js");
  assert.ok(r.count > 0 && r.count <= 20, `recovered ${r.count}`);
  await publish(APP, "chat-js", 40, 50);
  await until("50 events", () => got.length >= 50);
  await new Promise((res) => setTimeout(res, 200));
  assert.deepEqual(got, Array.from({ length: 50 }, (_, i) => i));
  assert.equal(recovery.position("chat-js").offset, 50);
  pusher.disconnect();
  p.close();
});

test("Laravel Echo with the helper (one line) recovers; beyond the window it says recovery failed", async () => {
  const p = await proxy();
  const echo = new Echo({
    broadcaster: "pusher",
    key: SMALL.key,
    cluster: "local",
    wsHost: "127.0.0.1",
    wsPort: p.port,
    forceTLS: false,
    enabledTransports: ["ws"],
    Pusher,
  });
  const recovery = enableRecovery(echo.connector.pusher);
  const got = [];
  echo.channel("chat-echo").listen(".msg", (d) => got.push(d.n));
  await until("the subscription", () => recovery.position("chat-echo") !== undefined);
  await publish(SMALL, "chat-echo", 0, 3);
  await until("3 events", () => got.length === 3);

  // A short cut: three missed events, within the five kept.
  let recovered = once(recovery, "recovered");
  p.cut();
  await publish(SMALL, "chat-echo", 3, 6);
  assert.equal((await recovered).count, 3);
  await until("6 events", () => got.length === 6);
  assert.deepEqual(got, [0, 1, 2, 3, 4, 5]);

  // A long cut: ten missed, five kept: recovery failed, and live events go on.
  const failed = once(recovery, "failed");
  p.cut();
  await publish(SMALL, "chat-echo", 6, 16);
  const f = await failed;
  assert.deepEqual(f, { channel: "chat-echo", reason: "window_exceeded" });
  await publish(SMALL, "chat-echo", 16, 17);
  await until("the live event", () => got.includes(16));
  echo.disconnect();
  p.close();
});

test("channels without history are left alone: no recovery event, events as usual", async () => {
  const p = await proxy();
  const pusher = pusherVia(p, APP);
  const recovery = enableRecovery(pusher);
  const events = [];
  recovery.on("recovered", (e) => events.push(e)).on("failed", (e) => events.push(e));
  const got = [];
  const ch = pusher.subscribe("news");
  ch.bind("msg", (d) => got.push(d.n));
  await new Promise((res) => ch.bind("pusher:subscription_succeeded", res));
  await publish(APP, "news", 0, 2);
  await until("2 events", () => got.length === 2);
  const resubscribed = new Promise((res) => ch.bind("pusher:subscription_succeeded", res));
  p.cut();
  await resubscribed;
  await publish(APP, "news", 2, 3);
  await until("the live event", () => got.length === 3);
  assert.deepEqual(events, [], "nothing to recover on a channel without history");
  pusher.disconnect();
  p.close();
});
