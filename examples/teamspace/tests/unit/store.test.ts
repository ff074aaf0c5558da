// History paging, read receipts, unread counts, search visibility and presence records.

import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { MAX_PAGE, ftsQuery } from '../../server/store.js'
import { tempStore } from './helpers.js'

describe('history paging', () => {
  const { store, cleanup } = tempStore()
  after(cleanup)
  const alice = store.findOrCreateUser('alice')
  const room = store.listConversations(alice.id)[0]!.id
  const other = store.listConversations(alice.id)[1]!.id
  const ids: number[] = []
  before(() => {
    for (let i = 1; i <= 120; i++) {
      ids.push(store.addMessage({ conversationId: room, userId: alice.id, body: `message ${i}` }).id)
      if (i % 10 === 0) store.addMessage({ conversationId: other, userId: alice.id, body: `elsewhere ${i}` })
    }
  })

  test('the first page is the newest, oldest first', () => {
    const page = store.history(room, { limit: 50 })
    assert.equal(page.messages.length, 50)
    assert.equal(page.messages[0]!.body, 'message 71')
    assert.equal(page.messages[49]!.body, 'message 120')
    assert.equal(page.hasMore, true)
  })

  test('paging back with `before` walks the whole history without gaps or repeats', () => {
    const seen: number[] = []
    let before: number | undefined
    for (;;) {
      const page = store.history(room, { before, limit: 50 })
      seen.unshift(...page.messages.map((m) => m.id))
      if (!page.hasMore) break
      before = page.messages[0]!.id
    }
    assert.deepEqual(seen, ids)
  })

  test('the last page says there is nothing more', () => {
    const page = store.history(room, { before: ids[20], limit: 50 })
    assert.equal(page.messages.length, 20)
    assert.equal(page.hasMore, false)
  })

  test('`after` pages forward, for catching up after a reconnection', () => {
    const page = store.history(room, { after: ids[99], limit: 15 })
    assert.deepEqual(page.messages.map((m) => m.id), ids.slice(100, 115))
    assert.equal(page.hasMore, true)
    const rest = store.history(room, { after: ids[114], limit: 15 })
    assert.equal(rest.messages.length, 5)
    assert.equal(rest.hasMore, false)
  })

  test('the page size is clamped', () => {
    assert.equal(store.history(room, { limit: 10_000 }).messages.length, MAX_PAGE)
    assert.equal(store.history(room, { limit: 0 }).messages.length, 1)
  })

  test('pages never mix conversations', () => {
    assert.ok(store.history(other).messages.every((m) => m.body.startsWith('elsewhere')))
  })
})

describe('receipts and unread counts', () => {
  const { store, cleanup } = tempStore()
  after(cleanup)
  const alice = store.findOrCreateUser('alice')
  const bob = store.findOrCreateUser('bob')
  const room = store.listConversations(alice.id)[0]!.id

  test('unread counts only others’ messages after the reader’s marker', () => {
    const m1 = store.addMessage({ conversationId: room, userId: alice.id, body: 'one' })
    store.addMessage({ conversationId: room, userId: alice.id, body: 'two' })
    store.addMessage({ conversationId: room, userId: bob.id, body: 'mine' })
    assert.equal(store.listConversations(bob.id).find((c) => c.id === room)!.unread, 2)
    assert.equal(store.listConversations(alice.id).find((c) => c.id === room)!.unread, 1)
    assert.equal(store.markRead(room, bob.id, m1.id), true)
    assert.equal(store.listConversations(bob.id).find((c) => c.id === room)!.unread, 1)
  })

  test('a read marker only moves forward', () => {
    const last = store.history(room).messages.at(-1)!.id
    assert.equal(store.markRead(room, bob.id, last), true)
    assert.equal(store.markRead(room, bob.id, last - 1), false)
    assert.equal(store.markRead(room, bob.id, last), false)
    assert.deepEqual(store.receipts(room).map((r) => [r.user.name, r.messageId]), [['bob', last]])
  })
})

describe('search', () => {
  const { store, cleanup } = tempStore()
  after(cleanup)
  const alice = store.findOrCreateUser('alice')
  const bob = store.findOrCreateUser('bob')
  const carol = store.findOrCreateUser('carol')
  const room = store.listConversations(alice.id)[0]!.id
  const dm = store.directConversation(alice.id, bob.id)
  store.addMessage({ conversationId: room, userId: alice.id, body: 'The quarterly roadmap is ready' })
  store.addMessage({ conversationId: dm, userId: bob.id, body: 'secret roadmap draft' })

  test('finds words by prefix and marks the hits', () => {
    const hits = store.search(alice.id, 'road')
    assert.equal(hits.length, 2)
    assert.ok(hits[0]!.snippet.some((s) => s.hit && /^roadmap$/i.test(s.text)))
  })

  test('never returns messages of conversations the user cannot read', () => {
    assert.deepEqual(store.search(carol.id, 'roadmap').map((h) => h.conversation.kind), ['room'])
  })

  test('query syntax in the input is neutralised', () => {
    assert.equal(ftsQuery('a" OR b*'), '"a"* "OR"* "b"*')
    assert.equal(ftsQuery('   '), null)
    assert.deepEqual(store.search(alice.id, '"*:('), [])
  })
})

describe('presence records', () => {
  let clock = 1_000
  const { store, cleanup } = tempStore(() => clock)
  after(cleanup)
  const alice = store.findOrCreateUser('alice')

  test('online while in any presence channel; last seen when the last one is left', () => {
    assert.equal(store.memberAdded('presence-lobby', alice.id), true)
    assert.equal(store.memberAdded('presence-room.1', alice.id), false)
    assert.equal(store.onlineCount(), 1)
    clock = 5_000
    assert.equal(store.memberRemoved('presence-room.1', alice.id), false)
    assert.equal(store.memberRemoved('presence-lobby', alice.id), true)
    assert.deepEqual(store.userStatus(alice.id), { online: false, lastSeenAt: 5_000 })
    assert.equal(store.memberRemoved('presence-lobby', alice.id), false)
  })
})

describe('newcomers, cleared boards and private rooms', () => {
  const { store, cleanup } = tempStore()
  after(cleanup)

  test('someone who signs up later does not get the whole history as unread', () => {
    const alice = store.findOrCreateUser('alice')
    const general = store.listConversations(alice.id)[0]!.id
    for (let i = 0; i < 120; i++) store.addMessage({ conversationId: general, userId: alice.id, body: `old ${i}` })
    const newcomer = store.findOrCreateUser('newcomer')
    assert.equal(store.listConversations(newcomer.id).find((c) => c.id === general)!.unread, 0)
    store.addMessage({ conversationId: general, userId: alice.id, body: 'fresh' })
    assert.equal(store.listConversations(newcomer.id).find((c) => c.id === general)!.unread, 1)
  })

  test('clearing a board keeps the all-time stroke count', () => {
    const alice = store.findOrCreateUser('alice')
    const design = store.listConversations(alice.id)[1]!.id
    for (const id of ['s1', 's2', 's3']) store.addStroke(design, { id, userId: alice.id, color: '#000', width: 3, points: [1, 2, 3, 4] })
    store.clearStrokes(design)
    assert.equal(store.strokes(design).length, 0)
    assert.equal(store.strokeCount(), 3)
    store.addStroke(design, { id: 's4', userId: alice.id, color: '#000', width: 3, points: [1, 2] })
    assert.equal(store.strokes(design).length, 1)
    assert.equal(store.strokeCount(), 4)
  })

  test('a private room is readable, searchable and listed for its members only', () => {
    const alice = store.findOrCreateUser('alice')
    const bob = store.findOrCreateUser('bob')
    const room = store.createRoom('hidden', '', 'private', alice.id)
    store.addMessage({ conversationId: room, userId: alice.id, body: 'classified zebra' })
    assert.equal(store.canAccess(alice.id, room), true)
    assert.equal(store.canAccess(bob.id, room), false)
    assert.equal(store.listConversations(bob.id).some((c) => c.id === room), false)
    assert.equal(store.search(bob.id, 'zebra').length, 0)
    assert.equal(store.search(alice.id, 'zebra').length, 1)
    assert.deepEqual(store.participants(room), [alice.id])
    assert.equal(store.addMember(room, bob.id, alice.id), true)
    assert.equal(store.addMember(room, bob.id, alice.id), false)
    assert.equal(store.listConversations(bob.id).find((c) => c.id === room)!.unread, 0, 'joining starts read')
    assert.equal(store.search(bob.id, 'zebra').length, 1)
    assert.equal(store.removeMember(room, bob.id), true)
    assert.equal(store.canAccess(bob.id, room), false)
  })
})
