// A real browser: Chromium (driven by playwright-core, never downloading a browser) opens a page
// whose script imports pusher-js and laravel-echo (bundled here with esbuild), served from
// 127.0.0.1 so the WebSocket carries a real Origin. Echo authorizes through the page server's
// /broadcasting/auth, the test publishes with the Node server SDK, the page must show the events.
// The origin-restricted app must refuse the page unless it is served from an allowed host. With
// the page's WebSocket blocked, Echo must connect through pusher-js's HTTP fallback (a cross-origin
// XHR: CORS) and show an event.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, access } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { chromium } from 'playwright-core';
import { APPS, URLS, node, serverSdk, uniq } from '../lib/env.mjs';
import { pusherJs, connected, subscribed, closeAllClients } from '../lib/clients.mjs';
import { startPageServer } from '../browser/server.mjs';
import { cuttingProxy } from '../lib/proxy.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const artifacts = path.join(root, 'artifacts');
const CHROMIUM = process.env.PT_CHROMIUM || '/usr/bin/chromium';

let work;
let page;
let context;
let pageServer;

const sdks = Object.fromEntries(Object.values(APPS).map((a) => [a.key, serverSdk(a)]));

before(async () => {
  await access(CHROMIUM).catch(() => {
    throw new Error(`Chromium not found at ${CHROMIUM} (protocol-tests/run installs it with apt-get)`);
  });
  work = await mkdtemp(path.join(tmpdir(), 'pt-browser-'));
  await mkdir(artifacts, { recursive: true });
  const bundlePath = path.join(work, 'app.js');
  await build({
    entryPoints: [path.join(root, 'browser', 'app.mjs')],
    bundle: true,
    format: 'iife',
    platform: 'browser',
    target: 'es2020',
    outfile: bundlePath,
    logLevel: 'error',
  });
  pageServer = await startPageServer({ bundlePath, sdkFor: (key) => sdks[key] });
  context = await chromium.launchPersistentContext(path.join(work, 'profile'), {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      // allowed.example (the origin app's allowed host) is this machine
      '--host-resolver-rules=MAP allowed.example 127.0.0.1',
    ],
    viewport: { width: 900, height: 600 },
    timeout: 30000,
  });
  page = context.pages()[0] ?? (await context.newPage());
});

after(async () => {
  closeAllClients();
  await context?.close().catch(() => {});
  pageServer?.server.close();
  if (work) await rm(work, { recursive: true, force: true });
});

function pageUrl(host, app, extra = {}, n = node(1)) {
  const q = new URLSearchParams({ key: app.key, wsHost: n.host, wsPort: String(n.port), tls: n.tls ? '1' : '0', ...extra });
  return `http://${host}:${pageServer.port}/?${q}`;
}

const pt = () => page.evaluate(() => window.__pt);

test('browser: Echo in Chromium receives public and private events and a whisper', async () => {
  const pub = uniq('news.');
  const priv = uniq('orders.');
  await page.goto(pageUrl('127.0.0.1', APPS.main, { public: pub, private: priv }), { timeout: 10000 });
  await page
    .waitForFunction(() => window.__pt && window.__pt.subscribed.length === 2, null, { timeout: 8000 })
    .catch(async () => {
      throw new Error(`the page's Echo did not connect and subscribe in Chromium: ${JSON.stringify(await pt())}`);
    });
  const sdk = serverSdk(APPS.main);
  await sdk.trigger(pub, 'Published', { title: 'Hello from the HTTP API' });
  await sdk.trigger(`private-${priv}`, 'App\\Events\\OrderShipped', { order: 42 });
  const whisperer = pusherJs(APPS.main);
  await connected(whisperer);
  const ch = await subscribed(whisperer, `private-${priv}`);
  ch.trigger('client-typing', { name: 'node' });
  await page
    .waitForFunction(() => window.__pt.events.length >= 3, null, { timeout: 5000 })
    .catch(async () => {
      throw new Error(`the browser page did not show all events: ${JSON.stringify(await pt())}`);
    });
  const { events, states } = await pt();
  assert.ok(states.includes('connected'), 'browser connection never reached "connected"');
  const byLabel = Object.fromEntries(events.map((e) => [e.label, e.data]));
  assert.deepEqual(byLabel.Published, { title: 'Hello from the HTTP API' }, 'public event shown in the page');
  assert.deepEqual(byLabel.OrderShipped, { order: 42 }, 'private event shown in the page');
  assert.deepEqual(byLabel['whisper typing'], { name: 'node' }, 'whisper shown in the page');
  const text = await page.textContent('#events');
  assert.ok(text.includes('Hello from the HTTP API'), 'the event text is visible on the page');
  await page.screenshot({ path: path.join(artifacts, 'browser-echo.png') });
});

test('browser: page served from a host not in allowed_origins is refused (4009)', async () => {
  await page.goto(pageUrl('127.0.0.1', APPS.origin, { public: uniq('news.') }), { timeout: 10000 });
  const refused = await page
    .waitForFunction(
      () => {
        const p = window.__pt;
        return p && (JSON.stringify(p.errors).includes('4009') || p.states.some((s) => ['failed', 'unavailable', 'disconnected'].includes(s)));
      },
      null,
      { timeout: 8000 },
    )
    .then(() => true)
    .catch(() => false);
  const state = await pt();
  await page.screenshot({ path: path.join(artifacts, 'browser-origin-refused.png') });
  assert.ok(refused, `a browser connection from a disallowed Origin was not refused: ${JSON.stringify(state)}`);
  assert.ok(!state.states.includes('connected'), `a browser from a disallowed Origin reached "connected": ${JSON.stringify(state)}`);
  assert.ok(JSON.stringify(state.errors).includes('4009'), `the refusal should carry code 4009: ${JSON.stringify(state.errors)}`);
});

test('browser: page served from allowed.example connects to the origin-restricted app', async () => {
  const pub = uniq('news.');
  await page.goto(pageUrl('allowed.example', APPS.origin, { public: pub }), { timeout: 10000 });
  await page
    .waitForFunction(() => window.__pt && window.__pt.subscribed.length === 1, null, { timeout: 8000 })
    .catch(async () => {
      throw new Error(`a page on an allowed origin (allowed.example) could not connect: ${JSON.stringify(await pt())}`);
    });
  await serverSdk(APPS.origin).trigger(pub, 'Published', { ok: true });
  await page.waitForFunction(() => window.__pt.events.length === 1, null, { timeout: 5000 }).catch(async () => {
    throw new Error(`event not shown on the allowed-origin page: ${JSON.stringify(await pt())}`);
  });
  await page.screenshot({ path: path.join(artifacts, 'browser-origin-allowed.png') });
});

test('browser: with WebSockets blocked, Echo falls back to pusher-js\'s HTTP transport and shows a triggered event', async () => {
  const pub = uniq('news.');
  await page.goto(pageUrl('127.0.0.1', APPS.main, { public: pub, blockWebSocket: '1' }), { timeout: 10000 });
  await page
    .waitForFunction(() => window.__pt && window.__pt.subscribed.length === 1, null, { timeout: 20000 })
    .catch(async () => {
      throw new Error(`the page did not connect over HTTP with WebSockets blocked: ${JSON.stringify(await pt())}`);
    });
  const { transport } = await pt();
  assert.match(String(transport), /^xhr_(streaming|polling)$/, `expected an HTTP transport, got ${transport}`);
  await serverSdk(APPS.main).trigger(pub, 'Published', { title: 'Over HTTP' });
  await page.waitForFunction(() => window.__pt.events.length === 1, null, { timeout: 5000 }).catch(async () => {
    throw new Error(`event not shown on the page connected over HTTP: ${JSON.stringify(await pt())}`);
  });
  const text = await page.textContent('#events');
  assert.ok(text.includes('Over HTTP'), 'the event text is visible on the page');
  await page.screenshot({ path: path.join(artifacts, 'browser-http-fallback.png') });
});

test('browser: with WebSockets blocked, a page from a host not in allowed_origins is refused over HTTP (4009)', async () => {
  await page.goto(pageUrl('127.0.0.1', APPS.origin, { public: uniq('news.'), blockWebSocket: '1' }), { timeout: 10000 });
  const refused = await page
    .waitForFunction(() => window.__pt && JSON.stringify(window.__pt.errors).includes('4009'), null, { timeout: 20000 })
    .then(() => true)
    .catch(() => false);
  const state = await pt();
  assert.ok(refused, `the HTTP fallback from a disallowed Origin did not read 4009: ${JSON.stringify(state)}`);
  assert.ok(!state.states.includes('connected'), `a page from a disallowed Origin connected over HTTP: ${JSON.stringify(state)}`);
});

test('browser: a page that goes offline and online again gets the events it missed (recovery helper)', {
  skip: URLS.length > 1 || node(1).tls ? 'histories are kept on one node, over ws://' : false,
}, async () => {
  // The page reaches the node through a proxy: taking the browser offline does not end a
  // WebSocket that is already open, so the proxy drops it while the browser is offline.
  const proxy = await cuttingProxy(node(1));
  const channel = uniq('recover-page-');
  const url = pageUrl('127.0.0.1', APPS.recover, { public: channel, recover: '1' }, { ...node(1), port: proxy.port });
  await page.goto(url, { timeout: 10000 });
  await page.waitForFunction(() => window.__pt && window.__pt.subscribed.length === 1, null, { timeout: 8000 }).catch(async () => {
    throw new Error(`the page did not subscribe: ${JSON.stringify(await pt())}`);
  });
  const sdk = serverSdk(APPS.recover);
  const publish = async (from, to) => {
    for (let i = from; i < to; i++) await sdk.trigger(channel, 'Published', { n: i });
  };
  await publish(0, 3);
  await page.waitForFunction(() => window.__pt.events.length === 3, null, { timeout: 5000 });

  await context.setOffline(true);
  proxy.down();
  await page.waitForFunction(() => window.__pt.states.at(-1) !== 'connected', null, { timeout: 10000 }).catch(async () => {
    throw new Error(`the page did not notice it was offline: ${JSON.stringify(await pt())}`);
  });
  await publish(3, 13); // missed while offline
  await page.screenshot({ path: path.join(artifacts, 'browser-recovery-offline.png') });
  proxy.up();
  await context.setOffline(false);

  await page.waitForFunction(() => window.__pt.recovery.length > 0, null, { timeout: 15000 }).catch(async () => {
    throw new Error(`no recovery after coming back online: ${JSON.stringify(await pt())}`);
  });
  await publish(13, 14);
  await page.waitForFunction(() => window.__pt.events.length >= 14, null, { timeout: 5000 }).catch(async () => {
    throw new Error(`the page did not get every event: ${JSON.stringify(await pt())}`);
  });
  const { events, recovery, states } = await pt();
  assert.deepEqual(recovery, [{ recovered: { channel, count: 10 } }], JSON.stringify(states));
  assert.deepEqual(events.map((e) => e.data.n), Array.from({ length: 14 }, (_, i) => i), 'every event once, in order');
  await page.screenshot({ path: path.join(artifacts, 'browser-recovery-online.png') });
  proxy.close();
});
