//! The backend's member of a Redis consumer group on the stream Resound writes (resound.toml's
//! `[[apps.streams]]`, docs/streams.md). It hands each entry to FollowUps and acknowledges it
//! (XACK) only after, so an entry is never lost to a crash between reading and handling:
//!
//! 1. at start it creates the group (`teamspace`, from the stream's start if new) and reads its
//!    own pending entries (id `0`): those a previous run of this consumer read but never acked;
//! 2. it claims entries idle for over a minute in other consumers' names (XAUTOCLAIM): their
//!    process died; and again every minute;
//! 3. then it reads new entries (`>`) with XREADGROUP BLOCK, one batch at a time.
//!
//! An entry may so be handled twice (read, handled, the process killed before XACK); FollowUps
//! keys a message's work by its id, so nobody is notified twice.
//!
//! `connect` is the start-up check: it fails when Redis cannot be reached, and main.ts then
//! leaves the follow-ups in the request path.

import { createClient } from '@redis/client'
import os from 'node:os'
import type { FollowUpStatus } from '../shared/types.js'
import type { Logger } from './chat.js'
import { eventFromEntry, type FollowUps } from './followUps.js'

type Client = ReturnType<typeof makeClient>

function makeClient(url: string, timeoutMs: number, log: Logger) {
  const client = createClient({
    url,
    // After the first connection, reconnect with a back-off up to 2 s: the stream keeps what
    // Resound writes meanwhile, and the group resumes where it was.
    socket: { connectTimeout: timeoutMs, reconnectStrategy: (retries: number) => Math.min(100 * 2 ** retries, 2000) },
  })
  // Errors are reported once per outage, and only after the first connection: a Redis that is
  // not there at start is main.ts's one line.
  let reported = true
  client.on('error', (err: Error) => {
    if (!reported) log.warn('stream worker: Redis connection error', { error: err.message })
    reported = true
  })
  client.on('ready', () => { reported = false })
  return client
}

export const GROUP = 'teamspace'
/** Entries read by another consumer and not acknowledged for this long are taken over. */
const CLAIM_IDLE_MS = 60_000
const BATCH = 100
const BLOCK_MS = 2000

interface Entry {
  id: string
  message: Record<string, string>
}

export interface StreamWorkerOptions {
  url: string
  key: string
  /** This process's name in the group; stable across restarts on one machine and port. */
  consumer: string
  /** Entries idle this long in another consumer's name are taken over (default a minute). */
  claimIdleMs?: number
}

/** This process's consumer name: host and port, so a restarted backend finds its own pending entries. */
export function consumerName(port: number): string {
  return `${os.hostname()}:${port}`
}

export class StreamWorker {
  private running = false
  private loop: Promise<void> | null = null
  private processed = 0
  private recovered = 0
  private pending = 0
  private backlog: number | null = null
  private lastLagMs: number | null = null
  private lastClaim = 0
  private readonly claimIdleMs: number

  private constructor(
    private readonly reader: Client,
    private readonly control: Client,
    private readonly opts: StreamWorkerOptions,
    private readonly followUps: FollowUps,
    private readonly log: Logger,
  ) {
    this.claimIdleMs = opts.claimIdleMs ?? CLAIM_IDLE_MS
  }

  /**
   * Connects (two connections: one blocks in XREADGROUP, the other acks and answers status
   * questions) and creates the group; rejects when Redis does not answer within `timeoutMs`.
   */
  static async connect(opts: StreamWorkerOptions, followUps: FollowUps, log: Logger, timeoutMs = 2000): Promise<StreamWorker> {
    const reader = makeClient(opts.url, timeoutMs, log)
    const control = makeClient(opts.url, timeoutMs, log)
    try {
      // A refused connection is retried by the client; the first error is the answer here.
      const refused = new Promise<never>((_, reject) => reader.once('error', reject))
      await withTimeout(Promise.race([Promise.all([reader.connect(), control.connect()]), refused]), timeoutMs)
      try {
        await control.xGroupCreate(opts.key, GROUP, '0', { MKSTREAM: true })
      } catch (err) {
        if (!/BUSYGROUP/.test((err as Error).message)) throw err
      }
    } catch (err) {
      for (const c of [reader, control]) c.destroy()
      throw err
    }
    return new StreamWorker(reader, control, opts, followUps, log)
  }

  start(): void {
    this.running = true
    this.loop = this.run()
  }

  async stop(): Promise<void> {
    this.running = false
    // Closing the reader ends a blocked XREADGROUP; what was read and not acked stays pending
    // for the next start.
    this.reader.destroy()
    await this.loop?.catch(() => {})
    this.control.destroy()
  }

  status(): FollowUpStatus {
    return {
      mode: 'stream',
      stream: this.opts.key,
      group: GROUP,
      consumer: this.opts.consumer,
      connected: this.reader.isReady && this.control.isReady,
      processed: this.processed,
      recovered: this.recovered,
      pending: this.pending,
      lastLagMs: this.lastLagMs,
      backlog: this.backlog,
      counts: { ...this.followUps.counts },
    }
  }

  private async run(): Promise<void> {
    // Our own pending entries first (id 0), until none is left, then claims, then new ones.
    let id = '0'
    while (this.running) {
      try {
        if (id === '>' && Date.now() - this.lastClaim >= this.claimIdleMs) await this.claim()
        const reply = await this.reader.xReadGroup(GROUP, this.opts.consumer, { key: this.opts.key, id },
          id === '>' ? { COUNT: BATCH, BLOCK: BLOCK_MS } : { COUNT: BATCH })
        const entries: Entry[] = (reply as Array<{ messages: Entry[] }> | null)?.[0]?.messages ?? []
        if (id === '0') {
          if (entries.length === 0) {
            id = '>'
            await this.claim()
            continue
          }
          this.recovered += entries.length
          this.log.info('stream worker: re-reading entries left pending', { entries: entries.length })
        }
        await this.handle(entries)
      } catch (err) {
        if (!this.running) return
        this.log.warn('stream worker: read failed; retrying', { error: (err as Error).message })
        await new Promise((r) => setTimeout(r, 500))
      }
    }
  }

  /** Takes over entries another consumer read and left unacknowledged for `claimIdleMs`. */
  private async claim(): Promise<void> {
    this.lastClaim = Date.now()
    let start = '0-0'
    do {
      const reply = await this.control.xAutoClaim(this.opts.key, GROUP, this.opts.consumer, this.claimIdleMs, start, { COUNT: BATCH })
      const entries = (reply.messages as Array<Entry | null>).filter((e): e is Entry => e !== null)
      if (entries.length) {
        this.recovered += entries.length
        this.log.info('stream worker: claimed entries of a stopped consumer', { entries: entries.length })
        await this.handle(entries)
      }
      start = reply.nextId
    } while (start !== '0-0' && this.running)
  }

  private async handle(entries: Entry[]): Promise<void> {
    for (const entry of entries) {
      const event = eventFromEntry(entry.message)
      if (event) await this.followUps.apply(event)
      await this.control.xAck(this.opts.key, GROUP, entry.id)
      this.processed += 1
      if (event?.time) this.lastLagMs = Date.now() - event.time
    }
    if (entries.length) await this.refreshGroupInfo()
  }

  private async refreshGroupInfo(): Promise<void> {
    try {
      const groups = (await this.control.xInfoGroups(this.opts.key)) as unknown as Array<Record<string, unknown>>
      const ours = groups.find((g) => g.name === GROUP)
      this.pending = Number(ours?.pending ?? 0)
      this.backlog = typeof ours?.lag === 'number' ? ours.lag : null
    } catch {
      // Figures for the dashboard only; the next batch reads them again.
    }
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms) })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/** The URL without a password, for logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url)
    if (u.password) u.password = '***'
    return u.toString()
  } catch {
    return '(invalid URL)'
  }
}
