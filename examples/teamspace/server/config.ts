//! Everything the backend reads from its environment, read once at start-up.
//! The broadcaster variables have the names a Laravel app uses (REVERB_*), so one `.env` can
//! serve both this backend and `resound --env-file .env`.

import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { DEFAULT_SPAM_RULES, type SpamRules } from './spam.js'

const HERE = path.dirname(fileURLToPath(import.meta.url))
export const ROOT = path.resolve(HERE, '..')

export interface Config {
  host: string
  port: number
  dataDir: string
  distDir: string
  appId: string
  key: string
  secret: string
  /** Where the backend reaches Resound (HTTP API and /metrics). */
  resoundHost: string
  resoundPort: number
  resoundScheme: 'http' | 'https'
  /** What browsers are told to connect to; defaults to the values above. */
  publicWsHost: string
  publicWsPort: number
  sensitiveWordsFile: string
  sensitiveWords: string[]
  maxUploadBytes: number
  /** Hours a session cookie stays valid. */
  sessionHours: number
  secureCookies: boolean
  spam: SpamRules
  /** Redis holding Resound's stream; empty: the follow-ups run in the request path. */
  redisUrl: string
  /** The stream resound.toml's sink writes (`teamspace:{app}:events`). */
  streamKey: string
  /** Filtered messages after which an author is flagged. */
  flagAfter: number
}

function int(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = env[name]
  if (raw === undefined || raw === '') return fallback
  const value = Number(raw)
  if (!Number.isInteger(value) || value < 0) throw new Error(`${name} must be a non-negative integer, got "${raw}"`)
  return value
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const resoundHost = env.REVERB_HOST || '127.0.0.1'
  const resoundPort = int(env, 'REVERB_PORT', 6001)
  const scheme = env.REVERB_SCHEME || 'http'
  if (scheme !== 'http' && scheme !== 'https') throw new Error(`REVERB_SCHEME must be http or https, got "${scheme}"`)
  const appId = env.REVERB_APP_ID || '424242'
  return {
    host: env.TEAMSPACE_HOST || '127.0.0.1',
    port: int(env, 'TEAMSPACE_PORT', 3000),
    dataDir: path.resolve(env.TEAMSPACE_DATA_DIR || path.join(ROOT, 'data')),
    distDir: path.resolve(env.TEAMSPACE_DIST_DIR || path.join(ROOT, 'dist')),
    appId,
    key: env.REVERB_APP_KEY || 'teamspace-key',
    secret: env.REVERB_APP_SECRET || 'teamspace-secret',
    resoundHost,
    resoundPort,
    resoundScheme: scheme,
    publicWsHost: env.TEAMSPACE_WS_HOST || resoundHost,
    publicWsPort: int(env, 'TEAMSPACE_WS_PORT', resoundPort),
    sensitiveWordsFile: path.resolve(env.TEAMSPACE_SENSITIVE_WORDS_FILE || path.join(ROOT, 'config', 'sensitive-words.txt')),
    sensitiveWords: (env.TEAMSPACE_SENSITIVE_WORDS || '').split(',').map((w) => w.trim()).filter(Boolean),
    maxUploadBytes: int(env, 'TEAMSPACE_MAX_UPLOAD_BYTES', 5 * 1024 * 1024),
    sessionHours: int(env, 'TEAMSPACE_SESSION_HOURS', 24 * 7),
    secureCookies: env.TEAMSPACE_SECURE_COOKIES === '1',
    spam: {
      ...DEFAULT_SPAM_RULES,
      burst: Math.max(1, int(env, 'TEAMSPACE_SPAM_BURST', DEFAULT_SPAM_RULES.burst)),
      perMinute: Math.max(1, int(env, 'TEAMSPACE_SPAM_PER_MINUTE', DEFAULT_SPAM_RULES.perMinute)),
      maxDuplicates: Math.max(1, int(env, 'TEAMSPACE_SPAM_DUPLICATES', DEFAULT_SPAM_RULES.maxDuplicates)),
      newUserMs: int(env, 'TEAMSPACE_NEW_USER_HOURS', DEFAULT_SPAM_RULES.newUserMs / 3600_000) * 3600_000,
    },
    redisUrl: env.TEAMSPACE_REDIS_URL ?? '',
    streamKey: env.TEAMSPACE_STREAM_KEY || `teamspace:${appId}:events`,
    flagAfter: Math.max(1, int(env, 'TEAMSPACE_FLAG_AFTER', 3)),
  }
}
