// Display formatting: times, sizes, and the message text markup (mentions and links).

export function clock(ms: number): string {
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
}

export function dayLabel(ms: number): string {
  const d = new Date(ms)
  const today = new Date()
  const yesterday = new Date(Date.now() - 86400_000)
  if (d.toDateString() === today.toDateString()) return 'Today'
  if (d.toDateString() === yesterday.toDateString()) return 'Yesterday'
  return d.toLocaleDateString([], { weekday: 'long', month: 'long', day: 'numeric' })
}

export function timeAgo(ms: number, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - ms) / 1000))
  if (s < 45) return 'just now'
  const m = Math.round(s / 60)
  if (m < 60) return `${m} min ago`
  const h = Math.round(m / 60)
  if (h < 24) return `${h} h ago`
  return new Date(ms).toLocaleDateString([], { month: 'short', day: 'numeric' })
}

export function fileSize(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`
}

export interface TextPart {
  kind: 'text' | 'mention' | 'link'
  text: string
}

/** Splits message text into plain text, @mentions and http(s) links, rendered without v-html. */
export function parseBody(body: string): TextPart[] {
  const parts: TextPart[] = []
  const pattern = /(?<![\p{L}\p{N}_@])@[\p{L}\p{N}][\p{L}\p{N}._-]{1,23}|https?:\/\/[^\s<>"]+[^\s<>".,;:!?)]/gu
  let last = 0
  for (const match of body.matchAll(pattern)) {
    const i = match.index ?? 0
    if (i > last) parts.push({ kind: 'text', text: body.slice(last, i) })
    parts.push({ kind: match[0].startsWith('@') ? 'mention' : 'link', text: match[0] })
    last = i + match[0].length
  }
  if (last < body.length) parts.push({ kind: 'text', text: body.slice(last) })
  return parts
}

export function randomId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(12))
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
}
