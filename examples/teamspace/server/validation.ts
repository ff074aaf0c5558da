//! Validation of what users type: names, message bodies, room names, strokes. Each function
//! returns the cleaned value or an error sentence meant for the user.

import { BOARD_HEIGHT, BOARD_WIDTH, MAX_STROKE_POINTS, type Stroke } from '../shared/types.js'

export const MAX_MESSAGE_CHARS = 2000
export type Checked<T> = { ok: true; value: T } | { ok: false; error: string }

const NAME = /^[\p{L}\p{N}][\p{L}\p{N}._-]{1,23}$/u

/** Sign-in names: 2–24 letters, digits, `.`, `_` or `-`, so `@name` mentions are unambiguous. */
export function checkName(raw: unknown): Checked<string> {
  const name = typeof raw === 'string' ? raw.normalize('NFC').trim() : ''
  if (!NAME.test(name)) return { ok: false, error: 'Names are 2–24 letters, digits, dots, dashes or underscores.' }
  return { ok: true, value: name }
}

/** Message text: trimmed, control characters other than newline and tab removed, 1–2000 characters. */
export function checkMessageBody(raw: unknown, allowEmpty = false): Checked<string> {
  if (typeof raw !== 'string') return allowEmpty ? { ok: true, value: '' } : { ok: false, error: 'A message needs some text.' }
  const body = raw.normalize('NFC').replace(/\r\n?/g, '\n').replace(/[^\P{Cc}\n\t]/gu, '').trim()
  if (!body && !allowEmpty) return { ok: false, error: 'A message needs some text.' }
  if ([...body].length > MAX_MESSAGE_CHARS) return { ok: false, error: `Messages are limited to ${MAX_MESSAGE_CHARS} characters.` }
  return { ok: true, value: body }
}

export function checkClientId(raw: unknown): string | null {
  return typeof raw === 'string' && /^[A-Za-z0-9_-]{1,64}$/.test(raw) ? raw : null
}

export function checkRoomName(raw: unknown): Checked<string> {
  const name = typeof raw === 'string' ? raw.normalize('NFC').trim().toLowerCase().replace(/\s+/g, '-') : ''
  if (!/^[\p{L}\p{N}][\p{L}\p{N}_-]{1,31}$/u.test(name)) return { ok: false, error: 'Room names are 2–32 letters, digits, dashes or underscores.' }
  return { ok: true, value: name }
}

export function checkTopic(raw: unknown): string {
  return typeof raw === 'string' ? raw.replace(/\p{Cc}/gu, '').trim().slice(0, 120) : ''
}

/** A finished whiteboard stroke; the author is the signed-in user, whatever the body claims. */
export function checkStroke(raw: unknown, userId: number): Checked<Stroke> {
  if (typeof raw !== 'object' || raw === null) return { ok: false, error: 'A stroke is an object.' }
  const s = raw as Record<string, unknown>
  if (typeof s.id !== 'string' || !/^[A-Za-z0-9_-]{8,64}$/.test(s.id)) return { ok: false, error: 'Bad stroke id.' }
  if (typeof s.color !== 'string' || !/^#[0-9a-fA-F]{6}$/.test(s.color)) return { ok: false, error: 'Bad stroke colour.' }
  if (typeof s.width !== 'number' || !(s.width >= 1 && s.width <= 40)) return { ok: false, error: 'Bad stroke width.' }
  const points = s.points
  if (!Array.isArray(points) || points.length < 2 || points.length % 2 !== 0 || points.length > MAX_STROKE_POINTS * 2) {
    return { ok: false, error: 'A stroke has 1 to 400 points.' }
  }
  const clean: number[] = []
  for (let i = 0; i < points.length; i += 2) {
    const x = points[i], y = points[i + 1]
    if (typeof x !== 'number' || typeof y !== 'number' || !Number.isFinite(x) || !Number.isFinite(y)) {
      return { ok: false, error: 'Stroke points are numbers.' }
    }
    clean.push(Math.round(Math.min(Math.max(x, 0), BOARD_WIDTH)), Math.round(Math.min(Math.max(y, 0), BOARD_HEIGHT)))
  }
  return { ok: true, value: { id: s.id, userId, color: s.color.toLowerCase(), width: Math.round(s.width), points: clean } }
}

/** Names mentioned as `@name`, lower-cased and de-duplicated, in order of appearance. */
export function findMentions(text: string): string[] {
  const seen = new Set<string>()
  for (const match of text.matchAll(/(?<![\p{L}\p{N}_@])@([\p{L}\p{N}][\p{L}\p{N}._-]{1,23})/gu)) {
    seen.add(match[1]!.replace(/[.-]+$/, '').toLowerCase())
  }
  return [...seen]
}
