//! The use cases that change state and tell browsers about it: posting a message (filter,
//! store, publish to the conversation except the sender's socket, notify mentioned users),
//! read receipts, whiteboard strokes, new rooms. The order is always validate → store →
//! publish, and a publish that fails is logged, never undone: browsers catch up from the REST
//! history when they reconnect.

import type Pusher from 'pusher'
import {
  EVENTS, type AppNotification, type Message, type MemberInfo, type Receipt, type RoomActivity, type Stroke,
} from '../shared/types.js'
import { LOBBY_CHANNEL } from './channels.js'
import { boardChannelFor, channelFor, type Store } from './store.js'
import { findMentions } from './validation.js'
import type { WordFilter } from './wordFilter.js'

export interface Logger {
  info(msg: string, fields?: Record<string, unknown>): void
  warn(msg: string, fields?: Record<string, unknown>): void
}

export class Chat {
  /** Messages posted since the dashboard last asked (see takeMessageCount). */
  private messagesSinceTick = 0

  constructor(
    private readonly store: Store,
    private readonly pusher: Pusher,
    private readonly filter: WordFilter,
    private readonly log: Logger,
  ) {}

  takeMessageCount(): number {
    const n = this.messagesSinceTick
    this.messagesSinceTick = 0
    return n
  }

  private async publish(what: string, send: () => Promise<unknown>): Promise<void> {
    try {
      await send()
    } catch (err) {
      this.log.warn('publish failed', { what, error: (err as Error).message })
    }
  }

  /**
   * Stores a message (text already validated; the word filter is applied here) and publishes
   * it to everyone in the conversation but the sender's own socket (`toOthers`): the sender
   * shows the copy this returns.
   */
  async postMessage(
    author: MemberInfo,
    conversationId: number,
    input: { body: string; clientId: string | null; fileId?: string | null },
    socketId: string | undefined,
  ): Promise<Message> {
    const { text } = this.filter.mask(input.body)
    const message = this.store.addMessage({ conversationId, userId: author.id, body: text, fileId: input.fileId, clientId: input.clientId })
    this.messagesSinceTick += 1
    const row = this.store.getConversationRow(conversationId)!
    const channel = channelFor(row.kind, row.id)
    const activity: RoomActivity = { conversationId, messageId: message.id, authorId: author.id }
    const exclude = socketId ? { socket_id: socketId } : {}

    if (row.kind === 'room') {
      // One signed request for both: the message to the room, the unread hint to everyone else.
      await this.publish('message', () => this.pusher.triggerBatch([
        { channel, name: EVENTS.messageSent, data: message, ...exclude },
        { channel: LOBBY_CHANNEL, name: EVENTS.roomActivity, data: activity, ...exclude },
      ]))
    } else {
      const peer = row.user_a === author.id ? row.user_b! : row.user_a!
      await this.publish('message', () => this.pusher.trigger(channel, EVENTS.messageSent, message, exclude))
      await this.publish('dm activity', () => this.pusher.sendToUser(String(peer), EVENTS.conversationActivity, activity))
    }
    await this.notifyMentions(author, message)
    return message
  }

  private async notifyMentions(author: MemberInfo, message: Message): Promise<void> {
    const mentioned = findMentions(message.body)
    if (mentioned.length === 0) return
    const conversation = this.store.conversationFor(author.id, message.conversationId)
    const where = conversation?.kind === 'room' ? `#${conversation.name}` : 'a direct message'
    for (const name of mentioned.slice(0, 10)) {
      const user = this.store.findUserByName(name)
      if (!user || user.id === author.id || !this.store.canAccess(user.id, message.conversationId)) continue
      const notification: AppNotification = this.store.addNotification(user.id, {
        kind: 'mention',
        title: `${author.name} mentioned you in ${where}`,
        body: message.body.slice(0, 200),
        conversationId: message.conversationId,
        messageId: message.id,
      })
      await this.publish('mention', () => this.pusher.sendToUser(String(user.id), EVENTS.notification, notification))
    }
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

  async createRoom(name: string, topic: string, socketId: string | undefined): Promise<number> {
    const id = this.store.createRoom(name, topic)
    await this.publish('room created', () =>
      this.pusher.trigger(LOBBY_CHANNEL, EVENTS.roomCreated, { id, name, topic }, socketId ? { socket_id: socketId } : {}))
    return id
  }
}
