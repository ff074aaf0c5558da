// App-wide state: who is signed in, the people directory with online status, the
// conversation list with unread counts, notifications and toasts. Fed by REST at start and
// kept current by the lobby presence channel and the user channel (sendToUser).

import { reactive } from 'vue'
import {
  EVENTS, type AppNotification, type ClientConfig, type Conversation, type MemberInfo,
  type RoomActivity, type RoomVisibility, type Session, type User, type UserStatus,
} from '../../shared/types'
import { api, configureApi } from './api'
import { clearOutbox, kick, onFailed, startOutbox } from './outbox'
import { notifyOutside, startNotifications } from './notify'
import { connect, disconnect, getEcho, onReconnect, pusherOf } from './realtime'
import { links, navigate, route } from './router'

export interface Toast {
  id: number
  kind: 'info' | 'error' | 'mention'
  title: string
  body?: string
  link?: string
}

export const app = reactive({
  ready: false,
  session: null as Session | null,
  config: null as ClientConfig | null,
  users: {} as Record<number, User>,
  /** User ids present on the lobby channel right now (live presence). */
  online: new Set<number>(),
  conversations: [] as Conversation[],
  notifications: [] as AppNotification[],
  toasts: [] as Toast[],
  /** The conversation on screen and whether its newest message is in view. */
  viewing: { conversationId: 0, atBottom: true },
})

/**
 * Layout state: the sidebar (a drawer below 1100 px, collapsible above), the members panel
 * (a drawer below 1100 px) and which pop-over is open (toasts stay out of their way).
 */
export const ui = reactive({
  sidebarOpen: false,
  /** The conversation last on screen (the phone's Chat button goes back to it). */
  lastConversationId: 0,
  sidebarCollapsed: false,
  panelOpen: false,
  trayOpen: false,
  searchOpen: false,
})

/** At most this many toasts at once; a new one pushes out the oldest. */
export const MAX_TOASTS = 3
let toastSeq = 0
const toastTimers = new Map<number, ReturnType<typeof setTimeout>>()
export function toast(t: Omit<Toast, 'id'>, ms = 5000): void {
  // The same toast again (a burst of identical errors) refreshes the one on screen.
  const same = app.toasts.find((x) => x.kind === t.kind && x.title === t.title && x.body === t.body)
  if (same) {
    clearTimeout(toastTimers.get(same.id))
    toastTimers.set(same.id, setTimeout(() => dismissToast(same.id), ms))
    return
  }
  const id = ++toastSeq
  app.toasts.push({ ...t, id })
  while (app.toasts.length > MAX_TOASTS) dismissToast(app.toasts[0]!.id)
  toastTimers.set(id, setTimeout(() => dismissToast(id), ms))
}
export function dismissToast(id: number): void {
  clearTimeout(toastTimers.get(id))
  toastTimers.delete(id)
  const i = app.toasts.findIndex((t) => t.id === id)
  if (i >= 0) app.toasts.splice(i, 1)
}
export function toastError(err: unknown): void {
  toast({ kind: 'error', title: (err as Error).message || 'Something went wrong.' }, 8000)
}

export function me(): MemberInfo {
  return app.session!.user
}

export function isOnline(userId: number): boolean {
  return app.online.has(userId)
}

export function conversation(id: number): Conversation | undefined {
  return app.conversations.find((c) => c.id === id)
}

export function rooms(): Conversation[] {
  return app.conversations.filter((c) => c.kind === 'room')
}

export function directs(): Conversation[] {
  return app.conversations.filter((c) => c.kind === 'dm')
}

function rememberUser(member: MemberInfo): void {
  if (!app.users[member.id]) app.users[member.id] = { ...member, online: true, lastSeenAt: null }
}

export async function refreshConversations(): Promise<void> {
  app.conversations = await api.conversations()
}

async function refreshDirectory(): Promise<void> {
  const [users, notifications] = await Promise.all([api.users(), api.notifications()])
  app.users = Object.fromEntries(users.map((u) => [u.id, u]))
  app.notifications = notifications
  await refreshConversations()
}

/** Marks a conversation read up to `messageId` (when that moves the marker). */
export function clearUnread(conversationId: number): void {
  const c = conversation(conversationId)
  if (c) c.unread = 0
}

function bumpUnread(activity: RoomActivity): void {
  const c = conversation(activity.conversationId)
  if (!c) {
    // A conversation new to this tab (a first direct message): the list brings its unread count.
    void refreshConversations().then(() => {
      const fresh = conversation(activity.conversationId)
      if (fresh && activity.authorId !== me().id) notifyActivity(fresh)
    }).catch(() => {})
    return
  }
  c.lastMessageId = Math.max(c.lastMessageId, activity.messageId)
  const visible = app.viewing.conversationId === c.id && app.viewing.atBottom && document.visibilityState === 'visible'
  if (activity.authorId !== me().id && !visible) {
    c.unread += 1
    notifyActivity(c)
  }
}

/** Direct messages reach a background tab as a system notification too. */
function notifyActivity(c: Conversation): void {
  if (c.kind === 'dm' && document.visibilityState !== 'visible') {
    void notifyOutside(`New message from ${c.name}`, 'Open Teamspace to read it.', links.chat(c.id), `dm-${c.id}`)
  }
}

function receiveNotification(n: AppNotification): void {
  app.notifications.unshift(n)
  const link = n.conversationId ? links.chat(n.conversationId, n.messageId ?? undefined) : undefined
  toast({ kind: 'mention', title: n.title, body: n.body, link }, 7000)
  void notifyOutside(n.title, n.body, link, `notification-${n.id}`)
}

function receiveInvite(c: Conversation | null): void {
  if (!c) return
  // A locked invite-only room already listed becomes the room itself.
  const i = app.conversations.findIndex((x) => x.id === c.id)
  if (i >= 0) app.conversations[i] = c
  else app.conversations.push(c)
}

function receiveRemoval({ conversationId }: { conversationId: number }): void {
  const gone = conversation(conversationId)
  app.conversations = app.conversations.filter((c) => c.id !== conversationId)
  const r = route.current
  if ((r.name === 'chat' || r.name === 'board') && r.id === conversationId) {
    const first = rooms()[0]
    navigate(first ? links.chat(first.id) : links.dashboard())
  }
  // An invite-only room stays listed, locked.
  if (gone?.visibility === 'invite') void refreshConversations().catch(() => {})
}

function subscribeLobby(): void {
  const echo = getEcho()
  echo.join('lobby')
    .here((members: MemberInfo[]) => {
      app.online = new Set(members.map((m) => m.id))
      members.forEach(rememberUser)
    })
    .joining((m: MemberInfo) => {
      rememberUser(m)
      app.online.add(m.id)
    })
    .leaving((m: MemberInfo) => {
      app.online.delete(m.id)
    })
    .listen(`.${EVENTS.userStatus}`, (s: UserStatus) => {
      const u = app.users[s.userId]
      if (u) Object.assign(u, { online: s.online, lastSeenAt: s.lastSeenAt })
    })
    .listen(`.${EVENTS.roomCreated}`, () => void refreshConversations())
    .listen(`.${EVENTS.roomActivity}`, bumpUnread)

  const pusher = pusherOf(echo)
  pusher.user.bind(EVENTS.notification, receiveNotification)
  pusher.user.bind(EVENTS.conversationActivity, bumpUnread)
  pusher.user.bind(EVENTS.roomInvited, receiveInvite)
  pusher.user.bind(EVENTS.roomRemoved, receiveRemoval)
}

async function startRealtime(session: Session): Promise<void> {
  const config = app.config ?? (app.config = await api.config())
  const echo = connect(config, session.csrfToken)
  configureApi({ csrfToken: session.csrfToken, socketId: () => echo.socketId() })
  subscribeLobby()
  onReconnect(() => {
    void refreshDirectory().catch(() => {})
    kick(true)
  })
}

async function enter(session: Session): Promise<void> {
  app.session = session
  configureApi({ csrfToken: session.csrfToken })
  await refreshDirectory()
  await startRealtime(session)
  startOutbox(session.user.id)
  onFailed((item, err) => {
    const where = conversation(item.conversationId)
    toast({ kind: 'error', title: `Not sent${where ? ` to ${where.kind === 'room' ? '#' : ''}${where.name}` : ''}`, body: err.message }, 8000)
  })
  startNotifications()
  if (route.current.name === 'home') {
    const first = rooms()[0]
    if (first) navigate(links.chat(first.id))
  }
}

export async function boot(): Promise<void> {
  try {
    app.config = await api.config()
    const session = await api.session().catch(() => null)
    if (session) await enter(session)
  } catch (err) {
    toastError(err)
  } finally {
    app.ready = true
  }
}

export async function signIn(name: string): Promise<void> {
  const session = await api.signIn(name)
  await enter(session)
}

export async function signOut(): Promise<void> {
  // Disconnect first: the backend closes this user's sockets, and pusher-js would otherwise
  // try to reconnect and re-authenticate with a session that no longer exists.
  disconnect()
  // Messages still queued are not sent later on someone else's behalf from this browser.
  clearOutbox()
  await api.signOut().catch(() => {})
  location.replace('/')
}

export async function openDirect(userId: number): Promise<void> {
  try {
    const c = await api.openDirect(userId)
    if (!conversation(c.id)) app.conversations.push(c)
    navigate(links.chat(c.id))
  } catch (err) {
    toastError(err)
  }
}

export async function createRoom(name: string, topic: string, visibility: RoomVisibility = 'public'): Promise<void> {
  const c = await api.createRoom(name, topic, visibility)
  if (!conversation(c.id)) app.conversations.push(c)
  navigate(links.chat(c.id))
}

export async function markNotificationsRead(): Promise<void> {
  if (!app.notifications.some((n) => !n.read)) return
  app.notifications.forEach((n) => (n.read = true))
  await api.markNotificationsRead().catch(toastError)
}
