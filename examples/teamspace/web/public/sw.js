// Teamspace's service worker: shows notifications for the page while it is open in a
// background tab (the page holds the live connection and asks this worker to show them), and
// brings the right tab forward when one is clicked. It caches nothing.
self.addEventListener('install', () => self.skipWaiting())
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()))

self.addEventListener('notificationclick', (event) => {
  event.notification.close()
  const link = (event.notification.data && event.notification.data.link) || ''
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true })
    for (const client of windows) {
      if (new URL(client.url).origin !== self.location.origin) continue
      await client.focus()
      client.postMessage({ type: 'open', link })
      return
    }
    await self.clients.openWindow(`/#${link}`)
  })())
})
