// Where the server under test lives and which apps it serves.
//
// PT_URLS is a comma-separated list of base URLs (http://host:port). Single-node runs give one;
// a cluster run gives several, and tests that expect cluster-wide behaviour put publisher and
// subscriber on different entries (node(0) and node(1) wrap around when there is only one).

import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';

const require = createRequire(import.meta.url);
const ServerSdk = require('pusher');

export const URLS = (process.env.PT_URLS || 'http://127.0.0.1:8080')
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean);

/** Address of cluster node `i` (wraps around). */
export function node(i = 0) {
  const u = new URL(URLS[i % URLS.length]);
  const tls = u.protocol === 'https:';
  const port = Number(u.port || (tls ? 443 : 80));
  return {
    httpBase: `${u.protocol}//${u.host}`,
    wsBase: `${tls ? 'wss' : 'ws'}://${u.host}`,
    host: u.hostname,
    port,
    tls,
  };
}

/** The apps of protocol-tests/resound.toml. A server under test must be configured the same way. */
export const APPS = {
  main: { id: '1000001', key: 'pt-key', secret: 'pt-secret', activityTimeout: 60 },
  disabled: { id: '1000002', key: 'pt-disabled-key', secret: 'pt-disabled-secret' },
  noclient: { id: '1000003', key: 'pt-noclient-key', secret: 'pt-noclient-secret' },
  origin: { id: '1000004', key: 'pt-origin-key', secret: 'pt-origin-secret' },
  quota: { id: '1000005', key: 'pt-quota-key', secret: 'pt-quota-secret', maxConnections: 2 },
  limits: {
    id: '1000006',
    key: 'pt-limits-key',
    secret: 'pt-limits-secret',
    maxPresenceMembers: 3,
    maxMemberSize: 100,
    cacheTtl: 2,
  },
  extras: { id: '1000007', key: 'pt-extras-key', secret: 'pt-extras-secret' },
  tls: { id: '1000008', key: 'pt-tls-key', secret: 'pt-tls-secret' },
  idle: { id: '1000009', key: 'pt-idle-key', secret: 'pt-idle-secret', activityTimeout: 2, pongTimeout: 2 },
  quiet: { id: '1000010', key: 'pt-quiet-key', secret: 'pt-quiet-secret' },
  hooks: { id: '1000011', key: 'pt-hooks-key', secret: 'pt-hooks-secret', removalDelay: 1, webhookPort: 29613 },
  recover: { id: '1000013', key: 'pt-recover-key', secret: 'pt-recover-secret', historyMaxEvents: 20 },
  console: { id: '1000014', key: 'pt-console-key', secret: 'pt-console-secret' },
};

/** 32 bytes 0x00..0x1f, the master key of protocol.md 8.4. */
export const MASTER_KEY_B64 = 'AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=';

/** pusher-http-node client for `app`, talking to node `i`. */
export function serverSdk(app = APPS.main, i = 0) {
  const n = node(i);
  return new ServerSdk({
    appId: app.id,
    key: app.key,
    secret: app.secret,
    host: n.host,
    port: String(n.port),
    useTLS: n.tls,
    encryptionMasterKeyBase64: MASTER_KEY_B64,
    timeout: 5000,
  });
}

/** A channel-name-safe unique suffix, so that test files never share channels. */
export function uniq(prefix = '') {
  return `${prefix}${Date.now().toString(36)}${randomBytes(4).toString('hex')}`;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll `fn` until it returns a truthy value or `ms` passes; returns the last value. */
export async function eventually(fn, ms = 3000, every = 50) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    last = await fn();
    if (last || Date.now() >= end) return last;
    await sleep(every);
  }
}
