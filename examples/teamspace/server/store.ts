//! The SQLite store: users and sessions, conversations (rooms with their members, and direct
//! messages), messages with full-text search, read receipts, uploaded files, whiteboard strokes,
//! notifications, the presence records kept from webhooks, and the follow-up markers and
//! moderation counts of the stream worker. All access is synchronous
//! (better-sqlite3); it owns no networking and triggers nothing: callers publish after a write
//! succeeds.

import Database from 'better-sqlite3'
import crypto from 'node:crypto'
import type {
  AppNotification, Attachment, Conversation, HistoryPage, MemberInfo, Message, Receipt,
  ModerationRecord, RoomVisibility, SearchHit, SearchSegment, Stroke, User,
} from '../shared/types.js'

export const DEFAULT_PAGE = 50
export const MAX_PAGE = 100

const COLORS = ['#e85d75', '#f0883e', '#d4a72c', '#3fb27f', '#2f9fd0', '#6d72e8', '#a35ee0', '#d0569e']
const DEFAULT_ROOMS: Array<[string, string]> = [
  ['general', 'Company-wide announcements and chatter'],
  ['design', 'Mock-ups, critiques and the whiteboard'],
  ['random', 'Everything else'],
]

const SCHEMA = `
CREATE TABLE IF NOT EXISTS users (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE COLLATE NOCASE,
  color TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  last_seen_at INTEGER
);
CREATE TABLE IF NOT EXISTS sessions (
  token_hash TEXT PRIMARY KEY,
  user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  csrf_token TEXT NOT NULL,
  expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS conversations (
  id INTEGER PRIMARY KEY,
  kind TEXT NOT NULL CHECK (kind IN ('room', 'dm')),
  name TEXT NOT NULL DEFAULT '',
  topic TEXT NOT NULL DEFAULT '',
  user_a INTEGER REFERENCES users(id),
  user_b INTEGER REFERENCES users(id),
  created_at INTEGER NOT NULL,
  UNIQUE (user_a, user_b)
);
CREATE UNIQUE INDEX IF NOT EXISTS rooms_by_name ON conversations(name COLLATE NOCASE) WHERE kind = 'room';
CREATE TABLE IF NOT EXISTS files (
  id TEXT PRIMARY KEY,
  conversation_id INTEGER NOT NULL REFERENCES conversations(id),
  user_id INTEGER NOT NULL REFERENCES users(id),
  name TEXT NOT NULL,
  type TEXT NOT NULL,
  size INTEGER NOT NULL,
  stored_as TEXT NOT NULL,
  created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  conversation_id INTEGER NOT NULL REFERENCES conversations(id),
  user_id INTEGER NOT NULL REFERENCES users(id),
  body TEXT NOT NULL,
  file_id TEXT REFERENCES files(id),
  client_id TEXT,
  created_at INTEGER NOT NULL,
  masked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
-- The sender's message id makes posting idempotent: a retry with the same id returns the
-- stored message instead of adding a second one.
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_client_id ON messages(user_id, client_id) WHERE client_id IS NOT NULL;
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(
  body, content='messages', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS messages_fts_insert AFTER INSERT ON messages BEGIN
  INSERT INTO messages_fts(rowid, body) VALUES (new.id, new.body);
END;
CREATE TABLE IF NOT EXISTS room_members (
  conversation_id INTEGER NOT NULL REFERENCES conversations(id),
  user_id INTEGER NOT NULL REFERENCES users(id),
  invited_by INTEGER REFERENCES users(id),
  joined_at INTEGER NOT NULL,
  PRIMARY KEY (conversation_id, user_id)
);
CREATE TABLE IF NOT EXISTS receipts (
  conversation_id INTEGER NOT NULL REFERENCES conversations(id),
  user_id INTEGER NOT NULL REFERENCES users(id),
  message_id INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  PRIMARY KEY (conversation_id, user_id)
);
CREATE TABLE IF NOT EXISTS strokes (
  id TEXT PRIMARY KEY,
  conversation_id INTEGER NOT NULL REFERENCES conversations(id),
  user_id INTEGER NOT NULL REFERENCES users(id),
  color TEXT NOT NULL,
  width REAL NOT NULL,
  points TEXT NOT NULL,
  created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS strokes_by_board ON strokes(conversation_id, created_at);
CREATE TABLE IF NOT EXISTS notifications (
  id INTEGER PRIMARY KEY,
  user_id INTEGER NOT NULL REFERENCES users(id),
  kind TEXT NOT NULL,
  title TEXT NOT NULL,
  body TEXT NOT NULL,
  conversation_id INTEGER,
  message_id INTEGER,
  created_at INTEGER NOT NULL,
  read_at INTEGER
);
CREATE INDEX IF NOT EXISTS notifications_by_user ON notifications(user_id, id);
-- Messages whose follow-up work (mention notifications, moderation counts) is done: the key
-- that makes a re-delivered stream entry a no-op.
CREATE TABLE IF NOT EXISTS message_followups (
  message_id INTEGER PRIMARY KEY,
  handled_at INTEGER NOT NULL
);
-- Per author: messages the word filter changed, and when they were flagged as a repeat offender.
CREATE TABLE IF NOT EXISTS moderation (
  user_id INTEGER PRIMARY KEY REFERENCES users(id),
  filtered_messages INTEGER NOT NULL DEFAULT 0,
  masked_words INTEGER NOT NULL DEFAULT 0,
  flagged_at INTEGER
);
CREATE TABLE IF NOT EXISTS presence (
  channel TEXT NOT NULL,
  user_id INTEGER NOT NULL,
  since INTEGER NOT NULL,
  PRIMARY KEY (channel, user_id)
);
`

interface UserRow { id: number; name: string; color: string; last_seen_at: number | null; created_at: number }
interface ConversationRow {
  id: number; kind: 'room' | 'dm'; name: string; topic: string; visibility: RoomVisibility
  user_a: number | null; user_b: number | null
}

/** Who may read a conversation, as one SQL condition on `c` for the user `@user`. */
const READABLE = `(
  (c.kind = 'room' AND (c.visibility = 'public'
    OR EXISTS (SELECT 1 FROM room_members rm WHERE rm.conversation_id = c.id AND rm.user_id = @user)))
  OR c.user_a = @user OR c.user_b = @user)`
interface MessageRow {
  id: number; conversation_id: number; user_id: number; body: string; client_id: string | null
  created_at: number; author_name: string; author_color: string
  file_id: string | null; file_name: string | null; file_type: string | null; file_size: number | null
}
export interface FileRecord {
  id: string; conversationId: number; userId: number; name: string; type: string; size: number; storedAs: string
}

export function channelFor(kind: 'room' | 'dm', id: number): string {
  return kind === 'room' ? `presence-room.${id}` : `private-dm.${id}`
}

export function boardChannelFor(roomId: number): string {
  return `private-board.${roomId}`
}

function hashToken(token: string): string {
  return crypto.createHash('sha256').update(token).digest('hex')
}

/** Turns free text into an FTS5 query of prefix terms; null when there is nothing to search. */
export function ftsQuery(text: string): string | null {
  const terms = (text.normalize('NFC').match(/[\p{L}\p{N}_]+/gu) ?? []).slice(0, 8)
  return terms.length ? terms.map((t) => `"${t}"*`).join(' ') : null
}

const HIT_START = '\u0001'
const HIT_END = '\u0002'

function snippetSegments(snippet: string): SearchSegment[] {
  const segments: SearchSegment[] = []
  for (const part of snippet.split(HIT_START)) {
    const [inside, after] = part.includes(HIT_END) ? part.split(HIT_END, 2) : [null, part]
    if (inside) segments.push({ text: inside, hit: true })
    if (after) segments.push({ text: after, hit: false })
  }
  return segments
}

export class Store {
  readonly db: Database.Database
  private readonly now: () => number

  constructor(file: string, now: () => number = Date.now) {
    this.db = new Database(file)
    this.now = now
    this.db.pragma('journal_mode = WAL')
    this.db.pragma('foreign_keys = ON')
    this.db.pragma('busy_timeout = 2000')
    this.db.exec(SCHEMA)
    this.migrate()
    this.seedRooms()
  }

  close(): void {
    this.db.close()
  }

  /** Columns added after the first release, for databases created before them. */
  private migrate(): void {
    const has = (table: string, column: string) =>
      (this.db.prepare(`PRAGMA table_info(${table})`).all() as Array<{ name: string }>).some((c) => c.name === column)
    if (!has('conversations', 'visibility')) {
      this.db.exec(`ALTER TABLE conversations ADD COLUMN visibility TEXT NOT NULL DEFAULT 'public'`)
    }
    // Cleared strokes stay (marked) so the all-time count does not drop when a board is cleared.
    if (!has('strokes', 'cleared_at')) this.db.exec(`ALTER TABLE strokes ADD COLUMN cleared_at INTEGER`)
    // How many words the filter masked in a message, for the moderation counts.
    if (!has('messages', 'masked')) this.db.exec(`ALTER TABLE messages ADD COLUMN masked INTEGER NOT NULL DEFAULT 0`)
  }

  private seedRooms(): void {
    const count = this.db.prepare(`SELECT COUNT(*) AS n FROM conversations WHERE kind = 'room'`).get() as { n: number }
    if (count.n > 0) return
    const insert = this.db.prepare(`INSERT INTO conversations (kind, name, topic, created_at) VALUES ('room', ?, ?, ?)`)
    for (const [name, topic] of DEFAULT_ROOMS) insert.run(name, topic, this.now())
  }

  // ---- users and sessions ---------------------------------------------------------------------

  private toMember(row: UserRow): MemberInfo {
    return { id: row.id, name: row.name, color: row.color }
  }

  /** Signs a name in: the first sign-in creates the user, later ones reuse it. */
  findOrCreateUser(name: string): MemberInfo {
    const existing = this.db.prepare(`SELECT * FROM users WHERE name = ?`).get(name) as UserRow | undefined
    if (existing) return this.toMember(existing)
    const color = COLORS[crypto.createHash('md5').update(name.toLowerCase()).digest()[0]! % COLORS.length]!
    const create = this.db.transaction(() => {
      const info = this.db.prepare(`INSERT INTO users (name, color, created_at) VALUES (?, ?, ?)`).run(name, color, this.now())
      const id = Number(info.lastInsertRowid)
      // Someone new starts with the public rooms read: their past is not this person's backlog.
      this.db.prepare(`
        INSERT INTO receipts (conversation_id, user_id, message_id, updated_at)
        SELECT c.id, ?, MAX(m.id), ? FROM conversations c JOIN messages m ON m.conversation_id = c.id
        WHERE c.kind = 'room' AND c.visibility = 'public' GROUP BY c.id`).run(id, this.now())
      return id
    })
    return { id: create(), name, color }
  }

  getMember(id: number): MemberInfo | null {
    const row = this.db.prepare(`SELECT * FROM users WHERE id = ?`).get(id) as UserRow | undefined
    return row ? this.toMember(row) : null
  }

  /** When the user first signed in (ms), or null for an unknown id. */
  userCreatedAt(id: number): number | null {
    const row = this.db.prepare(`SELECT created_at FROM users WHERE id = ?`).get(id) as { created_at: number } | undefined
    return row?.created_at ?? null
  }

  findUserByName(name: string): MemberInfo | null {
    const row = this.db.prepare(`SELECT * FROM users WHERE name = ?`).get(name) as UserRow | undefined
    return row ? this.toMember(row) : null
  }

  listUsers(): User[] {
    const rows = this.db.prepare(`
      SELECT u.*, EXISTS (SELECT 1 FROM presence p WHERE p.user_id = u.id) AS online
      FROM users u ORDER BY u.name COLLATE NOCASE`).all() as Array<UserRow & { online: number }>
    return rows.map((r) => ({ ...this.toMember(r), online: r.online === 1, lastSeenAt: r.last_seen_at }))
  }

  createSession(userId: number, hours: number): { token: string; csrfToken: string } {
    const token = crypto.randomBytes(32).toString('base64url')
    const csrfToken = crypto.randomBytes(24).toString('base64url')
    this.db.prepare(`DELETE FROM sessions WHERE expires_at < ?`).run(this.now())
    this.db.prepare(`INSERT INTO sessions (token_hash, user_id, csrf_token, expires_at) VALUES (?, ?, ?, ?)`)
      .run(hashToken(token), userId, csrfToken, this.now() + hours * 3600_000)
    return { token, csrfToken }
  }

  /** The session's user, or null for an unknown or expired token. Only a hash of the token is stored. */
  getSession(token: string): { user: MemberInfo; csrfToken: string } | null {
    const row = this.db.prepare(`
      SELECT u.*, s.csrf_token FROM sessions s JOIN users u ON u.id = s.user_id
      WHERE s.token_hash = ? AND s.expires_at > ?`).get(hashToken(token), this.now()) as (UserRow & { csrf_token: string }) | undefined
    return row ? { user: this.toMember(row), csrfToken: row.csrf_token } : null
  }

  deleteSession(token: string): void {
    this.db.prepare(`DELETE FROM sessions WHERE token_hash = ?`).run(hashToken(token))
  }

  // ---- conversations --------------------------------------------------------------------------

  getConversationRow(id: number): ConversationRow | null {
    return (this.db.prepare(`SELECT * FROM conversations WHERE id = ?`).get(id) as ConversationRow | undefined) ?? null
  }

  /**
   * Public rooms are open to every signed-in user; private and invite-only rooms only to their
   * members; a direct message only to its two participants.
   */
  canAccess(userId: number, conversationId: number): boolean {
    const row = this.getConversationRow(conversationId)
    if (!row) return false
    if (row.kind === 'room') return row.visibility === 'public' || this.isMember(conversationId, userId)
    return row.user_a === userId || row.user_b === userId
  }

  /** Everyone who may read a conversation: null means every user (a public room). */
  participants(conversationId: number): number[] | null {
    const row = this.getConversationRow(conversationId)
    if (!row) return []
    if (row.kind === 'room') return row.visibility === 'public' ? null : this.roomMembers(conversationId).map((m) => m.id)
    return [row.user_a!, row.user_b!]
  }

  // ---- private rooms: membership --------------------------------------------------------------

  isMember(conversationId: number, userId: number): boolean {
    return this.db.prepare(`SELECT 1 FROM room_members WHERE conversation_id = ? AND user_id = ?`).get(conversationId, userId) !== undefined
  }

  /** Adds a member (read up to the newest message); false when already one. */
  addMember(conversationId: number, userId: number, invitedBy: number | null): boolean {
    const add = this.db.transaction(() => {
      const info = this.db.prepare(`INSERT OR IGNORE INTO room_members (conversation_id, user_id, invited_by, joined_at) VALUES (?, ?, ?, ?)`)
        .run(conversationId, userId, invitedBy, this.now())
      if (info.changes === 0) return false
      const last = this.db.prepare(`SELECT MAX(id) AS id FROM messages WHERE conversation_id = ?`).get(conversationId) as { id: number | null }
      if (last.id) this.markRead(conversationId, userId, last.id)
      return true
    })
    return add()
  }

  /** Removes a member; false when the user was not one. */
  removeMember(conversationId: number, userId: number): boolean {
    return this.db.prepare(`DELETE FROM room_members WHERE conversation_id = ? AND user_id = ?`).run(conversationId, userId).changes > 0
  }

  roomMembers(conversationId: number): MemberInfo[] {
    const rows = this.db.prepare(`
      SELECT u.* FROM room_members rm JOIN users u ON u.id = rm.user_id
      WHERE rm.conversation_id = ? ORDER BY u.name COLLATE NOCASE`).all(conversationId) as UserRow[]
    return rows.map((r) => this.toMember(r))
  }

  conversationFor(userId: number, id: number): Conversation | null {
    if (!this.canAccess(userId, id)) return null
    return this.listConversations(userId).find((c) => c.id === id) ?? null
  }

  listConversations(userId: number): Conversation[] {
    const rows = this.db.prepare(`
      SELECT c.*,
        COALESCE((SELECT MAX(id) FROM messages m WHERE m.conversation_id = c.id), 0) AS last_message_id,
        (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id AND m.user_id != @user
           AND m.id > COALESCE((SELECT message_id FROM receipts r WHERE r.conversation_id = c.id AND r.user_id = @user), 0)) AS unread
        , ${READABLE} AS joined
      FROM conversations c
      WHERE ${READABLE} OR (c.kind = 'room' AND c.visibility = 'invite')
      ORDER BY c.kind DESC, c.id`).all({ user: userId }) as Array<ConversationRow & { last_message_id: number; unread: number; joined: number }>
    return rows.map((r) => {
      // A locked invite-only room shows its name and topic, nothing of its activity.
      const joined = r.joined === 1
      const base = {
        id: r.id, kind: r.kind, topic: r.topic, channel: channelFor(r.kind, r.id),
        lastMessageId: joined ? r.last_message_id : 0, unread: joined ? r.unread : 0,
        visibility: r.kind === 'room' ? r.visibility : 'private' as const, joined,
      }
      if (r.kind === 'room') return { ...base, name: r.name }
      const peer = this.getMember(r.user_a === userId ? r.user_b! : r.user_a!)!
      return { ...base, name: peer.name, peer }
    })
  }

  /** A new room; a private or invite-only one starts with its creator as the only member. */
  createRoom(name: string, topic: string, visibility: RoomVisibility = 'public', creatorId: number | null = null): number {
    const create = this.db.transaction(() => {
      const info = this.db.prepare(`INSERT INTO conversations (kind, name, topic, visibility, created_at) VALUES ('room', ?, ?, ?, ?)`)
        .run(name, topic, visibility, this.now())
      const id = Number(info.lastInsertRowid)
      if (visibility !== 'public' && creatorId !== null) this.addMember(id, creatorId, null)
      return id
    })
    return create()
  }

  roomExists(name: string): boolean {
    return this.db.prepare(`SELECT 1 FROM conversations WHERE kind = 'room' AND name = ? COLLATE NOCASE`).get(name) !== undefined
  }

  /** The direct-message conversation of two users, created on first use. */
  directConversation(userId: number, otherId: number): number {
    const [a, b] = userId < otherId ? [userId, otherId] : [otherId, userId]
    this.db.prepare(`INSERT OR IGNORE INTO conversations (kind, user_a, user_b, created_at) VALUES ('dm', ?, ?, ?)`)
      .run(a, b, this.now())
    const row = this.db.prepare(`SELECT id FROM conversations WHERE kind = 'dm' AND user_a = ? AND user_b = ?`).get(a, b) as { id: number }
    return row.id
  }

  // ---- messages -------------------------------------------------------------------------------

  private toMessage(row: MessageRow): Message {
    const attachment: Attachment | null = row.file_id
      ? { id: row.file_id, name: row.file_name!, type: row.file_type!, size: row.file_size!, url: `/files/${row.file_id}` }
      : null
    return {
      id: row.id, conversationId: row.conversation_id, body: row.body, createdAt: row.created_at,
      author: { id: row.user_id, name: row.author_name, color: row.author_color },
      attachment, clientId: row.client_id,
    }
  }

  private static readonly MESSAGE_SELECT = `
    SELECT m.*, u.name AS author_name, u.color AS author_color,
           f.name AS file_name, f.type AS file_type, f.size AS file_size
    FROM messages m JOIN users u ON u.id = m.user_id LEFT JOIN files f ON f.id = m.file_id`

  /** The message this user already stored under this client id (a retried send), if any. */
  messageByClientId(userId: number, clientId: string): Message | null {
    const row = this.db.prepare(`${Store.MESSAGE_SELECT} WHERE m.user_id = ? AND m.client_id = ?`).get(userId, clientId) as MessageRow | undefined
    return row ? this.toMessage(row) : null
  }

  addMessage(input: { conversationId: number; userId: number; body: string; fileId?: string | null; clientId?: string | null; masked?: number }): Message {
    const info = this.db.prepare(`
      INSERT INTO messages (conversation_id, user_id, body, file_id, client_id, created_at, masked) VALUES (?, ?, ?, ?, ?, ?, ?)`)
      .run(input.conversationId, input.userId, input.body, input.fileId ?? null, input.clientId ?? null, this.now(), input.masked ?? 0)
    return this.getMessage(Number(info.lastInsertRowid))!
  }

  /** How many words the filter masked in a stored message (0 when unknown). */
  maskedWords(messageId: number): number {
    const row = this.db.prepare(`SELECT masked FROM messages WHERE id = ?`).get(messageId) as { masked: number } | undefined
    return row?.masked ?? 0
  }

  /**
   * Runs `work` for a message's follow-ups once and returns what it returned; null when they
   * were done before (a re-delivered stream entry). The marker and what `work` writes commit
   * together, or neither does.
   */
  followUpOnce<T>(messageId: number, work: () => T): T | null {
    return this.db.transaction((): T | null => {
      const info = this.db.prepare(`INSERT OR IGNORE INTO message_followups (message_id, handled_at) VALUES (?, ?)`).run(messageId, this.now())
      return info.changes === 0 ? null : work()
    })()
  }

  /**
   * Counts a filtered message against its author; returns the record, with `newlyFlagged`
   * when this message made them a repeat offender (`flagAfter` filtered messages).
   */
  recordFiltered(userId: number, maskedWords: number, flagAfter: number): { filteredMessages: number; newlyFlagged: boolean } {
    this.db.prepare(`
      INSERT INTO moderation (user_id, filtered_messages, masked_words) VALUES (?, 1, ?)
      ON CONFLICT(user_id) DO UPDATE SET filtered_messages = filtered_messages + 1, masked_words = masked_words + excluded.masked_words`)
      .run(userId, maskedWords)
    const row = this.db.prepare(`SELECT filtered_messages, flagged_at FROM moderation WHERE user_id = ?`).get(userId) as { filtered_messages: number; flagged_at: number | null }
    const newlyFlagged = row.flagged_at === null && row.filtered_messages >= flagAfter
    if (newlyFlagged) this.db.prepare(`UPDATE moderation SET flagged_at = ? WHERE user_id = ?`).run(this.now(), userId)
    return { filteredMessages: row.filtered_messages, newlyFlagged }
  }

  /** Authors with filtered messages, most first. */
  moderation(limit = 10): ModerationRecord[] {
    const rows = this.db.prepare(`
      SELECT m.user_id, u.name, m.filtered_messages, m.masked_words, m.flagged_at FROM moderation m JOIN users u ON u.id = m.user_id
      ORDER BY m.filtered_messages DESC, m.user_id LIMIT ?`).all(limit) as Array<{
      user_id: number; name: string; filtered_messages: number; masked_words: number; flagged_at: number | null
    }>
    return rows.map((r) => ({ userId: r.user_id, name: r.name, filteredMessages: r.filtered_messages, maskedWords: r.masked_words, flagged: r.flagged_at !== null }))
  }

  getMessage(id: number): Message | null {
    const row = this.db.prepare(`${Store.MESSAGE_SELECT} WHERE m.id = ?`).get(id) as MessageRow | undefined
    return row ? this.toMessage(row) : null
  }

  /**
   * One page of a conversation, oldest first. Keyset paging on the message id: `before` pages
   * back from a message (the newest page when absent), `after` pages forward from one (to catch
   * up after a reconnection). `hasMore` says whether another page exists in that direction.
   */
  history(conversationId: number, opts: { before?: number; after?: number; limit?: number } = {}): HistoryPage {
    const limit = Math.min(Math.max(1, Math.floor(opts.limit ?? DEFAULT_PAGE)), MAX_PAGE)
    if (opts.after !== undefined) {
      const rows = this.db.prepare(`${Store.MESSAGE_SELECT} WHERE m.conversation_id = ? AND m.id > ? ORDER BY m.id ASC LIMIT ?`)
        .all(conversationId, opts.after, limit + 1) as MessageRow[]
      return { messages: rows.slice(0, limit).map((r) => this.toMessage(r)), hasMore: rows.length > limit }
    }
    const before = opts.before ?? Number.MAX_SAFE_INTEGER
    const rows = this.db.prepare(`${Store.MESSAGE_SELECT} WHERE m.conversation_id = ? AND m.id < ? ORDER BY m.id DESC LIMIT ?`)
      .all(conversationId, before, limit + 1) as MessageRow[]
    return { messages: rows.slice(0, limit).reverse().map((r) => this.toMessage(r)), hasMore: rows.length > limit }
  }

  /** Full-text search over the conversations the user may read, newest first. */
  search(userId: number, text: string, limit = 30): SearchHit[] {
    const query = ftsQuery(text)
    if (!query) return []
    const rows = this.db.prepare(`
      SELECT m.id AS message_id, snippet(messages_fts, 0, char(1), char(2), '…', 16) AS snippet
      FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid
      JOIN conversations c ON c.id = m.conversation_id
      WHERE messages_fts MATCH @query AND ${READABLE}
      ORDER BY m.id DESC LIMIT @limit`).all({ query, user: userId, limit }) as Array<{ message_id: number; snippet: string }>
    const names = new Map(this.listConversations(userId).map((c) => [c.id, c]))
    return rows.map((r) => {
      const message = this.getMessage(r.message_id)!
      const conversation = names.get(message.conversationId)!
      return {
        message,
        conversation: { id: conversation.id, kind: conversation.kind, name: conversation.name },
        snippet: snippetSegments(r.snippet),
      }
    })
  }

  messageCount(): number {
    return (this.db.prepare(`SELECT COUNT(*) AS n FROM messages`).get() as { n: number }).n
  }

  // ---- read receipts --------------------------------------------------------------------------

  /** Moves a user's read marker forward; returns false when it would not advance. */
  markRead(conversationId: number, userId: number, messageId: number): boolean {
    const info = this.db.prepare(`
      INSERT INTO receipts (conversation_id, user_id, message_id, updated_at) VALUES (?, ?, ?, ?)
      ON CONFLICT (conversation_id, user_id) DO UPDATE SET message_id = excluded.message_id, updated_at = excluded.updated_at
      WHERE excluded.message_id > receipts.message_id`).run(conversationId, userId, messageId, this.now())
    return info.changes > 0
  }

  receipts(conversationId: number): Receipt[] {
    const rows = this.db.prepare(`
      SELECT r.message_id, u.* FROM receipts r JOIN users u ON u.id = r.user_id WHERE r.conversation_id = ?`)
      .all(conversationId) as Array<UserRow & { message_id: number }>
    return rows.map((r) => ({ conversationId, user: this.toMember(r), messageId: r.message_id }))
  }

  // ---- files ----------------------------------------------------------------------------------

  addFile(file: FileRecord): void {
    this.db.prepare(`
      INSERT INTO files (id, conversation_id, user_id, name, type, size, stored_as, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`)
      .run(file.id, file.conversationId, file.userId, file.name, file.type, file.size, file.storedAs, this.now())
  }

  getFile(id: string): FileRecord | null {
    const row = this.db.prepare(`SELECT * FROM files WHERE id = ?`).get(id) as
      | { id: string; conversation_id: number; user_id: number; name: string; type: string; size: number; stored_as: string }
      | undefined
    return row
      ? { id: row.id, conversationId: row.conversation_id, userId: row.user_id, name: row.name, type: row.type, size: row.size, storedAs: row.stored_as }
      : null
  }

  fileCount(): number {
    return (this.db.prepare(`SELECT COUNT(*) AS n FROM files`).get() as { n: number }).n
  }

  // ---- whiteboard -----------------------------------------------------------------------------

  /** Stores a finished stroke; a stroke id already stored is ignored (returns false). */
  addStroke(conversationId: number, stroke: Stroke): boolean {
    const info = this.db.prepare(`
      INSERT OR IGNORE INTO strokes (id, conversation_id, user_id, color, width, points, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)`)
      .run(stroke.id, conversationId, stroke.userId, stroke.color, stroke.width, JSON.stringify(stroke.points), this.now())
    return info.changes > 0
  }

  strokes(conversationId: number): Stroke[] {
    const rows = this.db.prepare(`SELECT * FROM strokes WHERE conversation_id = ? AND cleared_at IS NULL ORDER BY created_at, rowid`).all(conversationId) as
      Array<{ id: string; user_id: number; color: string; width: number; points: string }>
    return rows.map((r) => ({ id: r.id, userId: r.user_id, color: r.color, width: r.width, points: JSON.parse(r.points) as number[] }))
  }

  clearStrokes(conversationId: number): void {
    this.db.prepare(`UPDATE strokes SET cleared_at = ? WHERE conversation_id = ? AND cleared_at IS NULL`).run(this.now(), conversationId)
  }

  /** Every stroke ever saved, cleared ones included (the dashboard's all-time figure). */
  strokeCount(): number {
    return (this.db.prepare(`SELECT COUNT(*) AS n FROM strokes`).get() as { n: number }).n
  }

  // ---- notifications --------------------------------------------------------------------------

  addNotification(userId: number, n: Omit<AppNotification, 'id' | 'createdAt' | 'read'>): AppNotification {
    const createdAt = this.now()
    const info = this.db.prepare(`
      INSERT INTO notifications (user_id, kind, title, body, conversation_id, message_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)`)
      .run(userId, n.kind, n.title, n.body, n.conversationId, n.messageId, createdAt)
    return { ...n, id: Number(info.lastInsertRowid), createdAt, read: false }
  }

  notifications(userId: number, limit = 50): AppNotification[] {
    const rows = this.db.prepare(`SELECT * FROM notifications WHERE user_id = ? ORDER BY id DESC LIMIT ?`).all(userId, limit) as Array<{
      id: number; kind: AppNotification['kind']; title: string; body: string; conversation_id: number | null; message_id: number | null
      created_at: number; read_at: number | null
    }>
    return rows.map((r) => ({
      id: r.id, kind: r.kind, title: r.title, body: r.body, conversationId: r.conversation_id,
      messageId: r.message_id, createdAt: r.created_at, read: r.read_at !== null,
    }))
  }

  markNotificationsRead(userId: number): void {
    this.db.prepare(`UPDATE notifications SET read_at = ? WHERE user_id = ? AND read_at IS NULL`).run(this.now(), userId)
  }

  // ---- presence (from webhooks) ---------------------------------------------------------------

  private isOnline(userId: number): boolean {
    return this.db.prepare(`SELECT 1 FROM presence WHERE user_id = ?`).get(userId) !== undefined
  }

  /** Records a member joining a presence channel; true when the user was offline until now. */
  memberAdded(channel: string, userId: number): boolean {
    const wasOnline = this.isOnline(userId)
    this.db.prepare(`INSERT OR IGNORE INTO presence (channel, user_id, since) VALUES (?, ?, ?)`).run(channel, userId, this.now())
    return !wasOnline
  }

  /** Records a member leaving; true when that was the user's last presence channel. */
  memberRemoved(channel: string, userId: number): boolean {
    const info = this.db.prepare(`DELETE FROM presence WHERE channel = ? AND user_id = ?`).run(channel, userId)
    if (info.changes === 0 || this.isOnline(userId)) return false
    this.db.prepare(`UPDATE users SET last_seen_at = ? WHERE id = ?`).run(this.now(), userId)
    return true
  }

  /** Replaces all presence records (used at start-up, from the server's own member lists). */
  replacePresence(members: Array<{ channel: string; userId: number }>): void {
    const tx = this.db.transaction(() => {
      this.db.prepare(`DELETE FROM presence`).run()
      const insert = this.db.prepare(`INSERT OR IGNORE INTO presence (channel, user_id, since) VALUES (?, ?, ?)`)
      for (const m of members) insert.run(m.channel, m.userId, this.now())
    })
    tx()
  }

  userStatus(userId: number): { online: boolean; lastSeenAt: number | null } {
    const row = this.db.prepare(`SELECT last_seen_at FROM users WHERE id = ?`).get(userId) as { last_seen_at: number | null } | undefined
    return { online: this.isOnline(userId), lastSeenAt: row?.last_seen_at ?? null }
  }

  onlineCount(): number {
    return (this.db.prepare(`SELECT COUNT(DISTINCT user_id) AS n FROM presence`).get() as { n: number }).n
  }

  userCount(): number {
    return (this.db.prepare(`SELECT COUNT(*) AS n FROM users`).get() as { n: number }).n
  }
}
