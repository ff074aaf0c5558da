// The debug console in a real browser: Chromium (playwright-core, never downloading a browser)
// opens the page the server serves itself, is refused without the token, signs in with it, and
// must show, live, a pusher-js connection, its subscription, an event published with the Node
// server SDK and a client event; filters hide what does not match; the page's event creator must
// deliver to a pusher-js client. Screenshots go to artifacts/.
//
// The console is Resound's own: against a server without one (GET /console/ answers 404) the
// tests are skipped and say so. PT_CONSOLE_URL (default: /console/ on the first URL) and
// PT_CONSOLE_TOKEN (default: protocol-tests/resound.toml's) point elsewhere.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, access } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { APPS, node, serverSdk, uniq } from '../lib/env.mjs';
import { pusherJs, connected, subscribed, nextEvent, closeAllClients } from '../lib/clients.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const artifacts = path.join(path.resolve(here, '..'), 'artifacts');
const CHROMIUM = process.env.PT_CHROMIUM || '/usr/bin/chromium';
const CONSOLE = process.env.PT_CONSOLE_URL || `${node(0).httpBase}/console/`;
const TOKEN = process.env.PT_CONSOLE_TOKEN || 'pt-console-admin-token';
const APP = APPS.console;

let work;
let context;
let page;
let absent = null;

before(async () => {
  const probe = await fetch(CONSOLE).catch((e) => ({ status: 0, error: e }));
  if (probe.status === 404) {
    absent = `no debug console at ${CONSOLE} (404)`;
    return;
  }
  assert.equal(probe.status, 200, `GET ${CONSOLE}`);
  await access(CHROMIUM).catch(() => {
    throw new Error(`Chromium not found at ${CHROMIUM} (protocol-tests/run installs it with apt-get)`);
  });
  work = await mkdtemp(path.join(tmpdir(), 'pt-console-'));
  await mkdir(artifacts, { recursive: true });
  context = await chromium.launchPersistentContext(path.join(work, 'profile'), {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 800 },
    timeout: 30000,
  });
  // Nothing but the server under test: the page must work offline.
  await context.route(
    (url) => url.origin !== new URL(CONSOLE).origin,
    (route) => route.abort(),
  );
  page = context.pages()[0] ?? (await context.newPage());
});

after(async () => {
  closeAllClients();
  await context?.close().catch(() => {});
  if (work) await rm(work, { recursive: true, force: true });
});

async function signIn(token) {
  await page.goto(CONSOLE, { timeout: 10000 });
  await page.fill('#app-id', APP.id);
  await page.fill('#token', token);
  await page.click('#signin-form button[type=submit]');
}

/** Waits until the log shows a row of `kind` whose text contains every string of `has`. */
async function row(kind, has, ms = 5000) {
  await page
    .waitForFunction(
      ([k, h]) =>
        [...document.querySelectorAll('#log-body tr')].some(
          (tr) => tr.dataset.kind === k && h.every((s) => tr.textContent.includes(s)),
        ),
      [kind, has],
      { timeout: ms },
    )
    .catch(async () => {
      const rows = await page.$$eval('#log-body tr', (trs) => trs.slice(0, 30).map((tr) => tr.textContent));
      throw new Error(`the console did not show ${kind} with ${JSON.stringify(has)}; rows: ${JSON.stringify(rows)}`);
    });
}

test('console: refused without the token', async (t) => {
  if (absent) return t.skip(absent);
  const stream = new URL(`apps/${APP.id}/stream`, CONSOLE);
  assert.equal((await fetch(stream)).status, 401, 'the feed without a credential');
  assert.equal(
    (await fetch(stream, { headers: { authorization: 'Bearer not-the-token' } })).status,
    403,
    'the feed with a wrong credential',
  );
  await signIn('not-the-token');
  await page.waitForSelector('#signin-error:not([hidden])', { timeout: 5000 });
  assert.match(await page.textContent('#signin-error'), /403/);
  assert.equal(await page.isVisible('#console'), false, 'the console stays hidden');
  await page.screenshot({ path: path.join(artifacts, 'console-refused.png') });
});

test('console: shows a connection, a subscription, an API event and a client event live', async (t) => {
  if (absent) return t.skip(absent);
  await signIn(TOKEN);
  await page.waitForSelector('#status.live', { timeout: 5000 });

  const channel = uniq('private-console.');
  const a = pusherJs(APP);
  const socketId = await connected(a);
  await row('connection_opened', [socketId]);
  await subscribed(a, channel);
  await row('subscribed', [channel, socketId]);

  const b = pusherJs(APP);
  await connected(b);
  const chB = await subscribed(b, channel);
  const gotWhisper = nextEvent(chB, 'client-typing');
  const chA = a.channel(channel);
  chA.trigger('client-typing', { who: 'a' });
  await gotWhisper;
  await row('client_event', [channel, 'client-typing', '"who":"a"']);

  await serverSdk(APP).trigger(channel, 'order-shipped', { order: 42 });
  await row('api_event', [channel, 'order-shipped', '"order":42']);

  await page.screenshot({ path: path.join(artifacts, 'console-live.png'), fullPage: true });

  // The filters: another channel's rows are hidden, this channel's stay.
  const other = uniq('news.');
  await serverSdk(APP).trigger(other, 'elsewhere', { n: 1 });
  await row('api_event', [other]);
  await page.fill('#filter-channel', channel);
  const shown = await page.$$eval('#log-body tr:not(.hidden)', (trs) => trs.map((tr) => tr.dataset.channel));
  assert.ok(shown.length >= 3, `rows of ${channel} stay visible: ${JSON.stringify(shown)}`);
  assert.ok(shown.every((c) => c.includes(channel)), `only ${channel} is shown: ${JSON.stringify(shown)}`);
  await page.fill('#filter-event', 'order-shipped');
  const events = await page.$$eval('#log-body tr:not(.hidden)', (trs) => trs.map((tr) => tr.dataset.event));
  assert.deepEqual(events, ['order-shipped']);
  await page.screenshot({ path: path.join(artifacts, 'console-filtered.png'), fullPage: true });
  await page.fill('#filter-channel', '');
  await page.fill('#filter-event', '');
});

test('console: the event creator delivers to a pusher-js client', async (t) => {
  if (absent) return t.skip(absent);
  await signIn(TOKEN);
  await page.waitForSelector('#status.live', { timeout: 5000 });
  const channel = uniq('creator.');
  const c = pusherJs(APP);
  await connected(c);
  const ch = await subscribed(c, channel);
  const got = nextEvent(ch, 'made-in-console', 5000);
  await page.fill('#new-channel', channel);
  await page.fill('#new-event', 'made-in-console');
  await page.fill('#new-data', '{"hello":"from the console"}');
  await page.click('#creator-form button[type=submit]');
  assert.deepEqual(await got, { hello: 'from the console' });
  // The event can reach the subscriber before the page has read the answer to its POST
  // (through another node it often does): wait for the page to say so.
  await page.waitForFunction(() => document.querySelector('#creator-result')?.textContent !== '', null, { timeout: 5000 });
  assert.equal(await page.textContent('#creator-result'), 'sent');
  await row('api_event', [channel, 'made-in-console', '[console]']);
  await page.screenshot({ path: path.join(artifacts, 'console-creator.png'), fullPage: true });
});

test('console: a burst is sampled and the page says how many entries were skipped', async (t) => {
  if (absent) return t.skip(absent);
  await signIn(TOKEN);
  await page.waitForSelector('#status.live', { timeout: 5000 });
  // 5 × 100 channels: 500 entries at once, above the 200 a viewer is sent per second.
  const sdk = serverSdk(APP);
  const prefix = uniq('burst.');
  for (let round = 0; round < 5; round++) {
    const channels = Array.from({ length: 100 }, (_, i) => `${prefix}-${round}-${i}`);
    const resp = await sdk.trigger(channels, 'tick', { round });
    assert.equal(resp.status, 200);
  }
  await page.waitForSelector('#sampling:not([hidden])', { timeout: 5000 });
  const text = await page.textContent('#sampling');
  const skipped = Number(/(\d+) entries skipped/.exec(text)?.[1]);
  assert.ok(skipped > 0 && skipped < 500, text);
  const rows = await page.$$eval('#log-body tr', (trs) => trs.filter((tr) => tr.dataset.kind === 'api_event').length);
  assert.ok(rows > 0 && rows + skipped <= 500, `${rows} rows shown, ${skipped} skipped`);
  await page.screenshot({ path: path.join(artifacts, 'console-sampling.png') });
});
