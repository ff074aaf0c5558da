//! The HTTP surface: sign-in, Laravel-style broadcasting auth endpoints, the REST API the
//! frontend uses, the webhook receiver, uploaded files and the built frontend. Handlers only
//! translate HTTP to the Store / Chat calls and back; rules live in those modules.

import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import express, { type NextFunction, type Request, type Response } from 'express'
import type Pusher from 'pusher'
import type { ClientConfig, Conversation, MemberInfo, Session } from '../shared/types.js'
import { ChannelAuthorizer, isSocketId } from './channels.js'
import { PostRefused, type Chat, type Logger } from './chat.js'
import type { Config } from './config.js'
import type { Dashboard } from './dashboard.js'
import type { Store } from './store.js'
import { checkUpload, ALLOWED_TYPES, type FileStorage } from './uploads.js'
import { checkClientId, checkMessageBody, checkName, checkRoomName, checkStroke, checkTopic } from './validation.js'
import type { WebhookReceiver } from './webhooks.js'

export const SESSION_COOKIE = 'teamspace_session'

export interface Deps {
  config: Config
  store: Store
  pusher: Pusher
  chat: Chat
  dashboard: Dashboard
  webhooks: WebhookReceiver
  files: FileStorage
  log: Logger
}

interface Authed {
  user: MemberInfo
  csrfToken: string
  token: string
}

class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message)
  }
}

function readCookie(req: Request, name: string): string | null {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const [k, ...v] = part.trim().split('=')
    if (k === name) return decodeURIComponent(v.join('='))
  }
  return null
}

function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a), y = Buffer.from(b)
  return x.length === y.length && crypto.timingSafeEqual(x, y)
}

function intParam(value: unknown): number | null {
  if (typeof value !== 'string' || !/^\d{1,12}$/.test(value)) return null
  return Number(value)
}

/** `X-Socket-ID`, as Echo's interceptors (and our fetch wrapper) send it, for `toOthers`. */
function socketIdOf(req: Request): string | undefined {
  const value = req.header('x-socket-id')
  return isSocketId(value) ? value : undefined
}

export function createApp(deps: Deps): express.Express {
  const { config, store, pusher, chat, dashboard, webhooks, files, log } = deps
  const authorizer = new ChannelAuthorizer(store, pusher)
  const app = express()
  app.disable('x-powered-by')
  app.set('trust proxy', false)

  const wsOrigin = `${config.resoundScheme === 'https' ? 'wss' : 'ws'}://${config.publicWsHost}:${config.publicWsPort}`
  app.use((_req, res, next) => {
    res.setHeader('X-Content-Type-Options', 'nosniff')
    res.setHeader('Referrer-Policy', 'same-origin')
    res.setHeader('X-Frame-Options', 'DENY')
    res.setHeader('Content-Security-Policy',
      `default-src 'self'; connect-src 'self' ${wsOrigin}; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; object-src 'none'; frame-ancestors 'none'`)
    next()
  })

  // ---- sessions ---------------------------------------------------------------------------------

  const session = (req: Request): Authed | null => {
    const token = readCookie(req, SESSION_COOKIE)
    if (!token) return null
    const found = store.getSession(token)
    return found ? { ...found, token } : null
  }

  /** Requires a session; for anything but GET also the CSRF token (Echo sends it as X-CSRF-TOKEN). */
  const requireUser = (req: Request, res: Response, next: NextFunction) => {
    const auth = session(req)
    if (!auth) return void res.status(401).json({ error: 'Sign in first.' })
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      const sent = req.header('x-csrf-token') ?? ''
      if (!sameSecret(sent, auth.csrfToken)) return void res.status(419).json({ error: 'Your session expired; reload the page.' })
    }
    res.locals.auth = auth
    next()
  }
  const authOf = (res: Response): Authed => res.locals.auth as Authed

  const setCookie = (res: Response, value: string, maxAgeSeconds: number) => {
    const attrs = [`${SESSION_COOKIE}=${encodeURIComponent(value)}`, 'Path=/', 'HttpOnly', 'SameSite=Lax', `Max-Age=${maxAgeSeconds}`]
    if (config.secureCookies) attrs.push('Secure')
    res.setHeader('Set-Cookie', attrs.join('; '))
  }

  app.get('/up', (_req, res) => void res.json({ ok: true }))

  app.get('/api/config', (_req, res) => {
    const body: ClientConfig = {
      key: config.key, wsHost: config.publicWsHost, wsPort: config.publicWsPort, forceTLS: config.resoundScheme === 'https',
    }
    res.json(body)
  })

  app.get('/api/session', (req, res) => {
    const auth = session(req)
    if (!auth) return void res.status(401).json({ error: 'Not signed in.' })
    const body: Session = { user: auth.user, csrfToken: auth.csrfToken }
    res.json(body)
  })

  app.post('/api/session', express.json({ limit: '4kb' }), (req, res) => {
    const name = checkName(req.body?.name)
    if (!name.ok) return void res.status(422).json({ error: name.error })
    const user = store.findOrCreateUser(name.value)
    const { token, csrfToken } = store.createSession(user.id, config.sessionHours)
    setCookie(res, token, config.sessionHours * 3600)
    log.info('signed in', { userId: user.id })
    const body: Session = { user, csrfToken }
    res.status(201).json(body)
  })

  app.delete('/api/session', requireUser, async (_req, res) => {
    const { token, user } = authOf(res)
    store.deleteSession(token)
    setCookie(res, '', 0)
    // Close this user's sockets (every tab), as a sign-out should.
    await pusher.terminateUserConnections(String(user.id)).catch((err: Error) => log.warn('terminate failed', { error: err.message }))
    res.status(204).end()
  })

  // ---- broadcasting auth (the routes Laravel registers with Broadcast::routes()) -----------------

  // pusher-js posts `socket_id=…&channel_name=…` form-encoded; JSON is accepted too.
  const authForm = express.urlencoded({ extended: false, limit: '4kb' })
  const authJson = express.json({ limit: '4kb' })

  app.post('/broadcasting/auth', authForm, authJson, requireUser, (req, res) => {
    const result = authorizer.authorizeChannel(authOf(res).user, req.body?.socket_id, req.body?.channel_name)
    if (!result.ok) return void res.status(result.status).json({ error: result.error })
    res.json(result.body)
  })

  app.post('/broadcasting/user-auth', authForm, authJson, requireUser, (req, res) => {
    const result = authorizer.authenticateUser(authOf(res).user, req.body?.socket_id)
    if (!result.ok) return void res.status(result.status).json({ error: result.error })
    res.json(result.body)
  })

  // ---- webhooks ---------------------------------------------------------------------------------

  app.post('/webhooks/pusher', express.text({ type: () => true, limit: '1mb' }), async (req, res) => {
    const ok = await webhooks.receive(req.headers, typeof req.body === 'string' ? req.body : '')
    if (!ok) {
      log.warn('webhook rejected: bad signature, key or content type')
      return void res.status(401).json({ error: 'invalid webhook' })
    }
    res.json({ ok: true })
  })

  // ---- REST API ---------------------------------------------------------------------------------

  const api = express.Router()
  api.use(requireUser)
  api.use(express.json({ limit: '64kb' }))

  /** Resolves `:id` to a conversation the user may read, or answers 404. */
  const conversationParam = (req: Request, res: Response): Conversation => {
    const id = intParam(req.params.id)
    const conversation = id === null ? null : store.conversationFor(authOf(res).user.id, id)
    if (!conversation) throw new HttpError(404, 'No such conversation.')
    return conversation
  }

  /** A room (public, or private with this user as a member), else 404. */
  const roomParam = (req: Request, res: Response): number => {
    const id = intParam(req.params.id)
    if (id === null || store.getConversationRow(id)?.kind !== 'room' || !store.canAccess(authOf(res).user.id, id)) {
      throw new HttpError(404, 'No such room.')
    }
    return id
  }

  /**
   * A members-only room (private or invite-only) for the members routes: its members may do
   * anything there; anyone may read the member list of an invite-only room (it is listed, and
   * its members are whom to ask); otherwise 404, or 422 for a public room.
   */
  const memberRoomParam = (req: Request, res: Response, readOnly = false): number => {
    const id = intParam(req.params.id)
    const row = id === null ? null : store.getConversationRow(id)
    if (!row || row.kind !== 'room') throw new HttpError(404, 'No such room.')
    if (row.visibility === 'public') throw new HttpError(422, 'Public rooms are open to everyone; only private and invite-only rooms have members.')
    if (store.isMember(row.id, authOf(res).user.id) || (readOnly && row.visibility === 'invite')) return row.id
    throw new HttpError(404, 'No such room.')
  }

  api.get('/users', (_req, res) => void res.json(store.listUsers()))

  api.get('/conversations', (_req, res) => void res.json(store.listConversations(authOf(res).user.id)))

  api.get('/conversations/:id', (req, res) => void res.json(conversationParam(req, res)))

  api.post('/rooms', async (req, res) => {
    const name = checkRoomName(req.body?.name)
    if (!name.ok) throw new HttpError(422, name.error)
    if (store.roomExists(name.value)) throw new HttpError(409, `#${name.value} already exists.`)
    const asked = req.body?.visibility
    const visibility = asked === 'private' || asked === 'invite' ? asked : 'public'
    const id = await chat.createRoom(name.value, checkTopic(req.body?.topic), socketIdOf(req), visibility, authOf(res).user)
    res.status(201).json(store.conversationFor(authOf(res).user.id, id))
  })

  api.get('/rooms/:id/members', (req, res) => {
    const id = memberRoomParam(req, res, true)
    res.json({ conversationId: id, members: store.roomMembers(id) })
  })

  // Any member may add someone (nobody joins a members-only room by themselves).
  api.post('/rooms/:id/members', async (req, res) => {
    const id = memberRoomParam(req, res)
    const invitee = typeof req.body?.userId === 'number' ? store.getMember(req.body.userId) : null
    if (!invitee) throw new HttpError(422, 'Pick someone to add.')
    const added = await chat.invite(authOf(res).user, id, invitee)
    res.status(added ? 201 : 200).json({ conversationId: id, members: store.roomMembers(id) })
  })

  // Leaving: members remove themselves (nobody removes others in this example).
  api.delete('/rooms/:id/members/:userId', async (req, res) => {
    const id = memberRoomParam(req, res)
    const me = authOf(res).user
    if (intParam(req.params.userId) !== me.id) throw new HttpError(403, 'You can only take yourself out of a room.')
    await chat.removeFromRoom(id, me)
    res.status(204).end()
  })

  api.post('/dms', (req, res) => {
    const me = authOf(res).user
    const otherId = typeof req.body?.userId === 'number' ? req.body.userId : NaN
    if (!Number.isSafeInteger(otherId) || otherId === me.id || !store.getMember(otherId)) throw new HttpError(422, 'Pick someone else to talk to.')
    const id = store.directConversation(me.id, otherId)
    res.json(store.conversationFor(me.id, id))
  })

  api.get('/conversations/:id/messages', (req, res) => {
    const conversation = conversationParam(req, res)
    const before = intParam(req.query.before) ?? undefined
    const after = intParam(req.query.after) ?? undefined
    const limit = intParam(req.query.limit) ?? undefined
    res.json(store.history(conversation.id, { before, after, limit }))
  })

  api.post('/conversations/:id/messages', async (req, res) => {
    const conversation = conversationParam(req, res)
    const body = checkMessageBody(req.body?.body)
    if (!body.ok) throw new HttpError(422, body.error)
    const user = authOf(res).user
    // The message id chosen by the sender: the body's clientId or an Idempotency-Key header.
    const clientId = checkClientId(req.body?.clientId ?? req.header('idempotency-key'))
    const earlier = chat.alreadyPosted(user, clientId)
    if (earlier) {
      if (earlier.conversationId !== conversation.id) throw new HttpError(409, 'That message id was already used for another message.')
      return void res.status(200).json(earlier)
    }
    chat.admit(user, body.value)
    const message = await chat.postMessage(user, conversation.id, { body: body.value, clientId }, socketIdOf(req))
    res.status(201).json(message)
  })

  api.post('/conversations/:id/files',
    express.raw({ type: () => true, limit: config.maxUploadBytes }),
    async (req, res) => {
      const conversation = conversationParam(req, res)
      const bytes = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0)
      let name = 'file'
      try {
        name = decodeURIComponent(req.header('x-filename') ?? 'file')
      } catch { /* keep the default */ }
      const check = checkUpload({ declaredType: req.header('content-type'), name, bytes, maxBytes: config.maxUploadBytes })
      if (!check.ok) throw new HttpError(check.status, check.error)
      let caption = ''
      try {
        const c = checkMessageBody(decodeURIComponent(req.header('x-caption') ?? ''), true)
        if (c.ok) caption = c.value
      } catch { /* no caption */ }
      const user = authOf(res).user
      const clientId = checkClientId(req.header('x-client-id'))
      const earlier = chat.alreadyPosted(user, clientId)
      if (earlier) {
        if (earlier.conversationId !== conversation.id) throw new HttpError(409, 'That message id was already used for another message.')
        return void res.status(200).json(earlier)
      }
      chat.admit(user, caption)
      const stored = files.save(bytes, check.ext)
      store.addFile({ id: stored.id, conversationId: conversation.id, userId: user.id, name: check.name, type: check.type, size: bytes.length, storedAs: stored.storedAs })
      const message = await chat.postMessage(user, conversation.id,
        { body: caption, clientId, fileId: stored.id }, socketIdOf(req))
      res.status(201).json(message)
    })

  api.get('/conversations/:id/receipts', (req, res) => void res.json(store.receipts(conversationParam(req, res).id)))

  api.post('/conversations/:id/read', async (req, res) => {
    const conversation = conversationParam(req, res)
    const messageId = req.body?.messageId
    if (!Number.isSafeInteger(messageId) || messageId < 1 || messageId > conversation.lastMessageId) throw new HttpError(422, 'Bad message id.')
    const updated = await chat.markRead(authOf(res).user, conversation.id, messageId, socketIdOf(req))
    res.json({ updated })
  })

  api.get('/search', (req, res) => {
    const q = typeof req.query.q === 'string' ? req.query.q.slice(0, 200) : ''
    res.json(store.search(authOf(res).user.id, q))
  })

  api.get('/boards/:id/strokes', (req, res) => void res.json(store.strokes(roomParam(req, res))))

  api.post('/boards/:id/strokes', async (req, res) => {
    const roomId = roomParam(req, res)
    const stroke = checkStroke(req.body, authOf(res).user.id)
    if (!stroke.ok) throw new HttpError(422, stroke.error)
    const created = await chat.saveStroke(roomId, stroke.value, socketIdOf(req))
    res.status(created ? 201 : 200).json(stroke.value)
  })

  api.delete('/boards/:id/strokes', async (req, res) => {
    await chat.clearBoard(authOf(res).user, roomParam(req, res), socketIdOf(req))
    res.status(204).end()
  })

  api.get('/notifications', (_req, res) => void res.json(store.notifications(authOf(res).user.id)))

  api.post('/notifications/read', (_req, res) => {
    store.markNotificationsRead(authOf(res).user.id)
    res.status(204).end()
  })

  api.get('/dashboard', (_req, res) => void res.json(dashboard.snapshot()))

  app.use('/api', api)

  // ---- uploaded files ---------------------------------------------------------------------------

  app.get('/files/:id', requireUser, (req, res) => {
    const file = typeof req.params.id === 'string' ? store.getFile(req.params.id) : null
    if (!file || !store.canAccess(authOf(res).user.id, file.conversationId)) return void res.status(404).json({ error: 'No such file.' })
    const inline = ALLOWED_TYPES[file.type]?.inline === true
    res.setHeader('Content-Type', file.type)
    res.setHeader('Content-Disposition', `${inline ? 'inline' : 'attachment'}; filename*=UTF-8''${encodeURIComponent(file.name)}`)
    res.setHeader('Content-Security-Policy', "default-src 'none'; sandbox")
    res.setHeader('Cache-Control', 'private, max-age=86400')
    res.sendFile(files.pathOf(file.storedAs))
  })

  // ---- the built frontend -----------------------------------------------------------------------

  const index = path.join(config.distDir, 'index.html')
  app.use('/assets', express.static(path.join(config.distDir, 'assets'), { immutable: true, maxAge: '1y', fallthrough: false }))
  app.use(express.static(config.distDir, { index: false }))
  app.use((req, res, next) => {
    if (req.method !== 'GET' || req.path.startsWith('/api/')) return next()
    if (!fs.existsSync(index)) return void res.status(503).type('text').send('The frontend is not built yet: run `npm run build`.')
    res.setHeader('Cache-Control', 'no-cache')
    res.sendFile(index)
  })

  app.use((_req, res) => void res.status(404).json({ error: 'Not found.' }))

  // One place where errors become responses; internal causes are logged, not sent.
  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    if (err instanceof HttpError) return void res.status(err.status).json({ error: err.message })
    if (err instanceof PostRefused) {
      const { reason, retryAfterMs, error } = err.verdict
      const status = reason === 'flood' ? 429 : 422
      if (retryAfterMs > 0) res.setHeader('Retry-After', String(Math.ceil(retryAfterMs / 1000)))
      return void res.status(status).json({ error, reason, retryAfterMs })
    }
    const status = (err as { status?: number }).status
    if (typeof status === 'number' && status >= 400 && status < 500) {
      const message = status === 413 ? `That is too large (the limit is ${Math.floor(config.maxUploadBytes / 1024 / 1024)} MB for files).` : 'Bad request.'
      return void res.status(status).json({ error: message })
    }
    log.warn('request failed', { method: req.method, path: req.path, error: (err as Error)?.message ?? String(err) })
    res.status(500).json({ error: 'Something went wrong on our side.' })
  })

  return app
}
