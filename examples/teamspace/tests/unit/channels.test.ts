// Channel authorization and user authentication: who may join what, and that the tokens are
// signed exactly as the protocol specifies (checked against its published vectors).

import assert from 'node:assert/strict'
import crypto from 'node:crypto'
import { after, describe, test } from 'node:test'
import { ChannelAuthorizer, isSocketId, parseChannel } from '../../server/channels.js'
import { tempStore, VECTOR_APP, vectorPusher } from './helpers.js'

const hmac = (s: string) => crypto.createHmac('sha256', VECTOR_APP.secret).update(s).digest('hex')

describe('signing (protocol test vectors)', () => {
  const pusher = vectorPusher()

  test('P1: private channel', () => {
    assert.deepEqual(pusher.authorizeChannel('1234.1234', 'private-foobar'), {
      auth: '278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4',
    })
  })

  test('R3: presence channel with a Laravel-shaped member', () => {
    const res = pusher.authorizeChannel('123.456', 'presence-chat.1', { user_id: '1', user_info: { id: 1, name: 'Taylor Otwell' } })
    assert.equal(res.channel_data, '{"user_id":"1","user_info":{"id":1,"name":"Taylor Otwell"}}')
    assert.equal(res.auth, '278d425bdf160c739803:2465569f4e47fabaa355b1dc39b3cc4add0165d3a05a192d90c1815ea576772f')
  })

  test('U1: user authentication for pusher:signin', () => {
    assert.deepEqual(pusher.authenticateUser('1234.1234', { id: '12345' }), {
      auth: '278d425bdf160c739803:4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba',
      user_data: '{"id":"12345"}',
    })
  })
})

describe('ChannelAuthorizer', () => {
  const { store, cleanup } = tempStore()
  after(cleanup)
  const auth = new ChannelAuthorizer(store, vectorPusher())
  const alice = store.findOrCreateUser('alice')
  const bob = store.findOrCreateUser('bob')
  const carol = store.findOrCreateUser('carol')
  const dm = store.directConversation(alice.id, bob.id)
  const room = store.listConversations(alice.id).find((c) => c.kind === 'room')!

  test('presence rooms carry the member as channel_data, signed over the exact string', () => {
    const res = auth.authorizeChannel(alice, '11.22', `presence-room.${room.id}`)
    assert.ok(res.ok)
    const data = JSON.parse(res.body.channel_data!)
    assert.deepEqual(data, { user_id: String(alice.id), user_info: { id: alice.id, name: 'alice', color: alice.color } })
    assert.equal(res.body.auth, `${VECTOR_APP.key}:${hmac(`11.22:presence-room.${room.id}:${res.body.channel_data}`)}`)
  })

  test('the lobby is open to everyone signed in', () => {
    assert.ok(auth.authorizeChannel(carol, '1.2', 'presence-lobby').ok)
  })

  test('a direct conversation admits its two participants only', () => {
    const ok = auth.authorizeChannel(bob, '5.6', `private-dm.${dm}`)
    assert.ok(ok.ok)
    assert.equal(ok.body.auth, `${VECTOR_APP.key}:${hmac(`5.6:private-dm.${dm}`)}`)
    assert.equal(ok.body.channel_data, undefined)
    assert.deepEqual(auth.authorizeChannel(carol, '5.6', `private-dm.${dm}`), { ok: false, status: 403, error: 'not allowed on this channel' })
  })

  test('boards exist for rooms, not for direct conversations', () => {
    assert.ok(auth.authorizeChannel(carol, '5.6', `private-board.${room.id}`).ok)
    assert.equal(auth.authorizeChannel(alice, '5.6', `private-board.${dm}`).ok, false)
  })

  test('unknown channels and malformed requests are refused', () => {
    for (const name of ['private-anything', 'presence-room.999', 'private-dm.0', 'private-encrypted-dm.1', 'presence-room.1x', 'dashboard']) {
      const res = auth.authorizeChannel(alice, '1.2', name)
      assert.equal(res.ok, false, name)
    }
    assert.equal((auth.authorizeChannel(alice, '1.2;x', 'presence-lobby') as { status: number }).status, 400)
    assert.equal((auth.authorizeChannel(alice, '1.2', undefined) as { status: number }).status, 400)
  })

  test('user authentication signs socket_id::user::user_data', () => {
    const res = auth.authenticateUser(bob, '99.100')
    assert.ok(res.ok)
    const body = res.body as { auth: string; user_data: string }
    assert.equal(JSON.parse(body.user_data).id, String(bob.id))
    assert.equal(body.auth, `${VECTOR_APP.key}:${hmac(`99.100::user::${body.user_data}`)}`)
    assert.equal(auth.authenticateUser(bob, 'nope').ok, false)
  })

  test('channel names are parsed once, strictly', () => {
    assert.deepEqual(parseChannel('presence-room.12'), { kind: 'room', id: 12 })
    assert.deepEqual(parseChannel('private-board.3'), { kind: 'board', id: 3 })
    assert.equal(parseChannel('presence-room.012'), null)
    assert.equal(parseChannel('private-dm.-1'), null)
    assert.ok(isSocketId('123.456'))
    assert.equal(isSocketId('123'), false)
  })
})
