// Notifications outside the visible tab: while Teamspace is open in a background tab (or a
// minimised window) a mention, an invitation or a direct message is shown as a system
// notification through the service worker (`/sw.js`). The page keeps the WebSocket; the
// worker only displays and, on a click, focuses the tab and opens the conversation. Closed
// tabs get nothing: that needs Web Push (see the README).

import { reactive } from 'vue'
import { navigate } from './router'

export const desktop = reactive({
  supported: typeof window !== 'undefined' && 'Notification' in window && 'serviceWorker' in navigator,
  permission: (typeof Notification !== 'undefined' ? Notification.permission : 'denied') as NotificationPermission,
  /** Notifications shown, for the tests and the tray. */
  shown: 0,
})

let registration: Promise<ServiceWorkerRegistration | null> = Promise.resolve(null)

export function startNotifications(): void {
  if (!desktop.supported) return
  registration = navigator.serviceWorker.register('/sw.js').catch(() => null)
  navigator.serviceWorker.addEventListener('message', (e: MessageEvent<{ type?: string; link?: string }>) => {
    if (e.data?.type === 'open' && e.data.link) navigate(e.data.link)
  })
}

export async function askPermission(): Promise<NotificationPermission> {
  if (!desktop.supported) return 'denied'
  desktop.permission = await Notification.requestPermission()
  return desktop.permission
}

/** True when the user is not looking at this tab. */
export function inBackground(): boolean {
  return document.visibilityState !== 'visible'
}

/** Shows a system notification when the tab is in the background and permission was given. */
export async function notifyOutside(title: string, body: string, link: string | undefined, tag: string): Promise<boolean> {
  if (!desktop.supported || !inBackground()) return false
  desktop.permission = Notification.permission
  if (desktop.permission !== 'granted') return false
  const reg = await registration
  if (!reg) return false
  await reg.showNotification(title, { body: body.slice(0, 180), tag, data: { link: link ?? '' }, icon: '/favicon.svg' })
  desktop.shown += 1
  return true
}
