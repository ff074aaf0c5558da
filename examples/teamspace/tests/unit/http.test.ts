// The HTTP surface end to end, on an ephemeral port with a real store: sessions and CSRF, the
// broadcasting auth endpoints as pusher-js calls them, message posting through the word
// filter, history paging, uploads, and the webhook receiver's signature check. Publishing
// goes nowhere (Resound is not running here); the handlers must not care.

import assert from 'node:assert/strict'
import crypto from 'node:crypto'
import type { AddressInfo } from 'node:net'
import path from 'node:path'
import type { Server } from 'node:http'
import { after, before, describe, test } from 'node:test'
import { createApp } from '../../server/app.js'
import { Chat } from '../../server/chat.js'
import { FollowUps } from '../../server/followUps.js'
import { loadConfig } from '../../server/config.js'
import { Dashboard } from '../../server/dashboard.js'
import { silentLogger } from '../../server/log.js'
import { FileStorage } from '../../server/uploads.js'
import { WebhookReceiver } from '../../server/webhooks.js'
import { WordFilter } from '../../server/wordFilter.js'
import { tempStore, VECTOR_APP, vectorPusher } from './helpers.js'

const PNG = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, 0x49, 0x48, 0x44, 0x52])

describe('HTTP API', () => {
  const { store, dir, cleanup } = tempStore()
  const pusher = vectorPusher()
  const chat = new Chat(store, pusher, new WordFilter(['darn']), silentLogger)
  const dashboard = new Dashboard({ metricsUrl: 'http://127.0.0.1:9/metrics', appId: VECTOR_APP.appId }, store, new FollowUps(store, pusher, silentLogger), pusher, silentLogger)
  const config = { ...loadConfig({}), dataDir: dir, distDir: path.join(dir, 'dist'), maxUploadBytes: 1024, ...VECTOR_APP }
  const app = createApp({
    config, store, pusher, chat, dashboard, log: silentLogger,
    webhooks: new WebhookReceiver(store, pusher, dashboard, silentLogger),
    files: new FileStorage(path.join(dir, 'uploads')),
  })
  let server: Server
  let base = ''

  before(async () => {
    server = app.listen(0, '127.0.0.1')
    await new Promise((resolve) => server.once('listening', resolve))
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  })
  after(() => {
    server.closeAllConnections()
    server.close()
    cleanup()
  })

  async function signIn(name: string) {
    const res = await fetch(`${base}/api/session`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ name }) })
    assert.equal(res.status, 201)
    const cookie = res.headers.get('set-cookie')!
    assert.match(cookie, /HttpOnly/)
    assert.match(cookie, /SameSite=Lax/)
    const body = (await res.json()) as { csrfToken: string; user: { id: number } }
    return { cookie: cookie.split(';')[0]!, csrf: body.csrfToken, id: body.user.id }
  }

  test('sessions: anonymous requests are refused, bad names rejected', async () => {
    assert.equal((await fetch(`${base}/api/session`)).status, 401)
    assert.equal((await fetch(`${base}/api/conversations`)).status, 401)
    const bad = await fetch(`${base}/api/session`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"name":"a b"}' })
    assert.equal(bad.status, 422)
  })

  test('broadcasting auth: form-encoded like pusher-js, CSRF required', async () => {
    const alice = await signIn('alice')
    const form = 'socket_id=123.456&channel_name=presence-lobby'
    const noCsrf = await fetch(`${base}/broadcasting/auth`, {
      method: 'POST', headers: { Cookie: alice.cookie, 'Content-Type': 'application/x-www-form-urlencoded' }, body: form,
    })
    assert.equal(noCsrf.status, 419)
    const ok = await fetch(`${base}/broadcasting/auth`, {
      method: 'POST', headers: { Cookie: alice.cookie, 'X-CSRF-TOKEN': alice.csrf, 'Content-Type': 'application/x-www-form-urlencoded' }, body: form,
    })
    assert.equal(ok.status, 200)
    const body = (await ok.json()) as { auth: string; channel_data: string }
    const expected = crypto.createHmac('sha256', VECTOR_APP.secret).update(`123.456:presence-lobby:${body.channel_data}`).digest('hex')
    assert.equal(body.auth, `${VECTOR_APP.key}:${expected}`)
    const user = await fetch(`${base}/broadcasting/user-auth`, {
      method: 'POST', headers: { Cookie: alice.cookie, 'X-CSRF-TOKEN': alice.csrf, 'Content-Type': 'application/x-www-form-urlencoded' }, body: 'socket_id=123.456',
    })
    assert.equal(user.status, 200)
    assert.equal(JSON.parse(((await user.json()) as { user_data: string }).user_data).id, String(alice.id))
  })

  test('messages are validated, filtered, stored and paged', async () => {
    const bob = await signIn('bob')
    const h = { Cookie: bob.cookie, 'X-CSRF-TOKEN': bob.csrf, 'Content-Type': 'application/json', 'X-Socket-ID': '1.1' }
    const empty = await fetch(`${base}/api/conversations/1/messages`, { method: 'POST', headers: h, body: '{"body":"   "}' })
    assert.equal(empty.status, 422)
    for (let i = 1; i <= 5; i++) {
      const res = await fetch(`${base}/api/conversations/1/messages`, { method: 'POST', headers: h, body: JSON.stringify({ body: `darn ${i}`, clientId: `c${i}` }) })
      assert.equal(res.status, 201)
      assert.equal(((await res.json()) as { body: string }).body, `**** ${i}`)
    }
    const page = (await (await fetch(`${base}/api/conversations/1/messages?limit=2`, { headers: h })).json()) as { messages: Array<{ id: number; body: string }>; hasMore: boolean }
    assert.deepEqual(page.messages.map((m) => m.body), ['**** 4', '**** 5'])
    assert.equal(page.hasMore, true)
    const older = (await (await fetch(`${base}/api/conversations/1/messages?limit=10&before=${page.messages[0]!.id}`, { headers: h })).json()) as { messages: unknown[]; hasMore: boolean }
    assert.equal(older.messages.length, 3)
    assert.equal(older.hasMore, false)
    assert.equal((await fetch(`${base}/api/conversations/999/messages`, { headers: h })).status, 404)
  })

  test('uploads: allow-listed and sniffed; files only for those who may read them', async () => {
    const alice = await signIn('alice')
    const carol = await signIn('carol')
    const bob = await signIn('bob')
    const dm = (await (await fetch(`${base}/api/dms`, {
      method: 'POST', headers: { Cookie: alice.cookie, 'X-CSRF-TOKEN': alice.csrf, 'Content-Type': 'application/json' }, body: JSON.stringify({ userId: bob.id }),
    })).json()) as { id: number }
    const up = (type: string, bytes: Buffer) => fetch(`${base}/api/conversations/${dm.id}/files`, {
      method: 'POST', headers: { Cookie: alice.cookie, 'X-CSRF-TOKEN': alice.csrf, 'Content-Type': type, 'X-Filename': 'pic%20one.png' }, body: new Uint8Array(bytes),
    })
    assert.equal((await up('image/png', Buffer.from('not a png'))).status, 415)
    assert.equal((await up('application/x-msdownload', PNG)).status, 415)
    assert.equal((await up('image/png', Buffer.concat([PNG, Buffer.alloc(2048)]))).status, 413)
    const ok = await up('image/png', PNG)
    assert.equal(ok.status, 201)
    const message = (await ok.json()) as { attachment: { url: string; name: string } }
    assert.equal(message.attachment.name, 'pic one.png')
    const got = await fetch(`${base}${message.attachment.url}`, { headers: { Cookie: bob.cookie } })
    assert.equal(got.status, 200)
    assert.equal(got.headers.get('x-content-type-options'), 'nosniff')
    assert.deepEqual(Buffer.from(await got.arrayBuffer()), PNG)
    assert.equal((await fetch(`${base}${message.attachment.url}`, { headers: { Cookie: carol.cookie } })).status, 404)
  })

  test('private rooms: members only; invite, member list, leave', async () => {
    const alice = await signIn('alice')
    const carol = await signIn('carol')
    const bob = await signIn('bob')
    const h = (u: { cookie: string; csrf: string }) => ({ Cookie: u.cookie, 'X-CSRF-TOKEN': u.csrf, 'Content-Type': 'application/json' })
    const created = await fetch(`${base}/api/rooms`, { method: 'POST', headers: h(alice), body: JSON.stringify({ name: 'secret-plans', visibility: 'private' }) })
    assert.equal(created.status, 201)
    const room = (await created.json()) as { id: number; visibility: string; channel: string }
    assert.equal(room.visibility, 'private')
    await fetch(`${base}/api/conversations/${room.id}/messages`, { method: 'POST', headers: h(alice), body: JSON.stringify({ body: 'hush quietly' }) })

    const listOf = async (u: { cookie: string }) => ((await (await fetch(`${base}/api/conversations`, { headers: { Cookie: u.cookie } })).json()) as Array<{ id: number }>).map((c) => c.id)
    const authFor = (u: { cookie: string; csrf: string }, channel: string) => fetch(`${base}/broadcasting/auth`, {
      method: 'POST', headers: { Cookie: u.cookie, 'X-CSRF-TOKEN': u.csrf, 'Content-Type': 'application/x-www-form-urlencoded' },
      body: `socket_id=1.2&channel_name=${channel}`,
    })
    // An outsider does not see it, cannot read, search, subscribe or draw on it.
    assert.ok(!(await listOf(carol)).includes(room.id))
    assert.equal((await fetch(`${base}/api/conversations/${room.id}/messages`, { headers: { Cookie: carol.cookie } })).status, 404)
    assert.equal(((await (await fetch(`${base}/api/search?q=hush`, { headers: { Cookie: carol.cookie } })).json()) as unknown[]).length, 0)
    assert.equal((await authFor(carol, room.channel)).status, 403)
    assert.equal((await authFor(carol, `private-board.${room.id}`)).status, 403)
    assert.equal((await fetch(`${base}/api/boards/${room.id}/strokes`, { headers: { Cookie: carol.cookie } })).status, 404)
    assert.equal((await fetch(`${base}/api/rooms/${room.id}/members`, { method: 'POST', headers: h(carol), body: JSON.stringify({ userId: carol.id }) })).status, 404)
    assert.equal((await authFor(alice, room.channel)).status, 200)

    // A member invites carol: now she may; the member list has both.
    const invited = await fetch(`${base}/api/rooms/${room.id}/members`, { method: 'POST', headers: h(alice), body: JSON.stringify({ userId: carol.id }) })
    assert.equal(invited.status, 201)
    assert.deepEqual(((await invited.json()) as { members: Array<{ name: string }> }).members.map((m) => m.name), ['alice', 'carol'])
    assert.ok((await listOf(carol)).includes(room.id))
    assert.equal((await authFor(carol, room.channel)).status, 200)
    assert.equal((store.notifications(carol.id)[0]!).kind, 'invite')
    // Invited members do not inherit the history as unread.
    const carolsView = ((await (await fetch(`${base}/api/conversations/${room.id}`, { headers: { Cookie: carol.cookie } })).json()) as { unread: number })
    assert.equal(carolsView.unread, 0)
    assert.equal((await authFor(bob, room.channel)).status, 403)

    // Nobody removes someone else; carol leaves by herself and is refused again.
    assert.equal((await fetch(`${base}/api/rooms/${room.id}/members/${carol.id}`, { method: 'DELETE', headers: h(alice) })).status, 403)
    assert.equal((await fetch(`${base}/api/rooms/${room.id}/members/${carol.id}`, { method: 'DELETE', headers: h(carol) })).status, 204)
    assert.equal((await authFor(carol, room.channel)).status, 403)
    assert.ok(!(await listOf(carol)).includes(room.id))
  })

  test('invite-only rooms: listed for everyone but locked; members add people', async () => {
    const alice = await signIn('alice')
    const carol = await signIn('carol')
    const h = (u: { cookie: string; csrf: string }) => ({ Cookie: u.cookie, 'X-CSRF-TOKEN': u.csrf, 'Content-Type': 'application/json' })
    const room = (await (await fetch(`${base}/api/rooms`, { method: 'POST', headers: h(alice), body: JSON.stringify({ name: 'roadmap', visibility: 'invite' }) })).json()) as { id: number; channel: string; joined: boolean }
    assert.equal(room.joined, true)
    await fetch(`${base}/api/conversations/${room.id}/messages`, { method: 'POST', headers: h(alice), body: JSON.stringify({ body: 'q3 secret plan' }) })
    const listed = ((await (await fetch(`${base}/api/conversations`, { headers: { Cookie: carol.cookie } })).json()) as Array<{ id: number; joined: boolean; unread: number; lastMessageId: number; visibility: string }>)
      .find((c) => c.id === room.id)
    assert.deepEqual({ joined: listed?.joined, unread: listed?.unread, last: listed?.lastMessageId, visibility: listed?.visibility }, { joined: false, unread: 0, last: 0, visibility: 'invite' })
    assert.equal((await fetch(`${base}/api/conversations/${room.id}/messages`, { headers: { Cookie: carol.cookie } })).status, 404)
    assert.equal(((await (await fetch(`${base}/api/search?q=secret`, { headers: { Cookie: carol.cookie } })).json()) as unknown[]).length, 0)
    const auth = await fetch(`${base}/broadcasting/auth`, {
      method: 'POST', headers: { Cookie: carol.cookie, 'X-CSRF-TOKEN': carol.csrf, 'Content-Type': 'application/x-www-form-urlencoded' },
      body: `socket_id=1.2&channel_name=${room.channel}`,
    })
    assert.equal(auth.status, 403)
    // She can see whom to ask, but cannot add herself.
    const members = (await (await fetch(`${base}/api/rooms/${room.id}/members`, { headers: { Cookie: carol.cookie } })).json()) as { members: Array<{ name: string }> }
    assert.deepEqual(members.members.map((m) => m.name), ['alice'])
    assert.equal((await fetch(`${base}/api/rooms/${room.id}/members`, { method: 'POST', headers: h(carol), body: JSON.stringify({ userId: carol.id }) })).status, 404)
    assert.equal((await fetch(`${base}/api/rooms/${room.id}/members`, { method: 'POST', headers: h(alice), body: JSON.stringify({ userId: carol.id }) })).status, 201)
    assert.equal((await fetch(`${base}/api/conversations/${room.id}/messages`, { headers: { Cookie: carol.cookie } })).status, 200)
  })

  test('posting is idempotent on the client id; spam rules refuse floods, duplicates and links', async () => {
    const erin = await signIn('erin')
    const h = { Cookie: erin.cookie, 'X-CSRF-TOKEN': erin.csrf, 'Content-Type': 'application/json' }
    const post = (body: string, clientId?: string, headers: Record<string, string> = {}) =>
      fetch(`${base}/api/conversations/3/messages`, { method: 'POST', headers: { ...h, ...headers }, body: JSON.stringify({ body, clientId }) })
    const first = await post('only once please', 'retry-1')
    assert.equal(first.status, 201)
    const again = await post('only once please', 'retry-1')
    assert.equal(again.status, 200)
    assert.equal(((await again.json()) as { id: number }).id, ((await first.json()) as { id: number }).id)
    const viaHeader = await post('by header', undefined, { 'Idempotency-Key': 'retry-2' })
    assert.equal(viaHeader.status, 201)
    assert.equal((await post('by header', undefined, { 'Idempotency-Key': 'retry-2' })).status, 200)
    assert.equal(store.history(3).messages.filter((m) => m.body === 'only once please').length, 1)
    const elsewhere = await fetch(`${base}/api/conversations/1/messages`, { method: 'POST', headers: h, body: JSON.stringify({ body: 'x', clientId: 'retry-1' }) })
    assert.equal(elsewhere.status, 409, 'an id already used in another conversation')

    const links = await post('see http://a.example http://b.example http://c.example')
    assert.equal(links.status, 422)
    assert.match(((await links.json()) as { error: string }).error, /at most 2 links/)

    const results: number[] = []
    for (let i = 0; i < 12; i++) results.push((await post('BUY NOW')).status)
    assert.deepEqual(results.slice(0, 3), [201, 201, 422], 'the third identical post is a duplicate')
    const dup = await post('buy   now')
    assert.equal(((await dup.json()) as { reason: string }).reason, 'duplicate')

    const flood: Response[] = []
    for (let i = 0; i < 12; i++) flood.push(await post(`different ${i}`))
    const refused = flood.find((r) => r.status === 429)
    assert.ok(refused, 'a burst is cut off')
    assert.ok(Number(refused.headers.get('retry-after')) >= 1)
    assert.match(((await refused.json()) as { error: string }).error, /too quickly/)
  })

  test('webhooks: signed bodies are applied, anything else refused', async () => {
    const user = store.findOrCreateUser('dave')
    const body = JSON.stringify({ time_ms: Date.now(), events: [{ name: 'member_added', channel: 'presence-lobby', user_id: String(user.id) }] })
    const sign = (b: string) => crypto.createHmac('sha256', VECTOR_APP.secret).update(b).digest('hex')
    const post = (headers: Record<string, string>) => fetch(`${base}/webhooks/pusher`, { method: 'POST', headers, body })
    assert.equal((await post({ 'Content-Type': 'application/json', 'X-Pusher-Key': VECTOR_APP.key, 'X-Pusher-Signature': sign(`${body} `) })).status, 401)
    assert.equal((await post({ 'Content-Type': 'application/json', 'X-Pusher-Key': 'other', 'X-Pusher-Signature': sign(body) })).status, 401)
    assert.equal(store.userStatus(user.id).online, false)
    assert.equal((await post({ 'Content-Type': 'application/json', 'X-Pusher-Key': VECTOR_APP.key, 'X-Pusher-Signature': sign(body) })).status, 200)
    assert.equal(store.userStatus(user.id).online, true)
  })
})
