// Shared set-up for the unit tests: a store in a fresh temporary directory and a Pusher
// client with the credentials of the protocol's published test vectors.

import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import Pusher from 'pusher'
import { Store } from '../../server/store.js'

export const VECTOR_APP = { appId: '3', key: '278d425bdf160c739803', secret: '7ad3773142a6692b25b8' }

export function vectorPusher(): Pusher {
  // Port 9 (discard) on loopback: anything this client publishes fails fast, which the
  // callers log and survive; the tests here only need its signing.
  return new Pusher({ ...VECTOR_APP, host: '127.0.0.1', port: '9', useTLS: false, timeout: 500 })
}

export function tempStore(now?: () => number): { store: Store; dir: string; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'teamspace-unit-'))
  const store = new Store(path.join(dir, 'test.sqlite'), now)
  return {
    store,
    dir,
    cleanup: () => {
      store.close()
      fs.rmSync(dir, { recursive: true, force: true })
    },
  }
}
