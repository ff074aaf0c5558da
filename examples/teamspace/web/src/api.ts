// The backend's REST API. Every mutating call carries the CSRF token (as Laravel expects) and
// the socket id of this tab's connection as X-Socket-ID, so the backend can leave this tab out
// of the broadcast (`toOthers`): the tab shows the copy the response returns instead.

import type {
  AppNotification, ClientConfig, Conversation, DashboardSnapshot, HistoryPage, Message, Receipt,
  RoomMembers, RoomVisibility, SearchHit, Session, Stroke, User,
} from '../../shared/types'

export class ApiError extends Error {
  /** `status` 0: the request never got an answer (offline, connection reset). */
  constructor(readonly status: number, message: string, readonly reason?: string, readonly retryAfterMs?: number) {
    super(message)
  }
}

function errorOf(status: number, data: unknown): ApiError {
  const d = data as { error?: string; reason?: string; retryAfterMs?: number }
  return new ApiError(status, d.error ?? `Request failed (${status}).`, d.reason, d.retryAfterMs)
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
  if (!res.ok) throw errorOf(res.status, data)
  return data as T
}

/** An upload with progress (fetch cannot report it): XMLHttpRequest, same headers as request(). */
function uploadWithProgress(url: string, file: File, headers: Record<string, string>, onProgress: (fraction: number) => void): Promise<Message> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest()
    xhr.open('POST', url)
    xhr.setRequestHeader('Accept', 'application/json')
    xhr.setRequestHeader('X-CSRF-TOKEN', csrfToken)
    const id = socketId()
    if (id) xhr.setRequestHeader('X-Socket-ID', id)
    for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v)
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable && e.total > 0) onProgress(e.loaded / e.total)
    }
    xhr.onerror = () => reject(new ApiError(0, 'The upload was interrupted. Check your connection.'))
    xhr.onload = () => {
      let data: unknown = {}
      try {
        data = JSON.parse(xhr.responseText || '{}')
      } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data as Message)
      else reject(errorOf(xhr.status, data))
    }
    xhr.send(file)
  })
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
  createRoom: (name: string, topic: string, visibility: RoomVisibility = 'public') =>
    request<Conversation>('POST', '/api/rooms', { name, topic, visibility }),
  openDirect: (userId: number) => request<Conversation>('POST', '/api/dms', { userId }),

  history: (id: number, page: { before?: number; after?: number; limit?: number } = {}) =>
    request<HistoryPage>('GET', `/api/conversations/${id}/messages${q(page)}`),
  send: (id: number, body: string, clientId: string) =>
    request<Message>('POST', `/api/conversations/${id}/messages`, { body, clientId }),
  upload: (id: number, file: File, clientId: string, onProgress: (fraction: number) => void = () => {}, caption = '') =>
    uploadWithProgress(`/api/conversations/${id}/files`, file, {
      'Content-Type': file.type || 'application/octet-stream',
      'X-Filename': encodeURIComponent(file.name),
      'X-Client-Id': clientId,
      'X-Caption': encodeURIComponent(caption),
    }, onProgress),
  roomMembers: (id: number) => request<RoomMembers>('GET', `/api/rooms/${id}/members`),
  invite: (id: number, userId: number) => request<RoomMembers>('POST', `/api/rooms/${id}/members`, { userId }),
  removeMember: (id: number, userId: number) => request<void>('DELETE', `/api/rooms/${id}/members/${userId}`),
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
