// Shapes exchanged between the backend and the browser: REST responses and the data of the
// events the backend triggers. Whisper payloads (client events) are here too, because both
// browsers of a conversation must agree on them even though the backend never sees them.

export interface User {
  id: number
  name: string
  color: string
  online: boolean
  lastSeenAt: number | null
}

/** What a presence channel carries as `user_info` (and Echo hands to here/joining/leaving). */
export interface MemberInfo {
  id: number
  name: string
  color: string
}

export type ConversationKind = 'room' | 'dm'
/**
 * Public rooms are open to everyone. The other two are for members only, and only a member can
 * add someone: a private room is hidden from everyone else; an invite-only room is listed for
 * everyone (name, topic, members) but locked until a member adds you.
 */
export type RoomVisibility = 'public' | 'private' | 'invite'

export interface Conversation {
  id: number
  kind: ConversationKind
  /** Room name, or for a direct message the other person's name. */
  name: string
  topic: string
  /** Channel the conversation's events go to: `presence-room.{id}` or `private-dm.{id}`. */
  channel: string
  /** For a direct message: the other participant. */
  peer?: MemberInfo
  lastMessageId: number
  unread: number
  /** Rooms: public, private or invite-only. Direct messages are always private. */
  visibility: RoomVisibility
  /** False for an invite-only room this user is not a member of (listed, but locked). */
  joined: boolean
}

/** The members of a private room (`GET /api/rooms/{id}/members`, `room.members` event). */
export interface RoomMembers {
  conversationId: number
  members: MemberInfo[]
}

export interface Attachment {
  id: string
  name: string
  type: string
  size: number
  url: string
}

export interface Message {
  id: number
  conversationId: number
  author: MemberInfo
  body: string
  createdAt: number
  attachment: Attachment | null
  /** Set by the sender's browser so its optimistic copy can be matched with the stored one. */
  clientId: string | null
}

export interface HistoryPage {
  messages: Message[]
  hasMore: boolean
}

export interface Receipt {
  conversationId: number
  user: MemberInfo
  messageId: number
}

export interface SearchSegment {
  text: string
  hit: boolean
}

export interface SearchHit {
  message: Message
  conversation: { id: number; kind: ConversationKind; name: string }
  snippet: SearchSegment[]
}

export interface AppNotification {
  id: number
  kind: 'mention' | 'invite'
  title: string
  body: string
  conversationId: number | null
  messageId: number | null
  createdAt: number
  read: boolean
}

/** One whiteboard stroke. Points are a flat [x0, y0, x1, y1, …] list in board units. */
export interface Stroke {
  id: string
  userId: number
  color: string
  width: number
  points: number[]
}

/** Board coordinates are independent of the canvas size on screen. */
export const BOARD_WIDTH = 1600
export const BOARD_HEIGHT = 1000
export const MAX_STROKE_POINTS = 400

export interface DashboardSample {
  /** Unix time in milliseconds. */
  t: number
  messagesPerSecond: number
  onlineUsers: number
  /** Figures read from Resound's own /metrics. */
  connections: number
  wsMessagesSentPerSecond: number
  apiEventsPerSecond: number
  clientEventsPerSecond: number
  subscriptions: number
}

/** An author whose messages the word filter changed; `flagged` once they reach the threshold. */
export interface ModerationRecord {
  userId: number
  name: string
  filteredMessages: number
  maskedWords: number
  flagged: boolean
}

/**
 * Where the work after publication (mention notifications, moderation counts, statistics) runs:
 * a consumer of Resound's Redis stream, or in the request path when there is no Redis.
 */
export interface FollowUpStatus {
  mode: 'stream' | 'in-process'
  /** Stream mode: the key, the group and this process's consumer name. */
  stream: string | null
  group: string | null
  consumer: string | null
  /** The worker's connection to Redis is up. */
  connected: boolean
  /** Stream entries handled and acknowledged since start. */
  processed: number
  /** Entries read again at start (left unacknowledged by a crashed run) or claimed from a dead consumer. */
  recovered: number
  /** Entries the group has delivered but not had acknowledged (XPENDING), as last read. */
  pending: number
  /** Milliseconds from the event in Resound (the entry's `time`) to its handling, for the last entry. */
  lastLagMs: number | null
  /** Entries of the stream not yet delivered to the group (Redis's `lag`; null when unknown). */
  backlog: number | null
  /** Follow-ups done since start. */
  counts: { messages: number; mentions: number; filtered: number; duplicates: number; typing: number; strokes: number; joins: number; leaves: number }
}

export interface DashboardSnapshot {
  samples: DashboardSample[]
  totals: { messages: number; files: number; strokes: number; users: number }
  resoundReachable: boolean
  followUps: FollowUpStatus
  moderation: ModerationRecord[]
}

export interface ClientConfig {
  key: string
  wsHost: string
  wsPort: number
  forceTLS: boolean
}

export interface Session {
  user: MemberInfo
  csrfToken: string
}

// ---- events the backend triggers (Echo listens with a leading dot: `.message.sent`) ----------

export const EVENTS = {
  messageSent: 'message.sent',
  receiptUpdated: 'receipt.updated',
  strokeSaved: 'stroke.saved',
  boardCleared: 'board.cleared',
  roomCreated: 'room.created',
  roomActivity: 'room.activity',
  userStatus: 'user.status',
  statsTick: 'stats.tick',
  /** Sent to one user through `sendToUser`. */
  notification: 'notification',
  conversationActivity: 'conversation.activity',
  /** Sent to one user: they were added to (or removed from) a private room. */
  roomInvited: 'room.invited',
  roomRemoved: 'room.removed',
  /** On a private room's channel: its member list changed. */
  roomMembers: 'room.members',
} as const

export interface RoomActivity {
  conversationId: number
  messageId: number
  authorId: number
}

export interface UserStatus {
  userId: number
  online: boolean
  lastSeenAt: number | null
}

// ---- whispers (client events; Echo prefixes them with `client-`) ------------------------------

export const WHISPERS = {
  typing: 'typing',
  stroke: 'stroke',
  cursor: 'cursor',
} as const

export interface TypingWhisper {
  userId: number
  name: string
  typing: boolean
}

/** A piece of a stroke in progress: `points` continue the stroke `id`. */
export interface StrokeWhisper {
  id: string
  userId: number
  color: string
  width: number
  points: number[]
  done: boolean
}

export interface CursorWhisper {
  userId: number
  name: string
  color: string
  x: number
  y: number
}
