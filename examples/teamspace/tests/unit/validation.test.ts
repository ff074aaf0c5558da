// Input rules: names, message bodies, mentions, strokes, uploads.

import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { checkUpload, cleanFileName } from '../../server/uploads.js'
import { checkMessageBody, checkName, checkStroke, findMentions } from '../../server/validation.js'

const PNG = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13])

describe('validation', () => {
  test('names', () => {
    assert.deepEqual(checkName('  Zoë_1 '), { ok: true, value: 'Zoë_1' })
    for (const bad of ['a', 'two words', '@bob', '-lead', 'x'.repeat(25), 42]) assert.equal(checkName(bad).ok, false, String(bad))
  })

  test('message bodies are trimmed, stripped of control characters and limited', () => {
    assert.deepEqual(checkMessageBody('  hi\u0007 there\r\nnext \t '), { ok: true, value: 'hi there\nnext' })
    assert.equal(checkMessageBody('   ').ok, false)
    assert.equal(checkMessageBody('x'.repeat(2001)).ok, false)
    assert.equal(checkMessageBody('😀'.repeat(2000)).ok, true)
  })

  test('mentions', () => {
    assert.deepEqual(findMentions('@Alice and @bob, ping @alice. mail me@example.com @carol.'), ['alice', 'bob', 'carol'])
  })

  test('strokes are clamped to the board and owned by the caller', () => {
    const res = checkStroke({ id: 'abcdefgh12', color: '#AABBCC', width: 6.4, points: [-5, 10, 2000, 999.6], userId: 999 }, 7)
    assert.deepEqual(res, { ok: true, value: { id: 'abcdefgh12', userId: 7, color: '#aabbcc', width: 6, points: [0, 10, 1600, 1000] } })
    assert.equal(checkStroke({ id: 'abcdefgh12', color: 'red', width: 6, points: [1, 2] }, 7).ok, false)
    assert.equal(checkStroke({ id: 'abcdefgh12', color: '#000000', width: 6, points: [1, 2, 3] }, 7).ok, false)
    assert.equal(checkStroke({ id: 'abcdefgh12', color: '#000000', width: 6, points: new Array(802).fill(1) }, 7).ok, false)
  })
})

describe('uploads', () => {
  const base = { name: 'shot.png', maxBytes: 1024 }

  test('accepts an allowed type whose bytes match it', () => {
    assert.deepEqual(checkUpload({ ...base, declaredType: 'image/png', bytes: PNG }), { ok: true, type: 'image/png', ext: 'png', name: 'shot.png' })
  })

  test('refuses types outside the allow-list, mismatched content, empty and oversized files', () => {
    assert.equal((checkUpload({ ...base, declaredType: 'image/svg+xml', bytes: Buffer.from('<svg/>') }) as { status: number }).status, 415)
    assert.equal((checkUpload({ ...base, declaredType: 'image/png', bytes: Buffer.from('MZ\x90\x00 not a png') }) as { status: number }).status, 415)
    assert.equal((checkUpload({ ...base, declaredType: 'text/plain', bytes: Buffer.from([0x61, 0, 0x62]) }) as { status: number }).status, 415)
    assert.equal((checkUpload({ ...base, declaredType: 'image/png', bytes: Buffer.alloc(0) }) as { status: number }).status, 400)
    assert.equal((checkUpload({ ...base, declaredType: 'image/png', bytes: Buffer.concat([PNG, Buffer.alloc(2000)]) }) as { status: number }).status, 413)
  })

  test('file names lose paths and control characters', () => {
    assert.equal(cleanFileName('../../etc/pass\u0000wd'), 'passwd')
    assert.equal(cleanFileName('C:\\temp\\"quote".txt'), 'quote.txt')
    assert.equal(cleanFileName('\u202e'), 'file')
  })
})
