//! The use cases that change state and tell browsers about it: posting a message (filter,
//! store, publish to the conversation except the sender's socket; the follow-ups, mentions
//! among them, come from the stream worker, or run here after the publish without Redis),
//! read receipts, whiteboard strokes, new rooms. The order is always validate → store →
//! publish, and a publish that fails is logged, never undone: browsers catch up from the REST
//! history when they reconnect.

import crypto from 'node:crypto'
import type Pusher from 'pusher'
import {
  EVENTS, type Message, type MemberInfo, type Receipt, type RoomActivity, type RoomMembers,
  type RoomVisibility, type Stroke,
} from '../shared/types.js'
import { LOBBY_CHANNEL } from './channels.js'
import { FollowUps } from './followUps.js'
import { SpamGuard, type SpamVerdict } from './spam.js'
import { boardChannelFor, channelFor, type Store } from './store.js'
import type { WordFilter } from './wordFilter.js'

export interface Logger {
  info(msg: string, fields?: Record<string, unknown>): void
  warn(msg: string, fields?: Record<string, unknown>): void
}

/** A post the spam rules refused: the sentence is for the sender. */
export class PostRefused extends Error {
  constructor(readonly verdict: Extract<SpamVerdict, { ok: false }>) {
    super(verdict.error)
  }
}

/** Extra fields Resound reads on a publish (protocol.md 11.1); the SDK sends them as given. */
type Keyed<T> = T & { idempotency_key: string }

export class Chat {
  /** Makes this process's idempotency keys its own (message ids restart with a new database). */
  private readonly keyPrefix = `ts-${crypto.randomBytes(6).toString('base64url')}`
  /** Delay before the one retry of a keyed publish. */
  retryDelayMs = 300

  constructor(
    private readonly store: Store,
    private readonly pusher: Pusher,
    private readonly filter: WordFilter,
    private readonly log: Logger,
    readonly spam: SpamGuard = new SpamGuard(),
    /**
     * The follow-ups to run after each publish, in the request path; null when the stream
     * worker runs them from Resound's stream instead.
     */
    private readonly inlineFollowUps: FollowUps | null = new FollowUps(store, pusher, log),
  ) {}

  /**
   * A retried post (same client id from the same user) returns the message already stored,
   * so a send queue can repeat a request whose answer it never saw without doubling it.
   */
  alreadyPosted(author: MemberInfo, clientId: string | null): Message | null {
    return clientId ? this.store.messageByClientId(author.id, clientId) : null
  }

  /** Applies the spam rules to a post; throws PostRefused when they refuse it. */
  admit(author: MemberInfo, text: string): void {
    const verdict = this.spam.check(author.id, this.store.userCreatedAt(author.id) ?? 0, text)
    if (!verdict.ok) {
      this.log.info('post refused', { userId: author.id, reason: verdict.reason })
      throw new PostRefused(verdict)
    }
  }

  private async publish(what: string, send: () => Promise<unknown>): Promise<void> {
    try {
      await send()
    } catch (err) {
      this.log.warn('publish failed', { what, error: (err as Error).message })
    }
  }

  /**
   * A publish carrying idempotency keys, tried twice: when the first attempt fails (a timeout,
   * a 5xx) it may still have been delivered, and Resound answers the retry without publishing
   * again (protocol.md 11.1). Browsers that missed it anyway catch up from the history.
   */
  private async publishKeyed(what: string, send: () => Promise<unknown>): Promise<void> {
    try {
      await send()
      return
    } catch (err) {
      this.log.warn('publish failed; retrying once with the same key', { what, error: (err as Error).message })
    }
    await new Promise((r) => setTimeout(r, this.retryDelayMs))
    await this.publish(what, send)
  }

  /**
   * Stores a message (text already validated; the word filter is applied here) and publishes
   * it to everyone in the conversation but the sender's own socket (`toOthers`): the sender
   * shows the copy this returns. The filter runs before the store and the publish, never after:
   * what is published reaches subscribers and Resound's channel history as it is.
   */
  async postMessage(
    author: MemberInfo,
    conversationId: number,
    input: { body: string; clientId: string | null; fileId?: string | null },
    socketId: string | undefined,
  ): Promise<Message> {
    const { text, masked } = this.filter.mask(input.body)
    const message = this.store.addMessage({ conversationId, userId: author.id, body: text, fileId: input.fileId, clientId: input.clientId, masked })
    const row = this.store.getConversationRow(conversationId)!
    const channel = channelFor(row.kind, row.id)
    const activity: RoomActivity = { conversationId, messageId: message.id, authorId: author.id }
    const exclude = socketId ? { socket_id: socketId } : {}

    const key = `${this.keyPrefix}-message-${message.id}`
    const keyed = (params: Pusher.TriggerParams, k = key) => ({ ...params, idempotency_key: k }) as Keyed<Pusher.TriggerParams>

    if (row.kind === 'room' && row.visibility !== 'public') {
      // A private room's unread hints go to its members only, never to the lobby.
      await this.publishKeyed('message', () => this.pusher.trigger(channel, EVENTS.messageSent, message, keyed(exclude)))
      for (const member of this.store.roomMembers(conversationId)) {
        if (member.id === author.id) continue
        await this.publish('room activity', () => this.pusher.sendToUser(String(member.id), EVENTS.conversationActivity, activity))
      }
    } else if (row.kind === 'room') {
      // One signed request for both: the message to the room, the unread hint to everyone else;
      // each item has its own key, so a retry publishes only what the first attempt did not.
      const batch: Array<Keyed<Pusher.BatchEvent>> = [
        { channel, name: EVENTS.messageSent, data: message, ...exclude, idempotency_key: key },
        { channel: LOBBY_CHANNEL, name: EVENTS.roomActivity, data: activity, ...exclude, idempotency_key: `${key}-activity` },
      ]
      // triggerBatch serialises `data` in place: give each attempt its own copy.
      await this.publishKeyed('message', () => this.pusher.triggerBatch(batch.map((e) => ({ ...e }))))
    } else {
      const peer = row.user_a === author.id ? row.user_b! : row.user_a!
      await this.publishKeyed('message', () => this.pusher.trigger(channel, EVENTS.messageSent, message, keyed(exclude)))
      await this.publish('dm activity', () => this.pusher.sendToUser(String(peer), EVENTS.conversationActivity, activity))
    }
    if (this.inlineFollowUps) await this.inlineFollowUps.messagePublished(message)
    return message
  }

  /** Moves the reader's marker forward and tells the conversation (only when it moved). */
  async markRead(reader: MemberInfo, conversationId: number, messageId: number, socketId: string | undefined): Promise<boolean> {
    if (!this.store.markRead(conversationId, reader.id, messageId)) return false
    const row = this.store.getConversationRow(conversationId)!
    const receipt: Receipt = { conversationId, user: reader, messageId }
    await this.publish('receipt', () =>
      this.pusher.trigger(channelFor(row.kind, row.id), EVENTS.receiptUpdated, receipt, socketId ? { socket_id: socketId } : {}))
    return true
  }

  /**
   * Persists a finished stroke so late joiners see it. Everyone on the board already drew it
   * from the author's whispers; `stroke.saved` replaces those pieces with the final stroke
   * (and fills in for anyone who missed some).
   */
  async saveStroke(roomId: number, stroke: Stroke, socketId: string | undefined): Promise<boolean> {
    if (!this.store.addStroke(roomId, stroke)) return false
    await this.publish('stroke', () =>
      this.pusher.trigger(boardChannelFor(roomId), EVENTS.strokeSaved, stroke, socketId ? { socket_id: socketId } : {}))
    return true
  }

  async clearBoard(by: MemberInfo, roomId: number, socketId: string | undefined): Promise<void> {
    this.store.clearStrokes(roomId)
    await this.publish('board cleared', () =>
      this.pusher.trigger(boardChannelFor(roomId), EVENTS.boardCleared, { by }, socketId ? { socket_id: socketId } : {}))
  }

  /** A new room; public and invite-only ones are announced on the lobby, private ones are not. */
  async createRoom(name: string, topic: string, socketId: string | undefined, visibility: RoomVisibility = 'public', creator: MemberInfo | null = null): Promise<number> {
    const id = this.store.createRoom(name, topic, visibility, creator?.id ?? null)
    if (visibility !== 'private') {
      await this.publish('room created', () =>
        this.pusher.trigger(LOBBY_CHANNEL, EVENTS.roomCreated, { id, name, topic }, socketId ? { socket_id: socketId } : {}))
    }
    return id
  }

  private async publishMembers(roomId: number): Promise<void> {
    const body: RoomMembers = { conversationId: roomId, members: this.store.roomMembers(roomId) }
    await this.publish('room members', () => this.pusher.trigger(channelFor('room', roomId), EVENTS.roomMembers, body))
  }

  /** Adds someone to a private room: they get the room (and a notification) on their user channel. */
  async invite(by: MemberInfo, roomId: number, invitee: MemberInfo): Promise<boolean> {
    if (!this.store.addMember(roomId, invitee.id, by.id)) return false
    const room = this.store.conversationFor(invitee.id, roomId)
    const notification = this.store.addNotification(invitee.id, {
      kind: 'invite', title: `${by.name} added you to #${room?.name ?? 'a room'}`, body: room?.topic ?? '',
      conversationId: roomId, messageId: null,
    })
    await this.publish('invite', () => this.pusher.sendToUser(String(invitee.id), EVENTS.roomInvited, room))
    await this.publish('invite notification', () => this.pusher.sendToUser(String(invitee.id), EVENTS.notification, notification))
    await this.publishMembers(roomId)
    return true
  }

  /** Takes someone out of a private room (leaving it, or removed by a member). */
  async removeFromRoom(roomId: number, user: MemberInfo): Promise<boolean> {
    if (!this.store.removeMember(roomId, user.id)) return false
    await this.publish('removed', () => this.pusher.sendToUser(String(user.id), EVENTS.roomRemoved, { conversationId: roomId }))
    await this.publishMembers(roomId)
    return true
  }
}
