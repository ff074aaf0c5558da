// The spam rules on their own, with a fake clock: the flood bucket refills, duplicates expire,
// new users' links are limited, old users' are not, and the per-user state stays bounded.

import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { countLinks, DEFAULT_SPAM_RULES, SpamGuard } from '../../server/spam.js'

describe('SpamGuard', () => {
  const DAY = 24 * 3600_000

  test('a burst is accepted, then the rate applies and refills', () => {
    let now = 1_000_000
    const guard = new SpamGuard({ ...DEFAULT_SPAM_RULES, burst: 3, perMinute: 60 }, () => now)
    const oldUser = now - 10 * DAY
    assert.deepEqual([1, 2, 3].map((i) => guard.check(1, oldUser, `m${i}`).ok), [true, true, true])
    const refused = guard.check(1, oldUser, 'm4')
    assert.equal(refused.ok, false)
    assert.equal(!refused.ok && refused.reason, 'flood')
    assert.equal(!refused.ok && refused.retryAfterMs, 1000)
    now += 1000
    assert.equal(guard.check(1, oldUser, 'm5').ok, true)
    // Another user has a bucket of their own.
    assert.equal(guard.check(2, oldUser, 'm1').ok, true)
  })

  test('the same text (case and spacing aside) more than twice a minute is refused', () => {
    let now = 5_000_000
    const guard = new SpamGuard({ ...DEFAULT_SPAM_RULES, burst: 100 }, () => now)
    assert.equal(guard.check(1, 0, 'Hello there').ok, true)
    assert.equal(guard.check(1, 0, 'hello   THERE').ok, true)
    const third = guard.check(1, 0, 'hello there')
    assert.equal(!third.ok && third.reason, 'duplicate')
    assert.equal(guard.check(1, 0, '').ok, true, 'empty captions are not duplicates')
    now += 60_000
    assert.equal(guard.check(1, 0, 'hello there').ok, true)
  })

  test('new users: links per message and per window; established users are not limited', () => {
    let now = 9_000_000
    const guard = new SpamGuard({ ...DEFAULT_SPAM_RULES, burst: 100 }, () => now)
    const fresh = now - 60_000
    assert.equal(countLinks('a http://x.example b https://y.example/z'), 2)
    const three = guard.check(1, fresh, 'http://a.example http://b.example http://c.example')
    assert.equal(!three.ok && three.reason, 'links')
    assert.equal(guard.check(1, fresh, 'http://a.example http://b.example').ok, true)
    assert.equal(guard.check(1, fresh, 'http://c.example http://d.example').ok, true)
    const sixth = guard.check(1, fresh, 'http://e.example and http://f.example')
    assert.equal(!sixth.ok && sixth.reason, 'links')
    now += 10 * 60_000
    assert.equal(guard.check(1, fresh, 'http://e.example http://f.example').ok, true)
    assert.equal(guard.check(2, now - 2 * DAY, 'http://1.example http://2.example http://3.example http://4.example').ok, true)
  })

  test('per-user state is bounded: the least recently seen user is dropped', () => {
    const guard = new SpamGuard({ ...DEFAULT_SPAM_RULES, maxUsers: 3 })
    for (let id = 1; id <= 10; id++) guard.check(id, 0, 'hi')
    assert.equal(guard.trackedUsers(), 3)
  })
})
