//! The live dashboard's figures: once a second it samples the chat (messages followed up in the
//! last second, users online according to the presence webhooks) and Resound's own Prometheus
//! endpoint, keeps the last two minutes, and triggers `stats.tick` on the public `dashboard`
//! channel while anyone is subscribed to it (known from channel_occupied/vacated webhooks).
//! With each tick go the follow-ups' status (stream or in-process, processed, lag) and the
//! moderation counts.

import type Pusher from 'pusher'
import { EVENTS, type DashboardSample, type DashboardSnapshot, type FollowUpStatus } from '../shared/types.js'
import type { Logger } from './chat.js'
import { inProcessStatus, type FollowUps } from './followUps.js'
import { DASHBOARD_CHANNEL } from './channels.js'
import type { Store } from './store.js'

export interface MetricSample {
  labels: Record<string, string>
  value: number
}

/** Parses the Prometheus text format (the subset Resound writes: no timestamps needed). */
export function parsePrometheus(text: string): Map<string, MetricSample[]> {
  const out = new Map<string, MetricSample[]>()
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line)
    if (!match) continue
    const labels: Record<string, string> = {}
    for (const l of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c))
    }
    const value = Number(match[3])
    if (Number.isNaN(value)) continue
    const list = out.get(match[1]!) ?? []
    list.push({ labels, value })
    out.set(match[1]!, list)
  }
  return out
}

/** Sum of a metric over the series whose labels include `where`; 0 when absent. */
export function metricSum(metrics: Map<string, MetricSample[]>, name: string, where: Record<string, string> = {}): number {
  return (metrics.get(name) ?? [])
    .filter((s) => Object.entries(where).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0)
}

const HISTORY = 120

export class Dashboard {
  private samples: DashboardSample[] = []
  private previous: { t: number; sent: number; api: number; client: number } | null = null
  private timer: NodeJS.Timeout | null = null
  private resoundReachable = false
  /** Someone is subscribed to `dashboard` (kept from webhooks, checked against the API at start). */
  watching = false

  constructor(
    private readonly opts: { metricsUrl: string; appId: string; prefix?: string },
    private readonly store: Store,
    private readonly followUps: FollowUps,
    private readonly pusher: Pusher,
    private readonly log: Logger,
    /** Where the follow-ups run: the stream worker's status, or the in-process one. */
    private readonly followUpStatus: () => FollowUpStatus = () => inProcessStatus(followUps),
  ) {}

  start(): void {
    void this.refreshWatching()
    this.timer = setInterval(() => void this.tick(), 1000)
    this.timer.unref()
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer)
    this.timer = null
  }

  /** Asks Resound whether the dashboard channel is occupied (after a backend restart, say). */
  async refreshWatching(): Promise<void> {
    try {
      const res = await this.pusher.get({ path: `/channels/${DASHBOARD_CHANNEL}`, params: { info: 'subscription_count' } })
      const body = (await res.json()) as { occupied?: boolean }
      this.watching = body.occupied === true
    } catch (err) {
      this.log.warn('could not read the dashboard channel state', { error: (err as Error).message })
    }
  }

  snapshot(): DashboardSnapshot {
    return {
      samples: this.samples,
      totals: {
        messages: this.store.messageCount(),
        files: this.store.fileCount(),
        strokes: this.store.strokeCount(),
        users: this.store.userCount(),
      },
      resoundReachable: this.resoundReachable,
      followUps: this.followUpStatus(),
      moderation: this.store.moderation(),
    }
  }

  private async readMetrics(): Promise<Map<string, MetricSample[]> | null> {
    try {
      const res = await fetch(this.opts.metricsUrl, { signal: AbortSignal.timeout(800) })
      if (!res.ok) throw new Error(`HTTP ${res.status}`)
      this.resoundReachable = true
      return parsePrometheus(await res.text())
    } catch (err) {
      if (this.resoundReachable) this.log.warn('Resound metrics unavailable', { error: (err as Error).message })
      this.resoundReachable = false
      return null
    }
  }

  /** One sample; exported for tests. */
  async tick(now = Date.now()): Promise<DashboardSample> {
    const metrics = await this.readMetrics()
    const prefix = this.opts.prefix ?? 'resound'
    const app = { app_id: this.opts.appId }
    const read = (name: string) => (metrics ? metricSum(metrics, `${prefix}_${name}`, app) : 0)
    const counters = { t: now, sent: read('ws_messages_sent_total'), api: read('api_events_total'), client: read('client_events_total') }
    const prev = this.previous
    const rate = (key: 'sent' | 'api' | 'client') => {
      if (!prev || !metrics) return 0
      const seconds = Math.max((now - prev.t) / 1000, 0.001)
      const delta = counters[key] >= prev[key] ? counters[key] - prev[key] : counters[key] // a restart resets counters
      return Math.round((delta / seconds) * 10) / 10
    }
    const sample: DashboardSample = {
      t: now,
      messagesPerSecond: this.followUps.takeMessageCount(),
      onlineUsers: this.store.onlineCount(),
      connections: read('connected'),
      wsMessagesSentPerSecond: rate('sent'),
      apiEventsPerSecond: rate('api'),
      clientEventsPerSecond: rate('client'),
      subscriptions: read('subscriptions'),
    }
    if (metrics) this.previous = counters
    this.samples.push(sample)
    if (this.samples.length > HISTORY) this.samples.splice(0, this.samples.length - HISTORY)
    if (this.watching) {
      const { totals, followUps, moderation } = this.snapshot()
      try {
        await this.pusher.trigger(DASHBOARD_CHANNEL, EVENTS.statsTick, { sample, totals, resoundReachable: this.resoundReachable, followUps, moderation })
      } catch (err) {
        this.log.warn('stats publish failed', { error: (err as Error).message })
      }
    }
    return sample
  }
}
