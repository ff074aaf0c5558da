//! Starts the backend: configuration, store, Pusher client (pointed at Resound), the stream
//! worker (or, without Redis, the follow-ups in the request path), HTTP server, the dashboard
//! ticker; reconciles presence with Resound on start; stops cleanly on SIGTERM.

import fs from 'node:fs'
import path from 'node:path'
import Pusher from 'pusher'
import { createApp } from './app.js'
import { Chat } from './chat.js'
import { loadConfig } from './config.js'
import { Dashboard } from './dashboard.js'
import { FollowUps } from './followUps.js'
import { consoleLogger } from './log.js'
import { SpamGuard } from './spam.js'
import { Store } from './store.js'
import { consumerName, GROUP, redactUrl, StreamWorker } from './streamWorker.js'
import { FileStorage } from './uploads.js'
import { WebhookReceiver } from './webhooks.js'
import { WordFilter } from './wordFilter.js'

const config = loadConfig()
const log = consoleLogger(process.env.TEAMSPACE_QUIET === '1')
fs.mkdirSync(config.dataDir, { recursive: true })

const store = new Store(path.join(config.dataDir, 'teamspace.sqlite'))
const pusher = new Pusher({
  appId: config.appId,
  key: config.key,
  secret: config.secret,
  host: config.resoundHost,
  port: String(config.resoundPort),
  useTLS: config.resoundScheme === 'https',
  timeout: 5000,
})
const filter = WordFilter.fromFile(config.sensitiveWordsFile, config.sensitiveWords)
const followUps = new FollowUps(store, pusher, log, { flagAfter: config.flagAfter })
// Mentions, moderation counts and statistics come from Resound's stream when Redis answers;
// otherwise (a laptop without Redis) they run in the request path, after the publish.
const worker = await connectStream()
const chat = new Chat(store, pusher, filter, log, new SpamGuard(config.spam), worker ? null : followUps)
const dashboard = new Dashboard(
  { metricsUrl: `${config.resoundScheme}://${config.resoundHost}:${config.resoundPort}/metrics`, appId: config.appId },
  store, followUps, pusher, log, worker ? () => worker.status() : undefined)
const webhooks = new WebhookReceiver(store, pusher, dashboard, log)
const files = new FileStorage(path.join(config.dataDir, 'uploads'))
const app = createApp({ config, store, pusher, chat, dashboard, webhooks, files, log })

// Express 5 hands a listen error (a port in use, no permission) to this callback instead of
// throwing it: report it and exit non-zero rather than claim to be listening.
const server = app.listen(config.port, config.host, (err?: Error) => {
  if (err) return fail(err)
  log.info('teamspace backend listening', {
    url: `http://${config.host}:${config.port}`, resound: `${config.resoundHost}:${config.resoundPort}`, sensitiveWords: filter.size,
  })
  void webhooks.reconcile()
  dashboard.start()
  worker?.start()
})

/** The stream worker, connected and its group created; null (said in one line) without Redis. */
async function connectStream(): Promise<StreamWorker | null> {
  if (!config.redisUrl) {
    log.warn('follow-ups: no TEAMSPACE_REDIS_URL; mentions, moderation and statistics run in the request path')
    return null
  }
  const consumer = consumerName(config.port)
  try {
    const connected = await StreamWorker.connect({ url: config.redisUrl, key: config.streamKey, consumer }, followUps, log)
    log.info('follow-ups: reading the stream', { redis: redactUrl(config.redisUrl), stream: config.streamKey, group: GROUP, consumer })
    return connected
  } catch (err) {
    log.warn('follow-ups: Redis unreachable; mentions, moderation and statistics run in the request path',
      { redis: redactUrl(config.redisUrl), error: (err as Error).message })
    return null
  }
}

function fail(err: Error & { code?: string }): void {
  const where = `${config.host}:${config.port}`
  const why = err.code === 'EADDRINUSE'
    ? `port ${config.port} is already in use on ${config.host}; stop what uses it or set TEAMSPACE_PORT`
    : err.code === 'EACCES' ? `no permission to listen on ${where}` : err.message
  log.warn('cannot start the backend', { error: why })
  console.error(`teamspace: cannot listen on ${where}: ${why}`)
  dashboard.stop()
  store.close()
  process.exit(1)
}

function shutdown(signal: string): void {
  log.info('stopping', { signal })
  dashboard.stop()
  const stopped = worker ? worker.stop() : Promise.resolve()
  server.close(() => {
    void stopped.finally(() => {
      store.close()
      process.exit(0)
    })
  })
  server.closeAllConnections()
  setTimeout(() => process.exit(0), 2000).unref()
}
process.on('SIGTERM', () => shutdown('SIGTERM'))
process.on('SIGINT', () => shutdown('SIGINT'))
