//! Who may join which channel, and the signatures that let them. This is the backend's half of
//! Laravel's `routes/channels.php` plus the `/broadcasting/auth` and `/broadcasting/user-auth`
//! controllers: the decision is made here, the signing is the `pusher` SDK's.
//!
//! Channels of the app:
//!   presence-lobby        everyone signed in: the online list and app-wide events (new rooms)
//!   presence-room.{id}    a room: its member list, messages, receipts, typing whispers
//!                         (private and invite-only rooms: members only, checked here on
//!                         every subscription)
//!   private-dm.{id}       a direct conversation: only its two participants
//!   private-board.{id}    the whiteboard of room {id}: stroke and cursor whispers
//!   dashboard             public: the live figures, one event a second

import type Pusher from 'pusher'
import type { MemberInfo } from '../shared/types.js'
import type { Store } from './store.js'

export const LOBBY_CHANNEL = 'presence-lobby'
export const DASHBOARD_CHANNEL = 'dashboard'

export type ChannelRef =
  | { kind: 'lobby' }
  | { kind: 'room'; id: number }
  | { kind: 'dm'; id: number }
  | { kind: 'board'; id: number }

const PATTERNS: Array<[RegExp, 'room' | 'dm' | 'board']> = [
  [/^presence-room\.([1-9]\d{0,9})$/, 'room'],
  [/^private-dm\.([1-9]\d{0,9})$/, 'dm'],
  [/^private-board\.([1-9]\d{0,9})$/, 'board'],
]

/** Decides what a channel name refers to, once; unknown names are null (and refused). */
export function parseChannel(name: string): ChannelRef | null {
  if (name === LOBBY_CHANNEL) return { kind: 'lobby' }
  for (const [pattern, kind] of PATTERNS) {
    const match = pattern.exec(name)
    if (match) return { kind, id: Number(match[1]) }
  }
  return null
}

const SOCKET_ID = /^\d{1,20}\.\d{1,20}$/

export function isSocketId(value: unknown): value is string {
  return typeof value === 'string' && SOCKET_ID.test(value)
}

export type AuthResult =
  | { ok: true; body: { auth: string; channel_data?: string } }
  | { ok: false; status: 400 | 403; error: string }

export function presenceData(user: MemberInfo): Pusher.PresenceChannelData {
  return { user_id: String(user.id), user_info: { id: user.id, name: user.name, color: user.color } }
}

export class ChannelAuthorizer {
  constructor(private readonly store: Store, private readonly pusher: Pusher) {}

  /** May this user subscribe to this channel? */
  allows(user: MemberInfo, ref: ChannelRef): boolean {
    switch (ref.kind) {
      case 'lobby':
        return true
      case 'room':
      case 'board':
        // Public rooms: everyone; private and invite-only rooms: their members only.
        return this.store.getConversationRow(ref.id)?.kind === 'room' && this.store.canAccess(user.id, ref.id)
      case 'dm': {
        const row = this.store.getConversationRow(ref.id)
        return row?.kind === 'dm' && this.store.canAccess(user.id, ref.id)
      }
    }
  }

  /** `POST /broadcasting/auth`: the token for one private or presence subscription. */
  authorizeChannel(user: MemberInfo, socketId: unknown, channelName: unknown): AuthResult {
    if (!isSocketId(socketId) || typeof channelName !== 'string') {
      return { ok: false, status: 400, error: 'socket_id and channel_name are required' }
    }
    const ref = parseChannel(channelName)
    if (!ref || !this.allows(user, ref)) return { ok: false, status: 403, error: 'not allowed on this channel' }
    const isPresence = channelName.startsWith('presence-')
    const body = isPresence
      ? this.pusher.authorizeChannel(socketId, channelName, presenceData(user))
      : this.pusher.authorizeChannel(socketId, channelName)
    return { ok: true, body }
  }

  /** `POST /broadcasting/user-auth`: the token for `pusher.signin()`. */
  authenticateUser(user: MemberInfo, socketId: unknown): AuthResult {
    if (!isSocketId(socketId)) return { ok: false, status: 400, error: 'socket_id is required' }
    const body = this.pusher.authenticateUser(socketId, {
      id: String(user.id),
      user_info: { id: user.id, name: user.name, color: user.color },
    })
    return { ok: true, body }
  }
}
