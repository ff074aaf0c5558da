// Publishing a message carries idempotency keys (protocol.md 11.1) and is retried once when
// the first attempt fails: the retry has the same keys and the same body, so a server that
// did deliver the first one publishes nothing twice.

import assert from 'node:assert/strict'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { after, before, describe, test } from 'node:test'
import Pusher from 'pusher'
import { Chat } from '../../server/chat.js'
import { silentLogger } from '../../server/log.js'
import { WordFilter } from '../../server/wordFilter.js'
import { tempStore, VECTOR_APP } from './helpers.js'

describe('keyed publishing', () => {
  const { store, cleanup } = tempStore()
  const requests: Array<{ path: string; body: string }> = []
  let failNext = 0
  const server = http.createServer((req, res) => {
    let body = ''
    req.on('data', (d) => (body += d))
    req.on('end', () => {
      requests.push({ path: (req.url ?? '').split('?')[0]!, body })
      if (failNext > 0) {
        failNext -= 1
        res.writeHead(503).end('busy')
        return
      }
      res.writeHead(200, { 'Content-Type': 'application/json' }).end('{}')
    })
  })
  let chat: Chat

  before(async () => {
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const port = (server.address() as AddressInfo).port
    const pusher = new Pusher({ ...VECTOR_APP, host: '127.0.0.1', port: String(port), useTLS: false, timeout: 2000 })
    chat = new Chat(store, pusher, new WordFilter([]), silentLogger)
    chat.retryDelayMs = 10
  })
  after(() => {
    server.close()
    cleanup()
  })

  test('a room message: one batch, a key per item; a failed attempt is retried once, byte for byte', async () => {
    const alice = store.findOrCreateUser('alice')
    const general = store.listConversations(alice.id)[0]!.id
    failNext = 1
    requests.length = 0
    const message = await chat.postMessage(alice, general, { body: 'hello', clientId: null }, undefined)
    const batches = requests.filter((r) => r.path.endsWith('/batch_events'))
    assert.equal(batches.length, 2, 'the first attempt and one retry')
    assert.equal(batches[0]!.body, batches[1]!.body, 'the retry is the same request')
    const items = (JSON.parse(batches[0]!.body) as { batch: Array<{ name: string; idempotency_key: string }> }).batch
    assert.match(items[0]!.idempotency_key, new RegExp(`^ts-[\\w-]+-message-${message.id}$`))
    assert.equal(items[1]!.idempotency_key, `${items[0]!.idempotency_key}-activity`)
  })

  test('a direct message: keyed single publish; no retry when the first succeeds', async () => {
    const alice = store.findOrCreateUser('alice')
    const bob = store.findOrCreateUser('bob')
    const dm = store.directConversation(alice.id, bob.id)
    requests.length = 0
    await chat.postMessage(alice, dm, { body: 'psst', clientId: null }, '1.2')
    const events = requests.filter((r) => r.path.endsWith('/events') && r.body.includes('private-dm.'))
    assert.equal(events.length, 1)
    const body = JSON.parse(events[0]!.body) as { channels: string[]; socket_id: string; idempotency_key: string }
    assert.deepEqual(body.channels, [`private-dm.${dm}`])
    assert.equal(body.socket_id, '1.2')
    assert.match(body.idempotency_key, /-message-\d+$/)
  })
})
