import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { describe, test } from 'node:test'
import { WordFilter } from '../../server/wordFilter.js'

describe('WordFilter', () => {
  const filter = new WordFilter(['darn', 'heck', 'Project Nightingale', 'naïve'])

  test('masks whole words, case-insensitively, keeping the length', () => {
    assert.deepEqual(filter.mask('Darn it, HECK!'), { text: '**** it, ****!', masked: 2 })
  })

  test('leaves words that merely contain a listed word', () => {
    assert.deepEqual(filter.mask('check the darning needle'), { text: 'check the darning needle', masked: 0 })
  })

  test('matches phrases across any whitespace and keeps the spacing', () => {
    assert.equal(filter.mask('about project\n  nightingale today').text, 'about *******\n  *********** today')
  })

  test('handles non-ASCII words and their case', () => {
    assert.equal(filter.mask('NAÏVE plan').text, '***** plan')
    assert.equal(filter.mask('naïveté stays').text, 'naïveté stays')
  })

  test('treats regex characters in the list literally', () => {
    const f = new WordFilter(['a.b', 'c++'])
    assert.equal(f.mask('axb a.b').text, 'axb ***')
  })

  test('an empty list changes nothing', () => {
    assert.deepEqual(new WordFilter([]).mask('darn'), { text: 'darn', masked: 0 })
  })

  test('reads a list file with comments and blank lines; a missing file is an empty list', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wf-'))
    const file = path.join(dir, 'words.txt')
    fs.writeFileSync(file, '# comment\n\nfoo  # trailing comment\n  bar baz \n')
    const f = WordFilter.fromFile(file, ['extra'])
    assert.equal(f.size, 3)
    assert.equal(f.mask('foo bar  baz extra qux').text, '*** ***  *** ***** qux')
    assert.equal(WordFilter.fromFile(path.join(dir, 'missing.txt')).size, 0)
    fs.rmSync(dir, { recursive: true })
  })
})
