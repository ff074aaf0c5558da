//! The sensitive-word list: masks listed words and phrases in message text before it is stored
//! or broadcast. Matching is case-insensitive (Unicode-aware) and on whole words only, so
//! "heck" is masked but "check" is not; a phrase matches across any run of whitespace.

import fs from 'node:fs'

const WORD_CHAR = String.raw`[\p{L}\p{N}_]`

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

export interface FilterResult {
  text: string
  /** How many occurrences were masked. */
  masked: number
}

export class WordFilter {
  private readonly pattern: RegExp | null
  readonly size: number

  constructor(words: Iterable<string>) {
    const unique = new Set<string>()
    for (const raw of words) {
      const word = raw.normalize('NFC').trim().replace(/\s+/g, ' ').toLowerCase()
      if (word) unique.add(word)
    }
    this.size = unique.size
    // Longest first, so a phrase wins over a word it starts with.
    const alternatives = [...unique]
      .sort((a, b) => b.length - a.length)
      .map((word) => word.split(' ').map(escapeRegExp).join(String.raw`\s+`))
    this.pattern = alternatives.length
      ? new RegExp(`(?<!${WORD_CHAR})(?:${alternatives.join('|')})(?!${WORD_CHAR})`, 'giu')
      : null
  }

  /** Reads a list file: one word or phrase per line, `#` starts a comment. A missing file is an empty list. */
  static fromFile(file: string, extra: string[] = []): WordFilter {
    let lines: string[] = []
    try {
      lines = fs.readFileSync(file, 'utf8').split(/\r?\n/)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
    return new WordFilter([...lines.map((line) => line.replace(/#.*/, '')), ...extra])
  }

  /** Replaces every character of each match except whitespace with `*`. */
  mask(text: string): FilterResult {
    if (!this.pattern) return { text, masked: 0 }
    let masked = 0
    const out = text.normalize('NFC').replace(this.pattern, (match) => {
      masked += 1
      return match.replace(/\S/gu, '*')
    })
    return { text: out, masked }
  }
}
