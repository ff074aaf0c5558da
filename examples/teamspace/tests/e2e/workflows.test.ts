// What a team relies on beyond the happy path: private rooms (an outsider is refused until
// invited), spam limits explained to the sender, the offline send queue (sent once after an
// outage and after a lost answer), notifications in a background tab through the service
// worker, retrying a failed upload, and the backend refusing to start on a port in use.

/// <reference lib="dom" />

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { after, before, describe, test as nodeTest } from 'node:test'
import type { Browser, Page } from 'playwright-core'
import {
  authStatus, BASE, conversationId, csrfOf, eventually, launch, live, message, person, send, shot, signIn, type Person,
} from './lib.js'

const HERE = path.dirname(fileURLToPath(import.meta.url))
const test = (name: string, fn: () => Promise<void>) => nodeTest(name, { timeout: 60_000 }, fn)

let browser: Browser
const people: Record<string, Person> = {}
const page = (name: string) => people[name]!.page

async function join(name: string): Promise<Page> {
  const p = await person(browser, name)
  people[name] = p
  await signIn(p.page, name)
  return p.page
}

async function historyCount(p: Page, room: string, body: string): Promise<number> {
  const id = await conversationId(p, room)
  return p.evaluate(async ([cid, text]) => {
    const page = (await (await fetch(`/api/conversations/${cid}/messages?limit=100`)).json()) as { messages: Array<{ body: string }> }
    return page.messages.filter((m) => m.body === text).length
  }, [id, body] as const)
}

describe('team workflows', () => {
  before(async () => {
    browser = await launch()
    await join('frank')
    await join('gina')
  })
  after(async () => {
    for (const p of Object.values(people)) await p.context.close().catch(() => {})
    await browser?.close()
  })

  test('private rooms: invite-only; an outsider is refused until invited, and again after leaving', async () => {
    const frank = page('frank'), gina = page('gina')
    await frank.getByRole('button', { name: 'New room' }).click()
    await frank.getByPlaceholder('room-name').fill('skunkworks')
    await frank.getByTestId('new-room-visibility').selectOption('private')
    await frank.getByPlaceholder('room-name').press('Enter')
    await frank.getByTestId('view-title').filter({ hasText: 'skunkworks' }).waitFor()
    await frank.getByTestId('room-member-frank').waitFor()
    await send(frank, 'Only invited people can read this.')

    // Gina is an outsider: the room is not listed, its history and channel are refused.
    const id = await conversationId(frank, 'skunkworks')
    await new Promise((r) => setTimeout(r, 500))
    assert.equal(await gina.getByTestId('room-skunkworks').count(), 0)
    assert.equal(await authStatus(gina, `presence-room.${id}`), 403, 'the auth endpoint refuses an outsider')
    assert.equal(await authStatus(gina, `private-board.${id}`), 403, 'and the room’s whiteboard')
    assert.equal(await gina.evaluate(async (cid) => (await fetch(`/api/conversations/${cid}/messages`)).status, id), 404)

    // Frank adds her: the room appears for her at once, with a notification.
    await frank.getByTestId('invite-select').selectOption({ label: 'gina' })
    await frank.getByTestId('invite-button').click()
    await frank.getByTestId('room-member-gina').waitFor()
    await gina.getByTestId('room-skunkworks').waitFor()
    await gina.getByTestId('bell-badge').waitFor()
    assert.equal(await authStatus(gina, `presence-room.${id}`), 200)
    await gina.getByTestId('room-skunkworks').click()
    await message(gina, 'Only invited people can read this.').waitFor()
    await gina.getByTestId('room-member-frank').waitFor()
    await send(frank, 'Welcome, gina.')
    await message(gina, 'Welcome, gina.').waitFor()
    await shot(frank, 'private-room')

    // She leaves: gone from her list, refused again; Frank's member list updates live.
    gina.once('dialog', (d) => void d.accept())
    await gina.getByTestId('leave-room').click()
    await gina.getByTestId('room-skunkworks').waitFor({ state: 'detached' })
    await frank.getByTestId('room-member-gina').waitFor({ state: 'detached' })
    assert.equal(await authStatus(gina, `presence-room.${id}`), 403)
  })

  test('invite-only rooms: listed for everyone, locked until a member adds you', async () => {
    const frank = page('frank'), gina = page('gina')
    await frank.getByRole('button', { name: 'New room' }).click()
    await frank.getByPlaceholder('room-name').fill('roadmap')
    await frank.getByTestId('new-room-visibility').selectOption('invite')
    await frank.getByPlaceholder('room-name').press('Enter')
    await frank.getByTestId('view-title').filter({ hasText: 'roadmap' }).waitFor()
    await send(frank, 'Q3: ship the mobile layout.')

    // Gina sees it listed (room.created on the lobby), opens it, and finds it locked.
    await gina.getByTestId('room-roadmap').click()
    await gina.getByTestId('locked-room').filter({ hasText: 'roadmap is invite-only' }).waitFor()
    await gina.getByTestId('ask-frank').waitFor()
    assert.equal(await message(gina, 'Q3: ship').count(), 0)
    const id = await conversationId(gina, 'roadmap')
    assert.equal(await authStatus(gina, `presence-room.${id}`), 403)
    await shot(gina, 'invite-only-locked')

    // Frank adds her: the locked view becomes the room, with its history.
    await frank.getByTestId('invite-select').selectOption({ label: 'gina' })
    await frank.getByTestId('invite-button').click()
    await message(gina, 'Q3: ship the mobile layout.').waitFor()
    await gina.getByTestId('room-member-frank').waitFor()
  })

  test('spam limits: 40 identical posts in a burst are cut to two; the sender is told why', async () => {
    const spammer = await join('sam-spam')
    const csrf = await csrfOf(spammer)
    const generalId = await conversationId(spammer, 'general')
    const statuses = await spammer.evaluate(async ([cid, token]) => Promise.all(Array.from({ length: 40 }, () =>
      fetch(`/api/conversations/${cid}/messages`, {
        method: 'POST', headers: { 'Content-Type': 'application/json', 'X-CSRF-TOKEN': token as string },
        body: JSON.stringify({ body: 'FREE CRYPTO, click now' }),
      }).then((r) => r.status))), [generalId, csrf] as const)
    assert.equal(statuses.filter((s) => s === 201).length, 2, `accepted: ${statuses.join(',')}`)
    assert.ok(statuses.every((s) => s === 201 || s === 422 || s === 429))
    assert.equal(await historyCount(page('frank'), 'general', 'FREE CRYPTO, click now'), 2)

    // In the app: the refused message stays in the sender's list with the reason.
    await spammer.getByTestId('composer').fill('FREE CRYPTO, click now')
    await spammer.getByTestId('composer').press('Enter')
    const refused = spammer.locator('[data-testid=message][data-state=failed]').filter({ hasText: 'FREE CRYPTO' })
    await refused.getByTestId('failed').filter({ hasText: 'same message' }).waitFor()
    await spammer.getByTestId('toast-error').filter({ hasText: 'same message' }).waitFor()
    // New accounts may not post a wall of links.
    await spammer.getByTestId('composer').fill('http://a.example http://b.example http://c.example')
    await spammer.getByTestId('composer').press('Enter')
    await spammer.locator('[data-testid=message][data-state=failed]').getByTestId('failed').filter({ hasText: 'at most 2 links' }).waitFor()
    await shot(spammer, 'spam-refused')

    // A burst typed in the app: what is over the flood limit is held back, explained, then sent.
    const quick = await join('quick-typist')
    for (let i = 1; i <= 11; i++) {
      await quick.getByTestId('composer').fill(`burst message ${i}`)
      await quick.getByTestId('composer').press('Enter')
    }
    await quick.locator('[data-testid=message][data-state=queued]').getByTestId('queued').filter({ hasText: 'Sending too fast' }).first().waitFor()
    await shot(quick, 'spam-flood-held-back')
    await eventually(async () => (await quick.locator('[data-testid=message][data-state=sent]').filter({ hasText: /burst message \d+/ }).count()) === 11,
      'all eleven to be sent', 20_000)
    for (const i of [1, 9, 11]) assert.equal(await historyCount(quick, 'general', `burst message ${i}`), 1)
  })

  test('offline queue: a message sent while offline is delivered once when the connection is back', async () => {
    const frank = page('frank'), gina = page('gina')
    await frank.getByTestId('room-general').click()
    await gina.getByTestId('room-general').click()
    await gina.getByTestId('messages').waitFor()
    await people.gina!.context.setOffline(true)
    await gina.getByTestId('composer').fill('Queued on the train')
    await gina.getByTestId('composer').press('Enter')
    await gina.locator('[data-testid=message][data-state=queued]').filter({ hasText: 'Queued on the train' }).waitFor()
    await gina.getByTestId('connection-banner').waitFor({ timeout: 15_000 })
    await shot(gina, 'offline-queue')
    await new Promise((r) => setTimeout(r, 500))
    assert.equal(await message(frank, 'Queued on the train').count(), 0, 'nothing left while offline')

    await people.gina!.context.setOffline(false)
    await live(gina)
    await message(frank, 'Queued on the train').waitFor()
    await gina.locator('[data-testid=message][data-state=sent]').filter({ hasText: 'Queued on the train' }).waitFor()
    await new Promise((r) => setTimeout(r, 1000))
    assert.equal(await message(frank, 'Queued on the train').count(), 1)
    assert.equal(await message(gina, 'Queued on the train').count(), 1)
    assert.equal(await historyCount(frank, 'general', 'Queued on the train'), 1)

    // The answer is lost after the server stored the message: the retry (same id) is not stored twice.
    let cut = false
    await gina.route('**/api/conversations/*/messages', async (route) => {
      if (route.request().method() !== 'POST' || cut) return route.continue()
      cut = true
      await route.fetch()
      await route.abort('connectionreset')
    })
    await gina.getByTestId('composer').fill('Answer lost on the way back')
    await gina.getByTestId('composer').press('Enter')
    await gina.locator('[data-testid=message][data-state=sent]').filter({ hasText: 'Answer lost on the way back' }).waitFor({ timeout: 15_000 })
    assert.ok(cut)
    await message(frank, 'Answer lost on the way back').waitFor()
    await new Promise((r) => setTimeout(r, 800))
    assert.equal(await message(frank, 'Answer lost on the way back').count(), 1)
    assert.equal(await historyCount(frank, 'general', 'Answer lost on the way back'), 1)
    await gina.unroute('**/api/conversations/*/messages')
    // pusher-js retried over ws:// only: no wss:// attempt for the page's CSP to refuse.
    assert.deepEqual(people.gina!.errors.filter((e) => /Content Security Policy|Refused to connect/.test(e)), [])
  })

  test('notifications reach a background tab through the service worker', async () => {
    const hank = await person(browser, 'hank')
    people.hank = hank
    await hank.context.grantPermissions(['notifications'], { origin: BASE })
    await signIn(hank.page, 'hank')
    const p = hank.page
    await p.evaluate(async () => { await navigator.serviceWorker.ready })
    // Headless Chromium reports every tab as visible, so the test puts this one in the
    // background the way the browser would: visibilityState 'hidden' and a visibilitychange.
    // (A string, so the test runner's transpiler adds nothing to it.)
    await p.evaluate(`
      Object.defineProperty(document, 'visibilityState', { configurable: true, get() { return 'hidden' } })
      Object.defineProperty(document, 'hidden', { configurable: true, get() { return true } })
      document.dispatchEvent(new Event('visibilitychange'))
    `)
    await send(page('frank'), '@hank the build is green, ship it?')
    await eventually(async () => (await p.evaluate(async () => {
      const reg = await navigator.serviceWorker.ready
      return (await reg.getNotifications()).map((n) => `${n.title}|${n.body}`)
    })).some((t) => t.startsWith('frank mentioned you in #general|') && t.includes('ship it')), 'a system notification for the mention')
    // A direct message while in the background notifies too.
    await page('frank').getByTestId('person-hank').click()
    // The direct conversation is open before anything is typed (the composer is replaced).
    await page('frank').getByTestId('view-title').filter({ hasText: 'hank' }).waitFor()
    await send(page('frank'), 'Ping in private')
    await eventually(async () => (await p.evaluate(async () => {
      const reg = await navigator.serviceWorker.ready
      return (await reg.getNotifications()).map((n) => n.title)
    })).includes('New message from frank'), 'a system notification for the direct message')
  })

  test('a failed upload is retried with the same file, with progress, and arrives once', async () => {
    const frank = page('frank'), gina = page('gina')
    await frank.getByTestId('room-general').click()
    await gina.getByTestId('room-general').click()
    await gina.getByTestId('messages').waitFor()
    let failures = 0
    await gina.route('**/api/conversations/*/files', async (route) => {
      if (failures++ === 0) return route.fulfill({ status: 503, contentType: 'application/json', body: '{"error":"Storage is busy, try again."}' })
      return route.continue()
    })
    const name = `retry-${Date.now().toString(36)}.png`
    const png = await gina.screenshot({ clip: { x: 0, y: 0, width: 200, height: 120 } })
    await gina.getByTestId('file-input').setInputFiles({ name, mimeType: 'image/png', buffer: png })
    const row = gina.getByTestId('message').filter({ hasText: name })
    await row.locator('[data-testid=failed]').filter({ hasText: 'Storage is busy' }).waitFor()
    await shot(gina, 'upload-failed')
    await row.getByTestId('retry').click()
    const img = frank.locator(`img[alt="${name}"]`)
    await img.waitFor()
    await gina.locator(`img[alt="${name}"]`).waitFor()
    await new Promise((r) => setTimeout(r, 500))
    assert.equal(await img.count(), 1)
    assert.equal(await gina.locator(`img[alt="${name}"]`).count(), 1, 'the failed row became the stored one')
    assert.equal(await gina.locator('[data-testid=message][data-state=failed]').filter({ hasText: name }).count(), 0)
    assert.equal(failures, 2)
    await gina.unroute('**/api/conversations/*/files')
  })

  test('the banner shows when the very first connection fails; signing out leaves no errors', async () => {
    const ivy = await person(browser, 'ivy')
    people.ivy = ivy
    // Every WebSocket to Resound is refused, from the first attempt on.
    await ivy.context.routeWebSocket(/\/app\//, (ws) => void ws.close({ code: 1006 }))
    await ivy.page.goto(BASE)
    await ivy.page.getByLabel('Your name').fill('ivy')
    await ivy.page.getByRole('button', { name: 'Continue' }).click()
    await ivy.page.getByTestId('connection-banner').filter({ hasText: 'Cannot reach the live server' }).waitFor({ timeout: 15_000 })
    await shot(ivy.page, 'first-connection-failed')
    await ivy.context.close()
    delete people.ivy

    const jo = await person(browser, 'jo')
    people.jo = jo
    await signIn(jo.page, 'jo')
    await jo.page.getByRole('button', { name: 'Sign out' }).click()
    await jo.page.getByLabel('Your name').waitFor()
    await new Promise((r) => setTimeout(r, 500))
    assert.deepEqual(jo.errors, [], 'no errors in the console when signing out')
  })

  test('the backend refuses to start on a port that is in use, and says so', async () => {
    const port = new URL(BASE).port
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'teamspace-port-'))
    const child = spawn(process.execPath, ['--import', 'tsx', 'server/main.ts'], {
      cwd: path.resolve(HERE, '../..'),
      env: { ...process.env, TEAMSPACE_PORT: port, TEAMSPACE_DATA_DIR: dir, REVERB_PORT: '9', TEAMSPACE_REDIS_URL: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (out += d))
    const code = await new Promise<number | null>((resolve) => {
      const timer = setTimeout(() => { child.kill('SIGKILL'); resolve(null) }, 20_000)
      child.on('exit', (c) => { clearTimeout(timer); resolve(c) })
    })
    fs.rmSync(dir, { recursive: true, force: true })
    assert.equal(code, 1, `exit code (output: ${out})`)
    assert.match(out, new RegExp(`port ${port} is already in use`))
    assert.doesNotMatch(out, /backend listening/)
  })
})
