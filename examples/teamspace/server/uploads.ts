//! What may be uploaded: a size limit and an allow-list of content types, each checked against
//! the file's first bytes so a renamed executable is not stored as a "PNG". Files are stored
//! under random names in the data directory; the original name is kept only as metadata.

import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'

type Sniff = (bytes: Buffer) => boolean

const startsWith = (...signatures: Array<number[] | string>): Sniff => (bytes) =>
  signatures.some((sig) => {
    const expected = typeof sig === 'string' ? Buffer.from(sig, 'latin1') : Buffer.from(sig)
    return bytes.length >= expected.length && bytes.subarray(0, expected.length).equals(expected)
  })

/** Text must be valid UTF-8 without NUL bytes. */
const isText: Sniff = (bytes) => {
  if (bytes.includes(0)) return false
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(bytes)
    return true
  } catch {
    return false
  }
}

export const ALLOWED_TYPES: Record<string, { ext: string; inline: boolean; sniff: Sniff }> = {
  'image/png': { ext: 'png', inline: true, sniff: startsWith([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]) },
  'image/jpeg': { ext: 'jpg', inline: true, sniff: startsWith([0xff, 0xd8, 0xff]) },
  'image/gif': { ext: 'gif', inline: true, sniff: startsWith('GIF87a', 'GIF89a') },
  'image/webp': { ext: 'webp', inline: true, sniff: (b) => startsWith('RIFF')(b) && b.subarray(8, 12).toString('latin1') === 'WEBP' },
  'application/pdf': { ext: 'pdf', inline: false, sniff: startsWith('%PDF-') },
  'application/zip': { ext: 'zip', inline: false, sniff: startsWith([0x50, 0x4b, 0x03, 0x04], [0x50, 0x4b, 0x05, 0x06]) },
  'text/plain': { ext: 'txt', inline: false, sniff: isText },
  'text/csv': { ext: 'csv', inline: false, sniff: isText },
  'text/markdown': { ext: 'md', inline: false, sniff: isText },
}

export type UploadCheck =
  | { ok: true; type: string; ext: string; name: string }
  | { ok: false; status: 400 | 413 | 415; error: string }

/** Keeps a display name safe to show and to put in a header: no path, no control characters. */
export function cleanFileName(raw: string): string {
  const base = raw.split(/[\\/]/).pop() ?? ''
  const cleaned = base.normalize('NFC').replace(/[\p{Cc}\p{Cf}"]/gu, '').trim().slice(0, 120)
  return cleaned || 'file'
}

export function checkUpload(input: { declaredType: string | undefined; name: string; bytes: Buffer; maxBytes: number }): UploadCheck {
  const type = (input.declaredType ?? '').split(';')[0]!.trim().toLowerCase()
  if (input.bytes.length === 0) return { ok: false, status: 400, error: 'the file is empty' }
  if (input.bytes.length > input.maxBytes) {
    return { ok: false, status: 413, error: `files are limited to ${Math.floor(input.maxBytes / 1024 / 1024)} MB` }
  }
  const allowed = ALLOWED_TYPES[type]
  if (!allowed) return { ok: false, status: 415, error: `files of type "${type || 'unknown'}" cannot be shared` }
  if (!allowed.sniff(input.bytes)) return { ok: false, status: 415, error: `the file's content is not ${type}` }
  return { ok: true, type, ext: allowed.ext, name: cleanFileName(input.name) }
}

export class FileStorage {
  constructor(private readonly dir: string) {
    fs.mkdirSync(dir, { recursive: true })
  }

  /** Writes the bytes under a fresh random name and returns (id, stored file name). */
  save(bytes: Buffer, ext: string): { id: string; storedAs: string } {
    const id = crypto.randomBytes(12).toString('base64url')
    const storedAs = `${id}.${ext}`
    fs.writeFileSync(path.join(this.dir, storedAs), bytes, { flag: 'wx' })
    return { id, storedAs }
  }

  pathOf(storedAs: string): string {
    return path.join(this.dir, path.basename(storedAs))
  }
}
