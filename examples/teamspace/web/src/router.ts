// A small hash router: #/c/{id} (a conversation), #/c/{id}/board (a room's whiteboard),
// #/dashboard. `?m={id}` asks the conversation view to scroll to a message.

import { reactive } from 'vue'

export type Route =
  | { name: 'chat'; id: number; messageId: number | null }
  | { name: 'board'; id: number }
  | { name: 'dashboard' }
  | { name: 'home' }

function parse(hash: string): Route {
  const [path = '', query = ''] = hash.replace(/^#/, '').split('?')
  const params = new URLSearchParams(query)
  let m = /^\/c\/(\d+)\/board$/.exec(path)
  if (m) return { name: 'board', id: Number(m[1]) }
  m = /^\/c\/(\d+)$/.exec(path)
  if (m) return { name: 'chat', id: Number(m[1]), messageId: params.has('m') ? Number(params.get('m')) : null }
  if (path === '/dashboard') return { name: 'dashboard' }
  return { name: 'home' }
}

export const route = reactive<{ current: Route }>({ current: parse(location.hash) })

window.addEventListener('hashchange', () => {
  route.current = parse(location.hash)
})

export function navigate(path: string): void {
  if (location.hash === `#${path}`) route.current = parse(location.hash)
  else location.hash = path
}

export const links = {
  chat: (id: number, messageId?: number) => `/c/${id}${messageId ? `?m=${messageId}` : ''}`,
  board: (id: number) => `/c/${id}/board`,
  dashboard: () => '/dashboard',
}
