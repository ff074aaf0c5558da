// The send queue: every text message goes through it. An item keeps the message id the
// browser chose (`clientId`), which the backend uses to make posting idempotent, so a request
// repeated after a lost answer or an outage is stored once. While offline, items wait (kept in
// localStorage, so a reload does not lose them) and are sent in order when the connection is
// back. Bounded: at most MAX_ITEMS items or MAX_BYTES of text; beyond that a send is refused
// with an explanation rather than queued.

import { reactive } from 'vue'
import type { MemberInfo, Message } from '../../shared/types'
import { api, ApiError } from './api'
import { randomId } from './format'

export const MAX_ITEMS = 200
export const MAX_BYTES = 256 * 1024
const MAX_RATE_RETRIES = 5
export const WAITING = 'Waiting for the connection; it will be sent once you are back'

export interface OutItem {
  clientId: string
  conversationId: number
  body: string
  author: MemberInfo
  createdAt: number
  state: 'sending' | 'queued' | 'failed'
  /** Why it is waiting or failed, in words for the sender. */
  note: string
  attempts: number
}

export const outbox = reactive({ items: [] as OutItem[] })

const sentListeners = new Set<(m: Message) => void>()
let storageKey = ''
let flushing = false
let backoff = 1000
let retryTimer: ReturnType<typeof setTimeout> | undefined

/** Calls `fn` with each stored message the queue delivers. */
export function onSent(fn: (m: Message) => void): () => void {
  sentListeners.add(fn)
  return () => sentListeners.delete(fn)
}

function save(): void {
  if (!storageKey) return
  try {
    localStorage.setItem(storageKey, JSON.stringify(outbox.items))
  } catch { /* storage full or disabled: the queue still works for this page */ }
}

/** Loads this user's queue (left by an earlier page) and starts sending it. */
export function startOutbox(userId: number): void {
  storageKey = `teamspace.outbox.${userId}`
  try {
    const saved = JSON.parse(localStorage.getItem(storageKey) ?? '[]') as OutItem[]
    outbox.items = saved.slice(0, MAX_ITEMS).map((i) => ({ ...i, state: i.state === 'failed' ? 'failed' : 'queued' }))
  } catch {
    outbox.items = []
  }
  window.addEventListener('online', () => kick())
  kick()
}

function bytes(): number {
  return outbox.items.reduce((n, i) => n + i.body.length * 2, 0)
}

export function enqueue(conversationId: number, body: string, author: MemberInfo): OutItem | string {
  if (outbox.items.length >= MAX_ITEMS || bytes() + body.length * 2 > MAX_BYTES) {
    return 'Too many messages are waiting to be sent. Wait for the connection to come back.'
  }
  // Order is kept: behind other unsent messages, this one waits its turn.
  const behind = outbox.items.some((i) => i.state !== 'failed')
  const item: OutItem = {
    clientId: randomId(), conversationId, body, author, createdAt: Date.now(),
    state: navigator.onLine && !behind ? 'sending' : 'queued',
    note: !navigator.onLine ? WAITING : behind ? 'Queued behind the messages before it' : '', attempts: 0,
  }
  outbox.items.push(item)
  save()
  kick()
  return item
}

/** Drops the queue (signing out). */
export function clearOutbox(): void {
  outbox.items = []
  if (storageKey) localStorage.removeItem(storageKey)
}

export function retry(clientId: string): void {
  const item = outbox.items.find((i) => i.clientId === clientId)
  if (!item) return
  item.state = 'queued'
  item.note = ''
  item.attempts = 0
  save()
  kick(true)
}

export function discard(clientId: string): void {
  outbox.items = outbox.items.filter((i) => i.clientId !== clientId)
  save()
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Sends what is queued, oldest first, one at a time (order is kept). */
export function kick(now = false): void {
  if (now) backoff = 1000
  clearTimeout(retryTimer)
  if (flushing) return
  flushing = true
  void flush().finally(() => {
    flushing = false
  })
}

async function flush(): Promise<void> {
  for (;;) {
    const item = outbox.items.find((i) => i.state !== 'failed')
    if (!item) return
    if (!navigator.onLine) {
      item.state = 'queued'
      item.note = WAITING
      return // the `online` event kicks again
    }
    item.state = 'sending'
    item.note = ''
    item.attempts += 1
    try {
      const stored = await api.send(item.conversationId, item.body, item.clientId)
      outbox.items = outbox.items.filter((i) => i.clientId !== item.clientId)
      save()
      backoff = 1000
      for (const fn of sentListeners) fn(stored)
    } catch (err) {
      const e = err instanceof ApiError ? err : new ApiError(0, String(err))
      if (e.status === 0 || e.status >= 500) {
        // No answer (or the server failed): try again later with the same id; never twice stored.
        item.state = 'queued'
        item.note = e.status === 0 ? WAITING : 'The server had a problem; trying again shortly'
        save()
        retryTimer = setTimeout(() => kick(), backoff)
        backoff = Math.min(backoff * 2, 30_000)
        return
      }
      if (e.status === 429 && item.attempts < MAX_RATE_RETRIES) {
        const wait = Math.max(1000, e.retryAfterMs ?? 1000)
        item.state = 'queued'
        item.note = `Sending too fast: held back, sending again in ${Math.ceil(wait / 1000)} s`
        await sleep(wait)
        continue
      }
      item.state = 'failed'
      item.note = e.message
      save()
      failListeners.forEach((fn) => fn(item, e))
    }
  }
}

const failListeners = new Set<(item: OutItem, err: ApiError) => void>()
/** Calls `fn` when the server refuses an item for good (spam rules, validation, access). */
export function onFailed(fn: (item: OutItem, err: ApiError) => void): () => void {
  failListeners.add(fn)
  return () => failListeners.delete(fn)
}
