// The one WebSocket connection of this tab: Laravel Echo with the `reverb` broadcaster (pusher-js
// underneath) pointed at Resound. Exposes the connection state for the UI and lets views
// re-sync after the connection comes back.
//
// Missed messages come back through channel history (docs/protocol.md 11.2): Resound keeps the
// recent events of the conversation channels (`history_channels` in resound.toml) and the
// recovery helper of clients/recovery/ resumes them when pusher-js re-subscribes after a drop.
// The missed events arrive as ordinary events, then the helper reports `recovered` or `failed`
// per channel; a view refetches only on `failed` (see onRecovery).

import Echo from 'laravel-echo'
import Pusher from 'pusher-js'
import { reactive } from 'vue'
import { enableRecovery, type Recovery } from '../../../../clients/recovery/src/index'
import type { ClientConfig } from '../../shared/types'

/** The channels Resound keeps history for (resound.toml's `history_channels`): rooms and DMs. */
const HISTORY_CHANNEL = /^(presence-room|private-dm)\./

export type RecoveryOutcome =
  | { status: 'recovered'; channel: string; count: number; at: number }
  | { status: 'failed'; channel: string; reason: string; at: number }

export type LinkState = 'connecting' | 'connected' | 'reconnecting' | 'offline' | 'failed'

export const link = reactive({
  state: 'connecting' as LinkState,
  /** Seconds until pusher-js tries again, while reconnecting. */
  retryIn: 0,
  everConnected: false,
  socketId: '',
  /** `pusher:signin` succeeded on this socket: user events (`sendToUser`) reach this tab. */
  signedIn: false,
})

let echo: Echo<'reverb'> | null = null
let recovery: Recovery | null = null
const reconnectListeners = new Set<() => void>()
const recoveryListeners = new Map<string, Set<(outcome: RecoveryOutcome) => void>>()

/** Every recovery outcome of this tab, newest last (kept short; read by the browser tests). */
export const recoveries: RecoveryOutcome[] = []
;(window as unknown as { teamspaceRecoveries?: RecoveryOutcome[] }).teamspaceRecoveries = recoveries

function reportRecovery(outcome: RecoveryOutcome): void {
  recoveries.push(outcome)
  if (recoveries.length > 50) recoveries.shift()
  for (const fn of recoveryListeners.get(outcome.channel) ?? []) fn(outcome)
}

export function getEcho(): Echo<'reverb'> {
  if (!echo) throw new Error('realtime: connect() first')
  return echo
}

export function pusherOf(e: Echo<'reverb'>): Pusher {
  return e.connector.pusher
}

/** Runs `fn` each time the connection comes back after a drop (not on the first connect). */
export function onReconnect(fn: () => void): () => void {
  reconnectListeners.add(fn)
  return () => reconnectListeners.delete(fn)
}

/**
 * Runs `fn` with the outcome of each resume of `channel` after a reconnect: `recovered` (the
 * missed events were delivered, before it, to the channel's listeners) or `failed` (refetch).
 */
export function onRecovery(channel: string, fn: (outcome: RecoveryOutcome) => void): () => void {
  let set = recoveryListeners.get(channel)
  if (!set) recoveryListeners.set(channel, (set = new Set()))
  set.add(fn)
  return () => {
    set.delete(fn)
    if (set.size === 0) recoveryListeners.delete(channel)
  }
}

/**
 * Whether `channel` will be resumed from history on the next reconnect: it keeps history and
 * this tab holds a position in it. Call it from an onReconnect listener (before re-subscribing).
 */
export function resumable(channel: string): boolean {
  return HISTORY_CHANNEL.test(channel) && recovery?.position(channel) !== undefined
}

export function connect(config: ClientConfig, csrfToken: string): Echo<'reverb'> {
  if (echo) return echo
  echo = new Echo({
    broadcaster: 'reverb',
    key: config.key,
    wsHost: config.wsHost,
    wsPort: config.wsPort,
    wssPort: config.wsPort,
    forceTLS: config.forceTLS,
    // 'ws' only: it is wss:// when forceTLS is set. Allowing 'wss' as well would make pusher-js
    // try wss:// on a plain-ws server during every outage, which the page's CSP refuses (and
    // which could never work anyway).
    enabledTransports: ['ws'],
    authEndpoint: '/broadcasting/auth',
    userAuthentication: { endpoint: '/broadcasting/user-auth', transport: 'ajax', headers: {} },
    csrfToken,
    // Notice a dead link within a few seconds of a ping going unanswered.
    pongTimeout: 6000,
    unavailableTimeout: 8000,
    Pusher,
  })
  const pusher = pusherOf(echo)
  recovery = enableRecovery(pusher, { channels: (name) => HISTORY_CHANNEL.test(name) })
    .on('recovered', ({ channel, count }) => reportRecovery({ status: 'recovered', channel, count, at: Date.now() }))
    .on('failed', ({ channel, reason }) => reportRecovery({ status: 'failed', channel, reason, at: Date.now() }))
  pusher.connection.bind('state_change', ({ current }: { previous: string; current: string }) => {
    const wasDown = link.everConnected && link.state !== 'connected'
    // A new socket signs in again (pusher-js does it on every connect).
    if (current !== 'connected') link.signedIn = false
    switch (current) {
      case 'connected':
        link.state = 'connected'
        link.retryIn = 0
        link.socketId = pusher.connection.socket_id
        if (wasDown) for (const fn of reconnectListeners) fn()
        link.everConnected = true
        break
      case 'connecting':
      case 'initialized':
        link.state = link.everConnected ? 'reconnecting' : 'connecting'
        break
      case 'unavailable':
      case 'disconnected':
        link.state = 'offline'
        break
      case 'failed':
        link.state = 'failed'
        break
    }
  })
  pusher.connection.bind('connecting_in', (delay: number) => {
    link.retryIn = delay
  })
  // User authentication (`pusher:signin`): this socket becomes `#server-to-user-{id}`'s
  // recipient, which is how the backend's sendToUser reaches every tab of this user.
  pusher.bind('pusher:signin_success', () => {
    link.signedIn = true
  })
  pusher.signin()
  return echo
}

export function disconnect(): void {
  echo?.disconnect()
  link.signedIn = false
  echo = null
  recovery = null
}

/** Leaves a channel; a no-op once disconnected (views unmount after sign-out). */
export function leaveChannel(name: string): void {
  echo?.leaveChannel(name)
}
