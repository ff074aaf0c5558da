//! The webhook receiver: Resound posts presence and occupancy changes here, signed with the
//! app secret. Presence becomes the online/last-seen record (and a `user.status` event on the
//! lobby, so open browsers update "last seen"); occupancy of `dashboard` switches the live
//! figures on and off.

import type Pusher from 'pusher'
import { EVENTS, type UserStatus } from '../shared/types.js'
import type { Logger } from './chat.js'
import { DASHBOARD_CHANNEL, LOBBY_CHANNEL } from './channels.js'
import type { Dashboard } from './dashboard.js'
import type { Store } from './store.js'

interface WebhookEvent {
  name: string
  channel: string
  user_id?: string
}

export class WebhookReceiver {
  constructor(
    private readonly store: Store,
    private readonly pusher: Pusher,
    private readonly dashboard: Dashboard,
    private readonly log: Logger,
  ) {}

  /** Validates (key, signature, content type) and applies the events; false when invalid. */
  async receive(headers: Record<string, string | string[] | undefined>, rawBody: string): Promise<boolean> {
    const webhook = this.pusher.webhook({ headers, rawBody })
    if (!webhook.isValid()) return false
    for (const event of webhook.getEvents() as WebhookEvent[]) await this.apply(event)
    return true
  }

  private async apply(event: WebhookEvent): Promise<void> {
    if (event.channel === DASHBOARD_CHANNEL) {
      if (event.name === 'channel_occupied') this.dashboard.watching = true
      if (event.name === 'channel_vacated') this.dashboard.watching = false
      return
    }
    if (event.name !== 'member_added' && event.name !== 'member_removed') return
    const userId = Number(event.user_id)
    if (!Number.isSafeInteger(userId) || userId <= 0) return
    const changed = event.name === 'member_added'
      ? this.store.memberAdded(event.channel, userId)
      : this.store.memberRemoved(event.channel, userId)
    if (!changed) return
    const status: UserStatus = { userId, ...this.store.userStatus(userId) }
    this.log.info(status.online ? 'user online' : 'user offline', { userId })
    try {
      await this.pusher.trigger(LOBBY_CHANNEL, EVENTS.userStatus, status)
    } catch (err) {
      this.log.warn('status publish failed', { error: (err as Error).message })
    }
  }

  /** Rebuilds the presence records from Resound's member lists (the backend may have missed webhooks while down). */
  async reconcile(): Promise<void> {
    try {
      const res = await this.pusher.get({ path: '/channels', params: { filter_by_prefix: 'presence-' } })
      const { channels } = (await res.json()) as { channels: Record<string, unknown> }
      const members: Array<{ channel: string; userId: number }> = []
      for (const channel of Object.keys(channels ?? {})) {
        const users = await this.pusher.get({ path: `/channels/${channel}/users` })
        const body = (await users.json()) as { users: Array<{ id: string }> }
        for (const u of body.users ?? []) {
          const id = Number(u.id)
          if (Number.isSafeInteger(id) && id > 0) members.push({ channel, userId: id })
        }
      }
      this.store.replacePresence(members)
      this.log.info('presence reconciled', { members: members.length })
    } catch (err) {
      this.log.warn('presence reconcile failed', { error: (err as Error).message })
    }
  }
}
