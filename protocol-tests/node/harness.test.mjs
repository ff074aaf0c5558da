// Checks of the suite's own signer against protocol.md's vectors (8.5), so that a failure in the
// hand-made (Laravel-shaped) requests can be blamed on the server and not on the signer.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { signedQuery } from '../lib/sign.mjs';

const vapp = { id: '3', key: '278d425bdf160c739803', secret: '7ad3773142a6692b25b8' };
const ts = 1353088179;
const sigOf = (q) => new URLSearchParams(q).get('auth_signature');

test('harness: signer reproduces H1 (POST /events, node style)', () => {
  const body = '{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}';
  const { query } = signedQuery({ app: vapp, method: 'POST', path: '/apps/3/events', body, timestamp: ts });
  assert.equal(sigOf(query), 'da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c');
});

test('harness: signer reproduces H3 (PHP style, comma sent as %2C, signed decoded)', () => {
  const { query } = signedQuery({
    app: vapp,
    method: 'GET',
    path: '/apps/3/channels/presence-foobar',
    params: { info: 'user_count,subscription_count' },
    style: 'php',
    timestamp: ts,
  });
  assert.ok(query.includes('info=user_count%2Csubscription_count'));
  assert.equal(sigOf(query), '377ee9260ea002a70c0d40cd887d55cb36db9f7f821297f5efacbcce66be356d');
});

test('harness: signer reproduces H8 (Python style GET with body_md5 of "")', () => {
  const { query } = signedQuery({
    app: vapp,
    method: 'GET',
    path: '/apps/3/channels',
    params: { filter_by_prefix: 'presence-', info: 'user_count' },
    style: 'python',
    timestamp: ts,
  });
  assert.equal(sigOf(query), 'f3f17c61ae491cc9085db68b22076e9b772e3bcb301659d655153ee3f9782aba');
});

test('harness: signer reproduces H7 (PHP single channel with socket_id)', () => {
  const body = '{"name":"App\\\\Events\\\\OrderShipped","data":"{\\"order\\":{\\"id\\":1}}","channel":"private-orders.1","socket_id":"1234.5678"}';
  const { query } = signedQuery({ app: vapp, method: 'POST', path: '/apps/3/events', body, style: 'php', timestamp: ts });
  assert.equal(sigOf(query), '81a428cfc49aaee69dbc423b64e5f11f59570ddd3dad292e926b5c65693b8031');
});
