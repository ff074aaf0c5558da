// Helpers shared by the browser tests: one Chromium (Debian's, driven by playwright-core),
// people in isolated contexts, screenshots into artifacts/, and small waiting helpers.

/// <reference lib="dom" />

import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium, type Browser, type BrowserContext, type BrowserContextOptions, type Page } from 'playwright-core'

const HERE = path.dirname(fileURLToPath(import.meta.url))
export const BASE = process.env.TEAMSPACE_URL ?? 'http://127.0.0.1:3000'
export const ARTIFACTS = process.env.TEAMSPACE_ARTIFACTS ?? path.resolve(HERE, '../../artifacts')
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium'
export const WAIT = 10_000

export async function launch(): Promise<Browser> {
  fs.mkdirSync(ARTIFACTS, { recursive: true })
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  })
}

export interface Person { context: BrowserContext; page: Page; errors: string[] }

export async function person(browser: Browser, name: string, options: BrowserContextOptions = {}): Promise<Person> {
  const context = await browser.newContext({ viewport: { width: 1360, height: 860 }, deviceScaleFactor: 1, locale: 'en-GB', timezoneId: 'UTC', ...options })
  context.setDefaultTimeout(WAIT)
  const page = await context.newPage()
  const errors: string[] = []
  page.on('pageerror', (err) => {
    errors.push(err.message)
    console.error(`[${name}] page error: ${err.message}`)
  })
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !/Failed to load resource|WebSocket connection/.test(msg.text())) {
      errors.push(msg.text())
      console.error(`[${name}] console: ${msg.text()}`)
    }
  })
  return { context, page, errors }
}

export async function signIn(p: Page, name: string, screenshot?: string): Promise<void> {
  await p.goto(BASE)
  await p.getByLabel('Your name').fill(name)
  if (screenshot) await shot(p, screenshot)
  await p.getByRole('button', { name: 'Continue' }).click()
  await p.getByTestId('view-title').filter({ hasText: 'general' }).waitFor()
  await live(p)
  await signedIn(p)
}

/** The socket is signed in (`pusher:signin_success`): the backend's `sendToUser` reaches it. */
export const signedIn = (p: Page) => p.locator('[data-testid=link-state][data-signed-in=true]').waitFor({ state: 'attached' })

export const live = (p: Page) => p.locator('[data-testid=link-state].connected').waitFor({ state: 'attached' })
export const message = (p: Page, text: string | RegExp) => p.getByTestId('message').filter({ hasText: text })

export async function shot(p: Page, name: string): Promise<void> {
  await p.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) })
}

export async function send(p: Page, text: string): Promise<void> {
  const box = p.getByTestId('composer')
  await box.fill(text)
  await box.press('Enter')
  await message(p, text).last().waitFor()
}

export async function eventually(check: () => Promise<boolean>, what: string, timeout = WAIT): Promise<void> {
  const deadline = Date.now() + timeout
  while (Date.now() < deadline) {
    if (await check()) return
    await new Promise((r) => setTimeout(r, 150))
  }
  assert.fail(`timed out waiting for ${what}`)
}

export async function csrfOf(p: Page): Promise<string> {
  return p.evaluate(async () => ((await (await fetch('/api/session')).json()) as { csrfToken: string }).csrfToken)
}

/** The conversation id of a room (or DM peer name) as this person sees it. */
export async function conversationId(p: Page, name: string): Promise<number> {
  return p.evaluate(async (n) => {
    const list = (await (await fetch('/api/conversations')).json()) as Array<{ id: number; name: string }>
    return list.find((c) => c.name === n)?.id ?? 0
  }, name)
}

/** Status of POST /broadcasting/auth for a channel, as pusher-js would send it. */
export async function authStatus(p: Page, channel: string): Promise<number> {
  const csrf = await csrfOf(p)
  return p.evaluate(async ([ch, token]) => (await fetch('/broadcasting/auth', {
    method: 'POST', headers: { 'Content-Type': 'application/x-www-form-urlencoded', 'X-CSRF-TOKEN': token! },
    body: `socket_id=1.2&channel_name=${ch}`,
  })).status, [channel, csrf])
}

export interface Box { x: number; y: number; width: number; height: number }
export function overlaps(a: Box | null, b: Box | null): boolean {
  if (!a || !b) return false
  return a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height
}
