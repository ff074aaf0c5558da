//! Spam control for posts (messages and files), decided before anything is stored:
//!   - flood: a token bucket per user (a burst, then a steady rate);
//!   - duplicates: the same text from the same user more than `maxDuplicates` times within
//!     `duplicateWindowMs`, in any conversation;
//!   - links from new users (signed up less than `newUserMs` ago): at most
//!     `newUserLinksPerMessage` in one message and `newUserLinksPerWindow` per `linkWindowMs`.
//! A refusal carries a sentence for the sender. State is in memory, per user, bounded: at most
//! `maxUsers` users are tracked (the least recently seen is dropped first) and each user keeps
//! at most `maxDuplicates + 1` recent texts and `newUserLinksPerWindow` link times.

import crypto from 'node:crypto'

export interface SpamRules {
  burst: number
  perMinute: number
  duplicateWindowMs: number
  maxDuplicates: number
  newUserMs: number
  newUserLinksPerMessage: number
  newUserLinksPerWindow: number
  linkWindowMs: number
  maxUsers: number
}

export const DEFAULT_SPAM_RULES: SpamRules = {
  burst: 8,
  perMinute: 30,
  duplicateWindowMs: 60_000,
  maxDuplicates: 2,
  newUserMs: 24 * 3600_000,
  newUserLinksPerMessage: 2,
  newUserLinksPerWindow: 5,
  linkWindowMs: 10 * 60_000,
  maxUsers: 10_000,
}

export type SpamVerdict =
  | { ok: true }
  | { ok: false; reason: 'flood' | 'duplicate' | 'links'; error: string; retryAfterMs: number }

interface UserState {
  tokens: number
  refilledAt: number
  recent: Array<{ hash: string; at: number }>
  links: number[]
}

const LINK = /https?:\/\/[^\s<>"]+/giu

export function countLinks(text: string): number {
  return (text.match(LINK) ?? []).length
}

function fingerprint(text: string): string {
  const normal = text.normalize('NFKC').toLowerCase().replace(/\s+/g, ' ').trim()
  return crypto.createHash('sha1').update(normal).digest('base64')
}

export class SpamGuard {
  private readonly users = new Map<number, UserState>()

  constructor(readonly rules: SpamRules = DEFAULT_SPAM_RULES, private readonly now: () => number = Date.now) {}

  private stateOf(userId: number, at: number): UserState {
    let state = this.users.get(userId)
    if (state) {
      this.users.delete(userId) // re-insert: the map's order is least recently seen first
    } else {
      state = { tokens: this.rules.burst, refilledAt: at, recent: [], links: [] }
      if (this.users.size >= this.rules.maxUsers) {
        const oldest = this.users.keys().next().value
        if (oldest !== undefined) this.users.delete(oldest)
      }
    }
    this.users.set(userId, state)
    const perMs = this.rules.perMinute / 60_000
    state.tokens = Math.min(this.rules.burst, state.tokens + (at - state.refilledAt) * perMs)
    state.refilledAt = at
    state.recent = state.recent.filter((r) => at - r.at < this.rules.duplicateWindowMs)
    state.links = state.links.filter((t) => at - t < this.rules.linkWindowMs)
    return state
  }

  /**
   * Decides on one post and, when it is accepted, counts it. `createdAt` is when the author
   * signed up; `text` is the message (or a file's caption).
   */
  check(userId: number, createdAt: number, text: string): SpamVerdict {
    const at = this.now()
    const state = this.stateOf(userId, at)
    const r = this.rules

    if (state.tokens < 1) {
      const wait = Math.ceil((1 - state.tokens) / (r.perMinute / 60_000))
      return { ok: false, reason: 'flood', retryAfterMs: wait, error: `You are sending messages too quickly. Wait ${Math.ceil(wait / 1000)} s and try again.` }
    }

    const hash = text.trim() ? fingerprint(text) : null
    if (hash) {
      const same = state.recent.filter((x) => x.hash === hash)
      if (same.length >= r.maxDuplicates) {
        const wait = r.duplicateWindowMs - (at - same[0]!.at)
        return { ok: false, reason: 'duplicate', retryAfterMs: wait, error: 'You just sent this same message. Repeated messages are held back as spam.' }
      }
    }

    const links = countLinks(text)
    const isNew = at - createdAt < r.newUserMs
    if (isNew && links > 0) {
      if (links > r.newUserLinksPerMessage) {
        return { ok: false, reason: 'links', retryAfterMs: 0, error: `New accounts may post at most ${r.newUserLinksPerMessage} links in one message.` }
      }
      if (state.links.length + links > r.newUserLinksPerWindow) {
        const wait = r.linkWindowMs - (at - state.links[0]!)
        return { ok: false, reason: 'links', retryAfterMs: wait, error: `New accounts may post at most ${r.newUserLinksPerWindow} links in ${Math.round(r.linkWindowMs / 60_000)} minutes. Try again later.` }
      }
    }

    state.tokens -= 1
    if (hash) {
      state.recent.push({ hash, at })
      if (state.recent.length > r.maxDuplicates + 1) state.recent.shift()
    }
    if (isNew) for (let i = 0; i < links; i++) state.links.push(at)
    if (state.links.length > r.newUserLinksPerWindow) state.links.splice(0, state.links.length - r.newUserLinksPerWindow)
    return { ok: true }
  }

  trackedUsers(): number {
    return this.users.size
  }
}
