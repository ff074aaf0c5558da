// The backend's REST API. Every mutating call carries the CSRF token (as Laravel expects) and
// the socket id of this tab's connection as X-Socket-ID, so the backend can leave this tab out
// of the broadcast (`toOthers`): the tab shows the copy the response returns instead.

import type {
  AppNotification, ClientConfig, Conversation, DashboardSnapshot, HistoryPage, Message, Receipt,
  SearchHit, Session, Stroke, User,
} from '../../shared/types'

export class ApiError extends Error {
  constructor(readonly status: number, message: string) {
    super(message)
  }
}

let csrfToken = ''
let socketId: () => string | undefined = () => undefined

export function configureApi(opts: { csrfToken?: string; socketId?: () => string | undefined }): void {
  if (opts.csrfToken !== undefined) csrfToken = opts.csrfToken
  if (opts.socketId) socketId = opts.socketId
}

async function request<T>(method: string, url: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
  const h: Record<string, string> = { Accept: 'application/json', ...headers }
  if (method !== 'GET') {
    h['X-CSRF-TOKEN'] = csrfToken
    const id = socketId()
    if (id) h['X-Socket-ID'] = id
  }
  let payload: BodyInit | undefined
  if (body instanceof Blob) payload = body
  else if (body !== undefined) {
    h['Content-Type'] = 'application/json'
    payload = JSON.stringify(body)
  }
  let res: Response
  try {
    res = await fetch(url, { method, headers: h, body: payload, credentials: 'same-origin' })
  } catch {
    throw new ApiError(0, 'The server cannot be reached. Check your connection.')
  }
  if (res.status === 204) return undefined as T
  const data = await res.json().catch(() => ({}))
  if (!res.ok) throw new ApiError(res.status, (data as { error?: string }).error ?? `Request failed (${res.status}).`)
  return data as T
}

const q = (params: Record<string, number | string | undefined>) => {
  const search = new URLSearchParams()
  for (const [k, v] of Object.entries(params)) if (v !== undefined) search.set(k, String(v))
  const s = search.toString()
  return s ? `?${s}` : ''
}

export const api = {
  config: () => request<ClientConfig>('GET', '/api/config'),
  session: () => request<Session>('GET', '/api/session'),
  signIn: (name: string) => request<Session>('POST', '/api/session', { name }),
  signOut: () => request<void>('DELETE', '/api/session'),

  users: () => request<User[]>('GET', '/api/users'),
  conversations: () => request<Conversation[]>('GET', '/api/conversations'),
  conversation: (id: number) => request<Conversation>('GET', `/api/conversations/${id}`),
  createRoom: (name: string, topic: string) => request<Conversation>('POST', '/api/rooms', { name, topic }),
  openDirect: (userId: number) => request<Conversation>('POST', '/api/dms', { userId }),

  history: (id: number, page: { before?: number; after?: number; limit?: number } = {}) =>
    request<HistoryPage>('GET', `/api/conversations/${id}/messages${q(page)}`),
  send: (id: number, body: string, clientId: string) =>
    request<Message>('POST', `/api/conversations/${id}/messages`, { body, clientId }),
  upload: (id: number, file: File, clientId: string, caption = '') =>
    request<Message>('POST', `/api/conversations/${id}/files`, file, {
      'Content-Type': file.type || 'application/octet-stream',
      'X-Filename': encodeURIComponent(file.name),
      'X-Client-Id': clientId,
      'X-Caption': encodeURIComponent(caption),
    }),
  receipts: (id: number) => request<Receipt[]>('GET', `/api/conversations/${id}/receipts`),
  markRead: (id: number, messageId: number) => request<{ updated: boolean }>('POST', `/api/conversations/${id}/read`, { messageId }),
  search: (text: string) => request<SearchHit[]>('GET', `/api/search${q({ q: text })}`),

  strokes: (roomId: number) => request<Stroke[]>('GET', `/api/boards/${roomId}/strokes`),
  saveStroke: (roomId: number, stroke: Stroke) => request<Stroke>('POST', `/api/boards/${roomId}/strokes`, stroke),
  clearBoard: (roomId: number) => request<void>('DELETE', `/api/boards/${roomId}/strokes`),

  notifications: () => request<AppNotification[]>('GET', '/api/notifications'),
  markNotificationsRead: () => request<void>('POST', '/api/notifications/read'),
  dashboard: () => request<DashboardSnapshot>('GET', '/api/dashboard'),
}
