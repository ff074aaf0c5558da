// The one WebSocket connection of this tab: Laravel Echo with the `reverb` broadcaster (pusher-js
// underneath) pointed at Resound. Exposes the connection state for the UI and lets views
// re-sync after the connection comes back.

import Echo from 'laravel-echo'
import Pusher from 'pusher-js'
import { reactive } from 'vue'
import type { ClientConfig } from '../../shared/types'

export type LinkState = 'connecting' | 'connected' | 'reconnecting' | 'offline' | 'failed'

export const link = reactive({
  state: 'connecting' as LinkState,
  /** Seconds until pusher-js tries again, while reconnecting. */
  retryIn: 0,
  everConnected: false,
  socketId: '',
})

let echo: Echo<'reverb'> | null = null
const reconnectListeners = new Set<() => void>()

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
  pusher.connection.bind('state_change', ({ current }: { previous: string; current: string }) => {
    const wasDown = link.everConnected && link.state !== 'connected'
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
  pusher.signin()
  return echo
}

export function disconnect(): void {
  echo?.disconnect()
  echo = null
}

/** Leaves a channel; a no-op once disconnected (views unmount after sign-out). */
export function leaveChannel(name: string): void {
  echo?.leaveChannel(name)
}
