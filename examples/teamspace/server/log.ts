//! One-line structured logs on stdout: `time level message key=value …`. Message bodies,
//! tokens and secrets are never logged.

import type { Logger } from './chat.js'

function format(level: string, msg: string, fields: Record<string, unknown> = {}): string {
  const extra = Object.entries(fields).map(([k, v]) => `${k}=${typeof v === 'string' ? JSON.stringify(v) : String(v)}`)
  return [new Date().toISOString(), level, msg, ...extra].join(' ')
}

export function consoleLogger(quiet = false): Logger {
  return {
    info: (msg, fields) => { if (!quiet) console.log(format('INFO', msg, fields)) },
    warn: (msg, fields) => console.warn(format('WARN', msg, fields)),
  }
}

export const silentLogger: Logger = { info: () => {}, warn: () => {} }
