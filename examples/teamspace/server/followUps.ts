//! The work that follows a published event, none of which a sender should wait for: mention
//! notifications, moderation counts (messages the word filter changed, per author, and the flag
//! on repeat offenders) and the dashboard's activity figures (messages, typing, strokes, joins
//! and leaves). It runs on events read from Resound's Redis stream (streamWorker.ts), or, with no
//! Redis, in the request path after the publish (chat.ts calls `messagePublished`).
//!
//! A message's follow-ups run once, keyed by its id in SQLite: an entry delivered again (after a
//! crash, or written twice over a cut connection) notifies nobody a second time. The in-memory
//! activity counters are figures for a chart and are not keyed.
//!
//! It does not filter words: that happens before publication (chat.ts), because subscribers and
//! Resound's channel history must never see the unfiltered text.

import type Pusher from 'pusher'
import { EVENTS, type AppNotification, type FollowUpStatus, type Message } from '../shared/types.js'
import type { Logger } from './chat.js'
import type { Store } from './store.js'
import { findMentions } from './validation.js'

/** At most this many people are notified per message. */
const MAX_MENTIONS = 10

/** An event read from a stream entry, typed; entries of no interest here read as null. */
export type StreamEvent =
  | { kind: 'message'; channel: string; message: Message; time: number }
  | { kind: 'presence'; channel: string; joined: boolean; userId: number; time: number }
  | { kind: 'whisper'; channel: string; event: string; time: number }

const CONVERSATION_CHANNEL = /^(?:presence-room|private-dm)\.\d+$/

/**
 * Reads an entry's plain string fields (docs/streams.md "Entries"): `message.sent` API events on
 * conversation channels, presence joins and leaves, and whispers.
 */
export function eventFromEntry(fields: Record<string, string>): StreamEvent | null {
  const channel = fields.channel ?? ''
  const time = Number(fields.time) || 0
  switch (fields.name) {
    case 'api_event': {
      if (fields.event !== EVENTS.messageSent || !CONVERSATION_CHANNEL.test(channel) || fields.data === undefined) return null
      let data: unknown
      try {
        data = JSON.parse(fields.data)
      } catch {
        return null
      }
      const m = data as Partial<Message> | null
      if (!m || typeof m !== 'object' || !Number.isSafeInteger(m.id) || !Number.isSafeInteger(m.conversationId)
        || typeof m.body !== 'string' || !m.author || !Number.isSafeInteger(m.author.id)) return null
      return { kind: 'message', channel, message: m as Message, time }
    }
    case 'member_added':
    case 'member_removed': {
      const userId = Number(fields.user_id)
      if (!Number.isSafeInteger(userId) || userId <= 0) return null
      return { kind: 'presence', channel, joined: fields.name === 'member_added', userId, time }
    }
    case 'client_event':
      return fields.event ? { kind: 'whisper', channel, event: fields.event, time } : null
    default:
      return null
  }
}

interface Mention {
  userId: number
  notification: AppNotification
}

export interface FollowUpOptions {
  /** Filtered messages after which an author is flagged (TEAMSPACE_FLAG_AFTER). */
  flagAfter: number
}

export type FollowUpCounts = FollowUpStatus['counts']

export class FollowUps {
  readonly counts: FollowUpCounts = { messages: 0, mentions: 0, filtered: 0, duplicates: 0, typing: 0, strokes: 0, joins: 0, leaves: 0 }
  /** Messages followed up since the dashboard last asked (see takeMessageCount). */
  private messagesSinceTick = 0

  constructor(
    private readonly store: Store,
    private readonly pusher: Pusher,
    private readonly log: Logger,
    private readonly opts: FollowUpOptions = { flagAfter: 3 },
  ) {}

  takeMessageCount(): number {
    const n = this.messagesSinceTick
    this.messagesSinceTick = 0
    return n
  }

  /** Applies one event from the stream; resolves once its notifications are sent (or failed). */
  async apply(event: StreamEvent): Promise<void> {
    switch (event.kind) {
      case 'message':
        await this.messagePublished(event.message)
        return
      case 'presence':
        if (event.joined) this.counts.joins += 1
        else this.counts.leaves += 1
        return
      case 'whisper':
        if (event.event === 'client-typing') this.counts.typing += 1
        else if (event.event === 'client-stroke') this.counts.strokes += 1
        return
    }
  }

  /**
   * A message was published: count it, count a filtered one against its author, notify the
   * people it mentions. Once per message id; false when it had been done already or the
   * message is not this database's (an entry left in the stream by an earlier database).
   */
  async messagePublished(published: Message): Promise<boolean> {
    const stored = this.store.getMessage(published.id)
    if (!stored || stored.conversationId !== published.conversationId || stored.author.id !== published.author.id || stored.body !== published.body) {
      this.log.warn('stream entry for an unknown message skipped', { messageId: published.id })
      return false
    }
    const outcome = this.store.followUpOnce(stored.id, () => {
      const masked = this.store.maskedWords(stored.id)
      return {
        filtered: masked > 0 ? this.store.recordFiltered(stored.author.id, masked, this.opts.flagAfter) : null,
        notifications: this.mentionNotifications(stored),
      }
    })
    if (!outcome) {
      this.counts.duplicates += 1
      return false
    }
    this.counts.messages += 1
    this.messagesSinceTick += 1
    if (outcome.filtered) this.counts.filtered += 1
    if (outcome.filtered?.newlyFlagged) {
      this.log.warn('user flagged: repeated filtered words', { userId: stored.author.id, filteredMessages: outcome.filtered.filteredMessages })
    }
    for (const n of outcome.notifications) {
      this.counts.mentions += 1
      try {
        await this.pusher.sendToUser(String(n.userId), EVENTS.notification, n.notification)
      } catch (err) {
        this.log.warn('publish failed', { what: 'mention', error: (err as Error).message })
      }
    }
    return true
  }

  /** Stores a notification for each person the message mentions who may read it. */
  private mentionNotifications(message: Message): Mention[] {
    const out: Mention[] = []
    const mentioned = findMentions(message.body)
    if (mentioned.length === 0) return out
    const author = message.author
    const conversation = this.store.conversationFor(author.id, message.conversationId)
    const where = conversation?.kind === 'room' ? `#${conversation.name}` : 'a direct message'
    for (const name of mentioned.slice(0, MAX_MENTIONS)) {
      const user = this.store.findUserByName(name)
      if (!user || user.id === author.id || !this.store.canAccess(user.id, message.conversationId)) continue
      out.push({
        userId: user.id,
        notification: this.store.addNotification(user.id, {
          kind: 'mention',
          title: `${author.name} mentioned you in ${where}`,
          body: message.body.slice(0, 200),
          conversationId: message.conversationId,
          messageId: message.id,
        }),
      })
    }
    return out
  }
}

/** The status reported when the follow-ups run in the request path (no Redis). */
export function inProcessStatus(followUps: FollowUps): FollowUpStatus {
  return {
    mode: 'in-process', stream: null, group: null, consumer: null, connected: false,
    processed: 0, recovered: 0, pending: 0, lastLagMs: null, backlog: null, counts: { ...followUps.counts },
  }
}
