// Every screen at a phone (390×844), a small laptop (1024×768) and a desktop (1440×900):
// nothing runs off the side, the controls that matter are on screen and not covered, the
// whiteboard draws with a finger (real touch input through the DevTools protocol) or a mouse,
// and toasts stay bounded, dismissable and clear of the composer and the tray. Screenshots:
// artifacts/vp-{width}x{height}-*.png.

/// <reference lib="dom" />

import assert from 'node:assert/strict'
import { after, before, describe, test as nodeTest } from 'node:test'
import type { Browser, Locator, Page } from 'playwright-core'
import { launch, message, overlaps, person, send, shot, signIn, eventually, type Person } from './lib.js'

const test = (name: string, fn: () => Promise<void>) => nodeTest(name, { timeout: 60_000 }, fn)

const VIEWPORTS = [
  { width: 390, height: 844, phone: true },
  { width: 1024, height: 768, phone: false },
  { width: 1440, height: 900, phone: false },
]

let browser: Browser
const opened: Person[] = []

/** No horizontal scrolling: the page is exactly as wide as the viewport. */
async function fitsWidth(p: Page, what: string) {
  const { scroll, inner } = await p.evaluate(() => ({ scroll: document.documentElement.scrollWidth, inner: window.innerWidth }))
  assert.ok(scroll <= inner, `${what}: page is ${scroll} px wide in a ${inner} px viewport`)
}

/** The element is inside the viewport and is what a tap at its centre reaches. */
async function reachable(p: Page, l: Locator, what: string) {
  const box = await l.boundingBox()
  assert.ok(box, `${what} is laid out`)
  const vp = p.viewportSize()!
  assert.ok(box.x >= 0 && box.y >= 0 && box.x + box.width <= vp.width + 0.5 && box.y + box.height <= vp.height + 0.5,
    `${what} is inside the ${vp.width}×${vp.height} viewport (${JSON.stringify(box)})`)
  const hit = await l.evaluate((el) => {
    const r = el.getBoundingClientRect()
    const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2)
    return !!top && (el === top || el.contains(top))
  })
  assert.ok(hit, `${what} is not covered by anything`)
}

async function drawWithFinger(p: Person, canvas: Locator) {
  const box = (await canvas.boundingBox())!
  const cdp = await p.context.newCDPSession(p.page)
  const at = (fx: number, fy: number) => ({ x: box.x + fx * box.width, y: box.y + fy * box.height })
  await cdp.send('Input.dispatchTouchEvent', { type: 'touchStart', touchPoints: [at(0.2, 0.5)] })
  for (let i = 1; i <= 12; i++) {
    await cdp.send('Input.dispatchTouchEvent', { type: 'touchMove', touchPoints: [at(0.2 + i * 0.05, 0.5 + Math.sin(i / 2) * 0.2)] })
    await new Promise((r) => setTimeout(r, 20))
  }
  await cdp.send('Input.dispatchTouchEvent', { type: 'touchEnd', touchPoints: [] })
  await cdp.detach()
}

async function drawWithMouse(p: Page, canvas: Locator) {
  const box = (await canvas.boundingBox())!
  await p.mouse.move(box.x + box.width * 0.2, box.y + box.height * 0.3)
  await p.mouse.down()
  await p.mouse.move(box.x + box.width * 0.6, box.y + box.height * 0.6, { steps: 10 })
  await p.mouse.up()
}

describe('layouts from phone to desktop', () => {
  before(async () => {
    browser = await launch()
  })
  after(async () => {
    for (const p of opened) await p.context.close().catch(() => {})
    await browser?.close()
  })

  for (const vp of VIEWPORTS) {
    const tag = `vp-${vp.width}x${vp.height}`
    test(`${vp.width}×${vp.height}: sign-in, chat, direct message, whiteboard, dashboard, drawers, tray, search`, async () => {
      const me = await person(browser, `v${vp.width}`, { viewport: { width: vp.width, height: vp.height }, hasTouch: vp.phone, isMobile: vp.phone })
      opened.push(me)
      const p = me.page
      await signIn(p, `viewer${vp.width}`, `${tag}-01-sign-in`)
      await fitsWidth(p, 'chat')

      // Chat: the composer and the Send button are on screen and usable.
      await reachable(p, p.getByTestId('composer'), 'the composer')
      await send(p, `Hello from a ${vp.width} px screen`)
      await reachable(p, p.getByTestId('send'), 'the Send button')
      await shot(p, `${tag}-02-chat`)
      if (vp.phone) {
        await reachable(p, p.getByTestId('mobile-nav'), 'the bottom navigation')
        assert.equal(await p.getByTestId('tab-board').isVisible(), false, 'phones use the bottom navigation instead of tabs')
      } else {
        assert.equal(await p.getByTestId('mobile-nav').isVisible(), false)
        // The search field never covers the Chat/Whiteboard tabs.
        await reachable(p, p.getByTestId('tab-board'), 'the Whiteboard tab')
        await reachable(p, p.getByTestId('tab-chat'), 'the Chat tab')
      }

      // The members panel: beside the chat on wide screens, a drawer below 1100 px.
      if (vp.width < 1100) {
        assert.equal(await p.getByTestId('members').isVisible(), false)
        await p.getByTestId('toggle-panel').click()
        await eventually(async () => (await p.getByTestId('members').boundingBox())?.x === vp.width - (await p.getByTestId('members').boundingBox())!.width, 'the members drawer to slide in')
        await reachable(p, p.getByTestId(`member-viewer${vp.width}`), 'my entry in the member list')
        await shot(p, `${tag}-03-members`)
        await reachable(p, p.getByTestId('close-panel'), 'the drawer’s close button')
        await p.getByTestId('close-panel').click()
        await p.getByTestId('scrim').waitFor({ state: 'detached' })
      } else {
        await reachable(p, p.getByTestId(`member-viewer${vp.width}`), 'my entry in the member list')
      }

      // The sidebar: a drawer (menu button) below 1100 px; collapsible on wide screens.
      if (vp.width < 1100) {
        await p.getByTestId(vp.phone ? 'mnav-menu' : 'menu').click()
        await eventually(async () => (await p.getByTestId('room-design').boundingBox())?.x !== undefined && (await p.getByTestId('room-design').boundingBox())!.x >= 0, 'the drawer to open')
        await new Promise((r) => setTimeout(r, 250))
        await shot(p, `${tag}-04-sidebar`)
        await reachable(p, p.getByTestId('room-design'), 'a room in the drawer')
      } else {
        await p.getByTestId('collapse-sidebar').click()
        await eventually(async () => !(await p.getByTestId('room-design').isVisible()), 'the sidebar to collapse')
        await shot(p, `${tag}-04-sidebar-collapsed`)
        await p.getByTestId('menu').click()
        await p.getByTestId('room-design').waitFor()
      }
      await p.getByTestId('room-design').click()
      await p.getByTestId('view-title').filter({ hasText: 'design' }).waitFor()
      if (vp.width < 1100) await p.getByTestId('scrim').waitFor({ state: 'detached' })

      // Whiteboard: opened from the tabs or the bottom bar; drawn with a finger on the phone.
      await p.getByTestId(vp.phone ? 'mnav-board' : 'tab-board').click()
      const canvas = p.getByTestId('board')
      await p.locator('[data-testid="board"][data-subscribed="true"]').waitFor()
      await p.waitForFunction(() => !document.querySelector('.board-loading'))
      await fitsWidth(p, 'whiteboard')
      const box = (await canvas.boundingBox())!
      assert.ok(box.x >= 0 && box.x + box.width <= vp.width && box.width >= vp.width * 0.5, `the board is on screen (${JSON.stringify(box)})`)
      const before = Number(await canvas.getAttribute('data-strokes'))
      if (vp.phone) await drawWithFinger(me, canvas)
      else await drawWithMouse(p, canvas)
      await eventually(async () => Number(await canvas.getAttribute('data-strokes')) === before + 1, 'the stroke to be drawn')
      await reachable(p, p.getByTestId('board-clear'), 'the Clear button')
      await shot(p, `${tag}-05-whiteboard`)

      // A direct message with someone from the people list.
      if (vp.width < 1100) await p.getByTestId(vp.phone ? 'mnav-menu' : 'menu').click()
      const someone = p.locator('[data-testid^="person-"]').first()
      await someone.click()
      await p.getByTestId('composer').waitFor()
      await fitsWidth(p, 'direct message')
      await reachable(p, p.getByTestId('send'), 'the Send button in a direct message')
      await shot(p, `${tag}-06-direct`)

      // Dashboard: the figures reflow instead of being crushed.
      if (vp.phone) await p.getByTestId('mnav-dashboard').click()
      else {
        if (vp.width < 1100) await p.getByTestId('menu').click()
        await p.getByTestId('nav-dashboard').click()
      }
      await p.getByTestId('dashboard').waitFor()
      await eventually(async () => Number(await p.getByTestId('dashboard').getAttribute('data-ticks')) >= 1, 'a dashboard tick')
      await fitsWidth(p, 'dashboard')
      for (const kpi of ['kpi-online', 'kpi-connections', 'kpi-mps', 'kpi-frames']) {
        const k = (await p.getByTestId(kpi).boundingBox())!
        assert.ok(k.x >= 0 && k.x + k.width <= vp.width && k.width >= 140, `${kpi} is readable (${Math.round(k.width)} px wide)`)
      }
      await shot(p, `${tag}-07-dashboard`)

      // The notification tray fits on screen.
      await p.getByTestId('bell').click()
      const tray = (await p.getByTestId('tray').boundingBox())!
      assert.ok(tray.x >= 0 && tray.x + tray.width <= vp.width, 'the tray is on screen')
      await shot(p, `${tag}-08-tray`)
      await p.getByTestId('bell').click()

      // Search: a field on wide screens, an icon that expands below 1100 px.
      if (vp.width < 1100) await p.getByTestId('search-open').click()
      await p.getByTestId('search').fill('screen')
      await p.getByTestId('search-results').locator('.search-hit').first().waitFor()
      const results = (await p.getByTestId('search-results').boundingBox())!
      assert.ok(results.x >= 0 && results.x + results.width <= vp.width, 'search results are on screen')
      await shot(p, `${tag}-09-search`)
      await p.getByTestId('search-results').locator('.search-hit').first().click()
      await p.getByTestId('composer').waitFor()
      assert.deepEqual(me.errors, [], 'no errors in the console')
    })
  }

  for (const vp of [VIEWPORTS[0]!, VIEWPORTS[1]!]) {
    const tag = `vp-${vp.width}x${vp.height}`
    test(`${vp.width}×${vp.height}: toasts are bounded, dismissable, wrapped and never cover the composer or the tray`, async () => {
      const me = await person(browser, `t${vp.width}`, { viewport: { width: vp.width, height: vp.height }, hasTouch: vp.phone, isMobile: vp.phone })
      opened.push(me)
      const p = me.page
      await signIn(p, `toaster${vp.width}`)
      // Six refused files in a row, one with a very long name.
      for (let i = 1; i <= 6; i++) {
        const name = i === 6 ? `${'a-very-long-file-name-without-any-spaces-'.repeat(4)}.exe` : `tool-${i}.exe`
        await p.getByTestId('file-input').setInputFiles({ name, mimeType: 'application/x-msdownload', buffer: Buffer.from('MZ') })
      }
      const toasts = p.getByTestId('toast-error')
      await toasts.filter({ hasText: 'a-very-long-file-name' }).waitFor()
      assert.equal(await toasts.count(), 3, 'at most three toasts at once')
      for (const t of await toasts.all()) {
        const b = (await t.boundingBox())!
        assert.ok(b.x >= 0 && b.x + b.width <= vp.width, 'a toast (long text wrapped) stays on screen')
        assert.ok(!overlaps(b, await p.getByTestId('composer').boundingBox()), 'toasts are clear of the composer')
        assert.ok(!overlaps(b, await p.getByTestId('send').boundingBox()), 'toasts are clear of the Send button')
      }
      await shot(p, `${tag}-10-toasts`)

      // Send works while toasts are up (a click on Send is not a click on a toast).
      await p.getByTestId('composer').fill('Sent with toasts on screen')
      await p.getByTestId('send').click()
      await message(p, 'Sent with toasts on screen').last().waitFor()

      // The tray opens clear of toasts: they hide while it is open.
      await p.getByTestId('bell').click()
      await p.getByTestId('tray').waitFor()
      for (const t of await toasts.all()) {
        assert.ok(!(await t.isVisible()) || !overlaps(await t.boundingBox(), await p.getByTestId('tray').boundingBox()), 'no toast over the tray')
      }
      await p.getByTestId('bell').click()

      // Each can be dismissed.
      const n = await toasts.count()
      await toasts.first().getByTestId('toast-close').click()
      await eventually(async () => (await toasts.count()) === n - 1, 'a dismissed toast to go')
    })
  }
})
