// Three people in three isolated browser contexts use Teamspace against a real Resound and
// backend: presence, group and private chat, typing, receipts, mentions, files, history and
// search, the whiteboard, the dashboard, going offline and coming back. Every view is
// screenshotted into artifacts/.
//
// Needs TEAMSPACE_URL (the backend serving the built frontend). Optional: CHROMIUM (default
// /usr/bin/chromium), TEAMSPACE_ARTIFACTS (default ../../artifacts).

// The callbacks given to page.evaluate() run in the browser and use DOM types.
/// <reference lib="dom" />

import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { after, before, describe, test as nodeTest } from 'node:test'
import { chromium, type Browser, type BrowserContext, type Locator, type Page } from 'playwright-core'
import { Store } from '../../server/store.js'
import type { AppNotification, DashboardSnapshot } from '../../shared/types.js'
import { signIn as signInPage } from './lib.js'

const HERE = path.dirname(fileURLToPath(import.meta.url))
const BASE = process.env.TEAMSPACE_URL ?? 'http://127.0.0.1:3000'
const ARTIFACTS = process.env.TEAMSPACE_ARTIFACTS ?? path.resolve(HERE, '../../artifacts')
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium'
const WAIT = 10_000

/** One step of the story; each is bounded on its own. */
const test = (name: string, fn: () => Promise<void>) => nodeTest(name, { timeout: 45_000 }, fn)

let browser: Browser
const people: Record<string, { context: BrowserContext; page: Page }> = {}
const page = (name: string) => people[name]!.page

async function shot(p: Page, name: string) {
  await p.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) })
}

async function open(name: string): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1360, height: 860 }, deviceScaleFactor: 1, locale: 'en-GB', timezoneId: 'UTC' })
  context.setDefaultTimeout(WAIT)
  const p = await context.newPage()
  p.on('pageerror', (err) => console.error(`[${name}] page error: ${err.message}`))
  p.on('console', (msg) => {
    if (msg.type() === 'error' && !/Failed to load resource/.test(msg.text())) console.error(`[${name}] console: ${msg.text()}`)
  })
  people[name] = { context, page: p }
  return p
}

async function signIn(name: string, screenshot?: string): Promise<Page> {
  const p = await open(name)
  await signInPage(p, name, screenshot)
  return p
}

const live = (p: Page) => p.locator('[data-testid=link-state].connected').waitFor()
const message = (p: Page, text: string | RegExp) => p.getByTestId('message').filter({ hasText: text })

async function send(p: Page, text: string) {
  const box = p.getByTestId('composer')
  await box.fill(text)
  await box.press('Enter')
  await message(p, text).last().waitFor()
}

async function eventually(check: () => Promise<boolean>, what: string, timeout = WAIT) {
  const deadline = Date.now() + timeout
  while (Date.now() < deadline) {
    if (await check()) return
    await new Promise((r) => setTimeout(r, 150))
  }
  assert.fail(`timed out waiting for ${what}`)
}

async function csrfOf(p: Page): Promise<string> {
  return p.evaluate(async () => ((await (await fetch('/api/session')).json()) as { csrfToken: string }).csrfToken)
}

async function openRoom(p: Page, name: string) {
  await p.getByTestId(`room-${name}`).click()
  await p.getByTestId('view-title').filter({ hasText: name }).waitFor()
  await p.getByTestId('messages').waitFor()
}

const count = (l: Locator) => l.count()

/** Writes messages into the running backend's SQLite database (WAL: both may write). */
function seedHistory(roomName: string, author: string, bodies: string[]) {
  const dataDir = process.env.TEAMSPACE_DATA_DIR
  assert.ok(dataDir, 'TEAMSPACE_DATA_DIR names the backend’s data directory')
  const store = new Store(path.join(dataDir, 'teamspace.sqlite'))
  try {
    const room = store.listConversations(store.findUserByName(author)!.id).find((c) => c.name === roomName)!
    const userId = store.findUserByName(author)!.id
    store.db.transaction(() => { for (const body of bodies) store.addMessage({ conversationId: room.id, userId, body }) })()
  } finally {
    store.close()
  }
}

describe('teamspace in the browser', () => {
  before(async () => {
    fs.mkdirSync(ARTIFACTS, { recursive: true })
    // launch() gives the browser a fresh temporary profile (user-data-dir) of its own;
    // each person then gets an isolated context (own cookies and storage).
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    })
  })

  after(async () => {
    await browser?.close()
  })

  test('three people sign in and see each other arrive in #general', async () => {
    const alice = await signIn('alice', '01-sign-in')
    await signIn('bob')
    await alice.getByTestId('member-bob').waitFor()
    await signIn('carol')
    await alice.getByTestId('member-carol').waitFor()
    await page('carol').getByTestId('member-alice').waitFor()
    assert.equal(await alice.getByTestId('member-count').textContent(), '3')
    // The lobby presence channel drives the online dots in everyone's sidebar.
    await alice.locator('[data-testid=person-bob] .presence-dot.on').waitFor()
  })

  test('group chat: messages reach the others once, filtered, and not echoed to the sender', async () => {
    const alice = page('alice'), bob = page('bob'), carol = page('carol')
    await send(alice, 'Morning team! Stand-up notes are in the doc.')
    await message(bob, 'Stand-up notes are in the doc').waitFor()
    await message(carol, 'Stand-up notes are in the doc').waitFor()
    await bob.getByTestId('composer').fill('Thanks! That darn build is green again!')
    await bob.getByTestId('composer').press('Enter')
    await message(alice, 'That **** build is green again').waitFor()
    // The sender's optimistic copy is replaced by the stored one, which went through the filter.
    await message(bob, 'That **** build is green again').waitFor()
    assert.equal(await count(message(bob, 'darn build')), 0)
    // toOthers: the sender's own socket was excluded, so its copy is not doubled.
    await new Promise((r) => setTimeout(r, 400))
    assert.equal(await count(message(alice, 'Stand-up notes are in the doc')), 1)
    assert.equal(await count(message(bob, 'build is green again')), 1)
  })

  test('typing indicators travel as whispers', async () => {
    const alice = page('alice'), bob = page('bob')
    await bob.getByTestId('composer').fill('I am writing something long')
    await alice.getByTestId('typing').filter({ hasText: 'bob is typing…' }).waitFor()
    await bob.getByTestId('composer').fill('')
  })

  test('read receipts show who has seen the latest message', async () => {
    const alice = page('alice')
    await send(alice, 'Can everyone see this one?')
    const seen = message(alice, 'Can everyone see this one?').getByTestId('seen')
    await seen.filter({ hasText: 'bob' }).waitFor()
    await seen.filter({ hasText: 'carol' }).waitFor()
    await page('bob').getByTestId('composer').fill('')
    await page('bob').getByTestId('composer').type('Yes, loud and clear', { delay: 20 })
    await alice.getByTestId('typing').filter({ hasText: 'bob is typing…' }).waitFor()
    await shot(alice, '02-room-general')
    await page('bob').getByTestId('composer').press('Enter')
    await message(alice, 'loud and clear').waitFor()
  })

  test('private chat on a private channel, with unread badge and receipt; outsiders are refused', async () => {
    const alice = page('alice'), bob = page('bob'), carol = page('carol')
    await alice.getByTestId('person-bob').click()
    await alice.getByTestId('view-title').filter({ hasText: 'bob' }).waitFor()
    await send(alice, 'Psst: can you review my slides before 3?')
    // Bob is in #general; the user channel (sendToUser) raises his unread badge.
    await bob.locator('[data-testid=person-alice] .badge').filter({ hasText: '1' }).waitFor()
    await bob.getByTestId('person-alice').click()
    await message(bob, 'review my slides').waitFor()
    await message(alice, 'review my slides').getByTestId('seen').filter({ hasText: 'Seen' }).waitFor()
    await send(bob, 'Sure, send them over')
    await message(alice, 'Sure, send them over').waitFor()
    await shot(alice, '03-direct-message')

    const channel = await alice.evaluate(async () => {
      const list = (await (await fetch('/api/conversations')).json()) as Array<{ kind: string; channel: string }>
      return list.find((c) => c.kind === 'dm')!.channel
    })
    const csrf = await csrfOf(carol)
    const status = await carol.evaluate(async ([ch, token]) => (await fetch('/broadcasting/auth', {
      method: 'POST', headers: { 'Content-Type': 'application/x-www-form-urlencoded', 'X-CSRF-TOKEN': token! },
      body: `socket_id=1.2&channel_name=${ch}`,
    })).status, [channel, csrf])
    assert.equal(status, 403, 'carol may not subscribe to alice and bob’s channel')
  })

  test('an @mention arrives in the notification tray through the user channel', async () => {
    const alice = page('alice'), carol = page('carol')
    await send(carol, '@alice can you check the Q3 deck before the demo?')
    await alice.getByTestId('bell-badge').filter({ hasText: '1' }).waitFor()
    await alice.getByTestId('toast-mention').first().waitFor()
    await alice.getByTestId('bell').click()
    await alice.getByTestId('tray').filter({ hasText: 'carol mentioned you in #general' }).waitFor()
    await shot(alice, '04-notifications')
    await alice.getByTestId('tray').getByText('carol mentioned you').click()
    await alice.getByTestId('view-title').filter({ hasText: 'general' }).waitFor()
    await message(alice, 'check the Q3 deck').locator('.mention.me').waitFor()
    assert.equal(await count(alice.getByTestId('bell-badge')), 0)
  })

  test('mentions, moderation and statistics come from Resound’s stream: read by the group, handled once, acknowledged', async () => {
    const alice = page('alice'), carol = page('carol')
    const snapshot = async () => alice.evaluate(async () => (await (await fetch('/api/dashboard')).json()) as DashboardSnapshot)
    const before = (await snapshot()).followUps
    assert.equal(before.mode, 'stream', 'the backend reads Resound’s stream (`test` passes TEAMSPACE_REDIS_URL: is Redis running?)')
    assert.equal(before.group, 'teamspace')
    assert.ok(before.connected, 'the worker is connected to Redis')
    assert.ok(before.counts.mentions >= 1, 'the mention before came from a stream entry')
    assert.ok(before.counts.joins >= 3, `presence joins read from the stream (${before.counts.joins})`)
    const carolFiltered = (await snapshot()).moderation.find((r) => r.name === 'carol')?.filteredMessages ?? 0

    // A mention with a sensitive word: masked before publication, followed up after it.
    const sentAt = Date.now()
    await carol.getByTestId('composer').fill('@alice heck, the demo moved to 3pm')
    await carol.getByTestId('composer').press('Enter')
    await message(alice, '@alice ****, the demo moved to 3pm').waitFor()
    assert.equal(await count(message(alice, /\bheck\b/)), 0, 'subscribers get the filtered text only')
    await alice.getByTestId('bell-badge').filter({ hasText: '1' }).waitFor()
    const trayMs = Date.now() - sentAt
    let after = before
    await eventually(async () => {
      after = (await snapshot()).followUps
      return after.counts.mentions === before.counts.mentions + 1 && after.pending === 0
    }, 'the entry handled and acknowledged (XPENDING empty)')
    assert.ok(after.processed > before.processed, 'the consumer handled more entries')
    assert.equal(after.counts.filtered, before.counts.filtered + 1, 'the filtered message was counted')
    assert.ok(after.counts.typing > before.counts.typing, 'carol’s typing whispers were read from the stream')
    assert.ok(after.lastLagMs !== null && after.lastLagMs < 5000, `lag from Resound to handled: ${after.lastLagMs} ms`)
    assert.equal((await snapshot()).moderation.find((r) => r.name === 'carol')?.filteredMessages, carolFiltered + 1)
    console.log(`mention via the stream: ${trayMs} ms from Enter to alice's tray; last entry handled ${after.lastLagMs} ms after Resound wrote it`)

    const notifications = await alice.evaluate(async () => (await (await fetch('/api/notifications')).json()) as AppNotification[])
    assert.equal(notifications.filter((n) => n.kind === 'mention' && n.body.includes('the demo moved to 3pm')).length, 1, 'one notification')
    await alice.getByTestId('bell').click()
    await alice.getByTestId('tray').getByText('carol mentioned you').first().click()
    await alice.getByTestId('view-title').filter({ hasText: 'general' }).waitFor()
    await eventually(async () => (await count(alice.getByTestId('bell-badge'))) === 0, 'the tray read')
  })

  test('file sharing: images are shown to others; disallowed and disguised files are refused', async () => {
    const alice = page('alice'), bob = page('bob')
    await openRoom(bob, 'general')
    // A real PNG: a screenshot of part of the page.
    const png = await bob.screenshot({ clip: { x: 0, y: 0, width: 264, height: 150 } })
    await bob.getByTestId('file-input').setInputFiles({ name: 'sidebar-mockup.png', mimeType: 'image/png', buffer: png })
    const att = alice.getByTestId('message').filter({ has: alice.locator('img[alt="sidebar-mockup.png"]') })
    await att.waitFor()
    await eventually(() => att.locator('img').evaluate((img: HTMLImageElement) => img.complete && img.naturalWidth === 264), 'the image to load for alice')

    await bob.getByTestId('file-input').setInputFiles({ name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('Agenda:\n1. Ship it\n') })
    await message(alice, 'notes.txt').waitFor()

    await bob.getByTestId('file-input').setInputFiles({ name: 'setup.exe', mimeType: 'application/x-msdownload', buffer: Buffer.from('MZ') })
    await bob.getByTestId('toast-error').filter({ hasText: 'cannot be shared' }).waitFor()
    await bob.getByTestId('file-input').setInputFiles({ name: 'fake.png', mimeType: 'image/png', buffer: Buffer.from('this is not an image') })
    await bob.getByTestId('toast-error').filter({ hasText: 'content is not image/png' }).waitFor()
    await message(alice, 'notes.txt').scrollIntoViewIfNeeded()
    await shot(alice, '05-file-sharing')
  })

  test('history: a long room pages in older messages through a virtual scroller', async () => {
    const alice = page('alice'), carol = page('carol')
    await openRoom(carol, 'random')
    // 180 messages at once would trip the spam rules (that is their job), so they go straight
    // into the backend's database, as an import would.
    seedHistory('random', 'carol', Array.from({ length: 180 }, (_, k) => {
      const n = k + 1
      return `History #${String(n).padStart(3, '0')} ${n === 7 ? 'zeppelin' : ['apple', 'harbour', 'violet', 'granite'][n % 4]}`
    }))
    await openRoom(alice, 'random')
    const list = alice.getByTestId('messages')
    await message(alice, /History #\d+/).last().waitFor()
    const rendered = await count(alice.getByTestId('message'))
    assert.ok(rendered < 60, `only the rows near the viewport are in the DOM (${rendered})`)
    await eventually(async () => {
      await list.evaluate((el) => el.scrollTo({ top: 0 }))
      return (await count(message(alice, 'History #001'))) > 0
    }, 'the first message after scrolling up through every page', 20_000)
    await alice.getByText('This is the start of #random').waitFor()
    assert.ok((await count(alice.getByTestId('message'))) < 80, 'the DOM stays small after loading 180 messages')
  })

  test('search finds a message and jumps to it', async () => {
    const alice = page('alice')
    await openRoom(alice, 'general')
    await alice.getByTestId('search').fill('zeppel')
    const hit = alice.getByTestId('search-results').locator('.search-hit').filter({ hasText: 'History #007' })
    await hit.waitFor()
    await alice.getByTestId('search-results').locator('mark').filter({ hasText: 'zeppelin' }).first().waitFor()
    await shot(alice, '06-search')
    await hit.click()
    await alice.getByTestId('view-title').filter({ hasText: 'random' }).waitFor()
    await alice.locator('.msg-row.highlighted').filter({ hasText: 'History #007' }).waitFor()
    await shot(alice, '07-history-jump')
  })

  test('whiteboard: strokes and cursors whispered live, saved for a late joiner', async () => {
    const alice = page('alice'), bob = page('bob'), carol = page('carol')
    const board = async (p: Page) => {
      await p.getByTestId('room-design').click()
      await p.getByTestId('tab-board').click()
      await p.getByTestId('board').waitFor()
      await p.waitForFunction(() => !document.querySelector('.board-loading'))
      // Whispers reach current subscribers only.
      await p.locator('[data-testid="board"][data-subscribed="true"]').waitFor()
      return p.getByTestId('board')
    }
    const strokes = (p: Page) => p.getByTestId('board').getAttribute('data-strokes').then(Number)
    const aliceBoard = await board(alice)
    const bobBoard = await board(bob)

    const draw = async (p: Page, canvas: Locator, path: Array<[number, number]>) => {
      const box = (await canvas.boundingBox())!
      const at = ([fx, fy]: [number, number]) => [box.x + fx * box.width, box.y + fy * box.height] as const
      await p.mouse.move(...at(path[0]!))
      await p.mouse.down()
      for (const point of path.slice(1)) await p.mouse.move(...at(point), { steps: 12 })
      await p.mouse.up()
    }
    await draw(alice, aliceBoard, [[0.15, 0.3], [0.3, 0.18], [0.45, 0.35], [0.6, 0.2], [0.75, 0.4]])
    await eventually(async () => (await strokes(bob)) >= 1, 'alice’s stroke on bob’s board')
    await bob.getByTestId('remote-cursor').filter({ hasText: 'alice' }).waitFor()

    await bob.getByRole('radio', { name: '#e85d75' }).click()
    await draw(bob, bobBoard, [[0.2, 0.7], [0.4, 0.55], [0.55, 0.75], [0.8, 0.6]])
    await eventually(async () => (await strokes(alice)) >= 2, 'bob’s stroke on alice’s board')
    await alice.mouse.move(500, 500, { steps: 5 })
    await alice.mouse.move(700, 420, { steps: 8 })
    await bob.getByTestId('remote-cursor').filter({ hasText: 'alice' }).waitFor()
    const painted = await bobBoard.evaluate((c: HTMLCanvasElement) => {
      const data = c.getContext('2d')!.getImageData(0, 0, c.width, c.height).data
      let n = 0
      for (let i = 3; i < data.length; i += 4) if (data[i]! > 0) n++
      return n
    })
    assert.ok(painted > 500, `strokes are painted on bob’s canvas (${painted} pixels)`)
    await shot(bob, '08-whiteboard')

    // Carol opens the board afterwards and gets the saved strokes from the backend.
    await board(carol)
    await eventually(async () => (await strokes(carol)) === 2, 'the saved strokes for the late joiner')
  })

  test('dashboard: live figures every second, from the backend and Resound’s /metrics', async () => {
    const alice = page('alice')
    await alice.getByTestId('nav-dashboard').click()
    const dash = alice.getByTestId('dashboard')
    await dash.waitFor()
    const ticks = () => dash.getAttribute('data-ticks').then(Number)
    await eventually(async () => (await ticks()) >= 1, 'a first stats.tick', 8_000)
    const first = await ticks()
    await eventually(async () => (await ticks()) >= first + 2, 'two more ticks', 6_000)
    await eventually(async () => (await alice.getByTestId('kpi-online').locator('strong').textContent()) === '3', 'three people online')
    const connections = Number(await alice.getByTestId('kpi-connections').locator('strong').textContent())
    assert.ok(connections >= 3, `resound_connected counts the three tabs (${connections})`)
    assert.ok(Number(await alice.getByTestId('total-messages').textContent()) > 180)
    await alice.locator('[data-testid=followups][data-mode=stream]').waitFor()
    await shot(alice, '09-dashboard')
  })

  test('a new room appears for everyone at once', async () => {
    const alice = page('alice'), bob = page('bob')
    await alice.getByRole('button', { name: 'New room' }).click()
    await alice.getByPlaceholder('room-name').fill('Launch plan')
    await alice.getByPlaceholder('room-name').press('Enter')
    await alice.getByTestId('view-title').filter({ hasText: 'launch-plan' }).waitFor()
    await bob.getByTestId('room-launch-plan').waitFor()
    await alice.getByTestId('nav-dashboard').click()
  })

  test('presence webhooks: someone leaving shows up as last seen', async () => {
    const alice = page('alice')
    await people.carol!.context.close()
    await alice.locator('[data-testid=person-carol] .presence-dot:not(.on)').waitFor()
    // member_removed is delayed (webhook_removal_delay), then recorded by the backend.
    await alice.locator('[data-testid=person-carol]').filter({ hasText: 'last seen just now' }).waitFor({ timeout: 12_000 })
    await eventually(async () => (await alice.getByTestId('kpi-online').locator('strong').textContent()) === '2', 'two people online')
  })

  test('going offline shows the reconnect banner; coming back catches up on missed messages', async () => {
    const alice = page('alice'), bob = page('bob')
    await openRoom(bob, 'general')
    await openRoom(alice, 'general')
    await people.bob!.context.setOffline(true)
    await bob.getByTestId('connection-banner').waitFor({ timeout: 15_000 })
    await send(alice, 'Sent while bob was offline')
    await shot(bob, '10-offline')
    await people.bob!.context.setOffline(false)
    await live(bob)
    await bob.getByTestId('connection-banner').waitFor({ state: 'detached' })
    await message(bob, 'Sent while bob was offline').waitFor()
  })

  nodeTest('offline for 30 s: the missed messages come back through channel history, once, in order, without a refetch', { timeout: 60_000 }, async () => {
    const alice = page('alice'), bob = page('bob')
    // A fresh page: pusher-js gives its WebSocket transport two early drops per client, and the
    // test above used one.
    await bob.reload()
    await live(bob)
    await openRoom(bob, 'general')
    await openRoom(alice, 'general')
    // Bob holds a position in the room's history once he has received one of its events.
    await send(alice, 'Before the outage')
    await message(bob, 'Before the outage').waitFor()

    const refetches: string[] = []
    const onRequest = (r: { method(): string; url(): string }) => {
      if (r.method() === 'GET' && /\/api\/conversations\/\d+\/messages\?(.*&)?after=/.test(r.url())) refetches.push(r.url())
    }
    bob.on('request', onRequest)
    const wentOffline = Date.now()
    await people.bob!.context.setOffline(true)
    // The socket is really gone: pusher-js's ping went unanswered and it closed the connection.
    await bob.getByTestId('connection-banner').waitFor({ timeout: 15_000 })
    const missed = ['Missed while away, 1 of 3', 'Missed while away, 2 of 3', 'Missed while away, 3 of 3']
    for (const text of missed) await send(alice, text)
    await bob.waitForTimeout(Math.max(0, wentOffline + 30_000 - Date.now()))
    await people.bob!.context.setOffline(false)
    await live(bob)
    for (const text of missed) await message(bob, text).waitFor()
    await bob.getByTestId('connection-banner').waitFor({ state: 'detached' })

    // Recovered through history: the helper reported it for this room, with at least the three.
    const outcomes = await bob.evaluate(() =>
      (window as unknown as { teamspaceRecoveries: Array<{ status: string; channel: string; count?: number; at: number }> }).teamspaceRecoveries)
    const recovered = outcomes.filter((o) => o.at >= wentOffline && o.status === 'recovered' && o.channel.startsWith('presence-room.'))
    assert.ok(recovered.some((o) => (o.count ?? 0) >= 3), `a recovered outcome of 3 or more events, got ${JSON.stringify(outcomes)}`)
    assert.deepEqual(outcomes.filter((o) => o.at >= wentOffline && o.status === 'failed'), [])
    // Each once, in order, and no catch-up refetch of the room's history.
    const texts = await bob.getByTestId('message').allInnerTexts()
    const at = missed.map((text) => texts.findIndex((t) => t.includes(text)))
    for (const text of missed) assert.equal(await count(message(bob, text)), 1, `${text} shown once`)
    assert.ok(at[0]! >= 0 && at[0]! < at[1]! && at[1]! < at[2]!, `in order: ${at.join(', ')}`)
    await bob.waitForTimeout(1_000)
    bob.off('request', onRequest)
    assert.deepEqual(refetches, [], 'no history refetch after a recovered resume')
    await shot(bob, '11-recovered')
  })
})
