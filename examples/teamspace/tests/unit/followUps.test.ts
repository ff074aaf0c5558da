// The follow-ups read from Resound's stream: entries parsed into events, a message's mentions
// notified once however often its entry arrives, filtered messages counted per author. With
// TEAMSPACE_REDIS_URL (the `test` script sets it), the stream worker against a real Redis:
// an entry a crashed run left pending is handled at start, and one of a dead consumer claimed.

import assert from 'node:assert/strict'
import crypto from 'node:crypto'
import { after, describe, test } from 'node:test'
import { createClient } from '@redis/client'
import type Pusher from 'pusher'
import { EVENTS, type Message } from '../../shared/types.js'
import { eventFromEntry, FollowUps } from '../../server/followUps.js'
import { silentLogger } from '../../server/log.js'
import type { Store } from '../../server/store.js'
import { GROUP, StreamWorker } from '../../server/streamWorker.js'
import { tempStore } from './helpers.js'

/** A Pusher client that records what is sent to users. */
function recordingPusher() {
  const sent: Array<{ userId: string; event: string; data: unknown }> = []
  const pusher = {
    sendToUser: async (userId: string, event: string, data: unknown) => {
      sent.push({ userId, event, data })
      return {}
    },
  } as unknown as Pusher
  return { pusher, sent }
}

/** The fields Resound writes for a `message.sent` API event (docs/streams.md "Entries"). */
function entryFor(message: Message, channel = `presence-room.${message.conversationId}`): Record<string, string> {
  return { name: 'api_event', channel, event: EVENTS.messageSent, data: JSON.stringify(message), time: String(Date.now()) }
}

function post(store: Store, author: string, body: string, masked = 0): Message {
  const user = store.findOrCreateUser(author)
  const general = store.listConversations(user.id).find((c) => c.name === 'general')!.id
  return store.addMessage({ conversationId: general, userId: user.id, body, masked })
}

describe('stream entries', () => {
  const { store, cleanup } = tempStore()
  after(cleanup)

  test('a message.sent API event on a conversation channel reads as the message', () => {
    const message = post(store, 'alice', 'hi @bob')
    const event = eventFromEntry(entryFor(message))
    assert.equal(event?.kind, 'message')
    assert.deepEqual(event.kind === 'message' && event.message, message)
    assert.equal(eventFromEntry(entryFor(message, `private-dm.${message.conversationId}`))?.kind, 'message')
  })

  test('other API events, other channels and broken data are not messages', () => {
    const message = post(store, 'alice', 'hello')
    assert.equal(eventFromEntry({ ...entryFor(message), event: EVENTS.receiptUpdated }), null)
    assert.equal(eventFromEntry(entryFor(message, 'presence-lobby')), null)
    assert.equal(eventFromEntry({ ...entryFor(message), data: '{not json' }), null)
    assert.equal(eventFromEntry({ ...entryFor(message), data: '{"id":"1"}' }), null)
    assert.equal(eventFromEntry({ name: 'channel_occupied', channel: 'presence-room.1', time: '1' }), null)
  })

  test('presence joins and leaves, and whispers', () => {
    assert.deepEqual(eventFromEntry({ name: 'member_added', channel: 'presence-lobby', user_id: '7', time: '5' }),
      { kind: 'presence', channel: 'presence-lobby', joined: true, userId: 7, time: 5 })
    assert.equal(eventFromEntry({ name: 'member_removed', channel: 'presence-lobby', user_id: 'x', time: '5' }), null)
    assert.deepEqual(eventFromEntry({ name: 'client_event', channel: 'private-board.1', event: 'client-stroke', socket_id: '1.2', time: '9' }),
      { kind: 'whisper', channel: 'private-board.1', event: 'client-stroke', time: 9 })
  })
})

describe('follow-ups', () => {
  const { store, cleanup } = tempStore()
  after(cleanup)
  const bob = store.findOrCreateUser('bob')
  store.findOrCreateUser('carol')

  test('a mention in a stream entry notifies once, however often the entry is delivered', async () => {
    const { pusher, sent } = recordingPusher()
    const followUps = new FollowUps(store, pusher, silentLogger)
    const message = post(store, 'alice', '@bob and @carol: the deck, @alice, @nobody')
    for (let i = 0; i < 3; i++) await followUps.apply(eventFromEntry(entryFor(message))!)
    assert.deepEqual(sent.map((s) => s.event), [EVENTS.notification, EVENTS.notification], 'bob and carol, not the author or a stranger')
    assert.equal(store.notifications(bob.id).filter((n) => n.messageId === message.id).length, 1)
    assert.equal(followUps.counts.messages, 1)
    assert.equal(followUps.counts.duplicates, 2)
    assert.equal(followUps.takeMessageCount(), 1)
  })

  test('a restarted backend (new FollowUps, same database) does not notify again', async () => {
    const message = post(store, 'carol', 'ping @bob')
    await new FollowUps(store, recordingPusher().pusher, silentLogger).messagePublished(message)
    const { pusher, sent } = recordingPusher()
    assert.equal(await new FollowUps(store, pusher, silentLogger).messagePublished(message), false)
    assert.equal(sent.length, 0)
  })

  test('an entry of another database (same id, other message) is skipped', async () => {
    const message = post(store, 'alice', 'hey @bob')
    const { pusher, sent } = recordingPusher()
    assert.equal(await new FollowUps(store, pusher, silentLogger).messagePublished({ ...message, body: 'something else @bob' }), false)
    assert.equal(sent.length, 0)
  })

  test('filtered messages count against their author; the third flags them, once', async () => {
    const followUps = new FollowUps(store, recordingPusher().pusher, silentLogger, { flagAfter: 3 })
    const dave = store.findOrCreateUser('dave')
    await followUps.messagePublished(post(store, 'dave', 'clean'))
    for (let i = 0; i < 2; i++) await followUps.messagePublished(post(store, 'dave', '**** it', 1))
    assert.deepEqual(store.moderation().find((r) => r.userId === dave.id),
      { userId: dave.id, name: 'dave', filteredMessages: 2, maskedWords: 2, flagged: false })
    const third = post(store, 'dave', '**** and ****', 2)
    await followUps.messagePublished(third)
    await followUps.messagePublished(third)
    assert.deepEqual(store.moderation().find((r) => r.userId === dave.id),
      { userId: dave.id, name: 'dave', filteredMessages: 3, maskedWords: 4, flagged: true })
    assert.equal(followUps.counts.filtered, 3)
  })
})

const REDIS = process.env.TEAMSPACE_REDIS_URL
describe('the stream worker against Redis', { skip: REDIS ? false : 'TEAMSPACE_REDIS_URL is not set' }, () => {
  const { store, cleanup } = tempStore()
  const key = `teamspace-unit:${crypto.randomBytes(6).toString('hex')}`
  const redis = createClient({ url: REDIS })
  after(async () => {
    if (redis.isOpen) {
      await redis.del(key)
      redis.destroy()
    }
    cleanup()
  })

  async function until(check: () => boolean, what: string) {
    const deadline = Date.now() + 5000
    while (!check()) {
      if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`)
      await new Promise((r) => setTimeout(r, 20))
    }
  }

  test('entries left pending by a crashed run and by a dead consumer are handled, once, and acked', async () => {
    await redis.connect()
    store.findOrCreateUser('bob')
    const first = post(store, 'alice', '@bob first')
    const second = post(store, 'alice', '@bob second')
    await redis.xGroupCreate(key, GROUP, '0', { MKSTREAM: true })
    await redis.xAdd(key, '*', entryFor(first))
    await redis.xAdd(key, '*', entryFor(second))
    // A previous run of this consumer read the first and died before acking; another
    // consumer's process read the second and died too.
    await redis.xReadGroup(GROUP, 'me', { key, id: '>' }, { COUNT: 1 })
    await redis.xReadGroup(GROUP, 'dead', { key, id: '>' }, { COUNT: 1 })
    // ...and the first run had notified before it died: its entry must not notify again.
    await new FollowUps(store, recordingPusher().pusher, silentLogger).messagePublished(first)

    const { pusher, sent } = recordingPusher()
    const followUps = new FollowUps(store, pusher, silentLogger)
    const worker = await StreamWorker.connect({ url: REDIS!, key, consumer: 'me', claimIdleMs: 0 }, followUps, silentLogger)
    worker.start()
    try {
      await until(() => worker.status().processed === 2, 'both pending entries')
      assert.equal(worker.status().recovered, 2)
      assert.equal(sent.length, 1, 'only the second message notifies')
      assert.equal((sent[0]!.data as { messageId: number }).messageId, second.id)

      // A new entry goes through `>`, with the lag measured from the entry's time.
      const third = post(store, 'alice', '@bob third')
      await redis.xAdd(key, '*', entryFor(third))
      await until(() => worker.status().processed === 3, 'the new entry')
      assert.equal(sent.length, 2)
      assert.ok(worker.status().lastLagMs! >= 0)
      assert.equal((await redis.xPending(key, GROUP)).pending, 0, 'everything acknowledged')
      assert.equal(worker.status().pending, 0)
    } finally {
      await worker.stop()
    }
  })
})
