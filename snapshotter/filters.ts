/**
 * containerd's filter language (its `filters` package), which `ctr snapshots ls`, containerd's garbage collector
 * and CRI send in a List request. One filter is selectors joined by `,` (all must match); a request's several
 * filters are alternatives (any may match); none matches everything.
 *
 * ```
 * selectors := selector ("," selector)*
 * selector  := fieldpath (operator value)?        no operator: the field is present
 * fieldpath := field ("." field)*
 * field     := quoted | [A-Za-z0-9_-]+
 * operator  := "==" | "!=" | "~="                 ~= is an unanchored regular expression search
 * value     := quoted | [^\s,]+
 * quoted    := "…" | /…/ | |…|                    Go string escapes
 * ```
 *
 * The scanner follows containerd's closely (same token rules, same quirks: a space after a value ends the
 * filter with an error, `\.` inside a quoted value is an illegal escape), so a filter containerd accepts is
 * accepted here and means the same. Regular expressions are JavaScript's; RE2's leading `(?i)`-style flags are
 * translated, other RE2-only syntax is refused as INVALID_ARGUMENT instead of silently never matching.
 *
 * @example
 * ```ts
 * const f = parseFilters(['kind==committed,labels."containerd.io/snapshot.ref"', 'name~=^sha256:'])
 * const listed = infos.filter(i => matches(f, snapshotFields(i)))
 * ```
 */
import { SnapshotterError } from './errors.js'
import type { SnapshotInfo } from './types.js'

export type FilterOperator = 'present' | '==' | '!=' | '~='

export interface Selector {
  fieldpath: readonly string[]
  operator: FilterOperator
  /** '' for `present` */
  value: string
  /** compiled at parse time for `~=` */
  re?: RegExp
}

/** Alternatives of conjunctions: matches when any inner list has all its selectors matching. */
export type Filter = ReadonlyArray<readonly Selector[]>

/** A field's value by path, or undefined when the object has no such field. */
export type FieldAdaptor = (fieldpath: readonly string[]) => string | undefined

const EOF = -1
const ILLEGAL = -2
type Rune = number

type TokenKind = 'eof' | 'quoted' | 'value' | 'field' | 'separator' | 'operator' | 'illegal' | 'other'
interface Token { kind: TokenKind, pos: number, text: string }

const isFieldRune = (r: Rune): boolean =>
  r === 0x2d || r === 0x5f || (r >= 0x41 && r <= 0x5a) || (r >= 0x61 && r <= 0x7a) || (r >= 0x30 && r <= 0x39)
const isOperatorRune = (r: Rune): boolean => r === 0x3d || r === 0x21 || r === 0x7e // = ! ~
const isQuoteRune = (r: Rune): boolean => r === 0x2f || r === 0x7c || r === 0x22 // / | "
const isSeparatorRune = (r: Rune): boolean => r === 0x2c || r === 0x2e // , .
const isSpace = (r: Rune): boolean => r >= 0 && /\s/u.test(String.fromCodePoint(r))
// Go's IsLetter|IsDigit|IsNumber|IsGraphic|IsPunct: anything printable
const isValueRune = (r: Rune): boolean => r >= 0 && r !== 0x2c && !isSpace(r) && /[\p{L}\p{N}\p{P}\p{S}\p{M}]/u.test(String.fromCodePoint(r))

function digitVal (r: Rune): number {
  if (r >= 0x30 && r <= 0x39) return r - 0x30
  if (r >= 0x61 && r <= 0x66) return r - 0x61 + 10
  if (r >= 0x41 && r <= 0x46) return r - 0x41 + 10
  return 16
}

/** containerd's scanner: `pos` is where the current rune starts, `ppos` where the next one does. */
class Scanner {
  readonly #input: string
  pos = 0
  ppos = 0
  #value = false

  constructor (input: string) { this.#input = input }

  next (): Rune {
    if (this.ppos >= this.#input.length) return EOF
    this.pos = this.ppos
    const r = this.#input.codePointAt(this.ppos)!
    this.ppos += r > 0xffff ? 2 : 1
    return r === 0 ? ILLEGAL : r
  }

  peek (): Rune {
    const { pos, ppos } = this
    const r = this.next()
    this.pos = pos
    this.ppos = ppos
    return r
  }

  scan (): Token {
    let ch = this.next()
    let pos = this.pos
    for (;;) {
      if (ch === EOF) return { kind: 'eof', pos: this.#input.length, text: '' }
      if (ch === ILLEGAL) return { kind: 'illegal', pos, text: '' }
      if (isQuoteRune(ch)) {
        const ok = this.#scanQuoted(ch)
        return { kind: ok ? 'quoted' : 'illegal', pos, text: this.#input.slice(pos, this.ppos) }
      }
      if (isSeparatorRune(ch)) {
        this.#value = false
        return { kind: 'separator', pos, text: this.#input.slice(pos, this.ppos) }
      }
      if (isOperatorRune(ch)) {
        while (isOperatorRune(this.peek())) this.next()
        this.#value = true
        return { kind: 'operator', pos, text: this.#input.slice(pos, this.ppos) }
      }
      if (isSpace(ch)) {
        ch = this.next()
        pos = this.pos
        continue
      }
      if (this.#value) {
        while (isValueRune(this.peek())) this.next()
        this.#value = false
        return { kind: 'value', pos, text: this.#input.slice(pos, this.ppos) }
      }
      if (isFieldRune(ch)) {
        while (isFieldRune(this.peek())) this.next()
        return { kind: 'field', pos, text: this.#input.slice(pos, this.ppos) }
      }
      return { kind: 'other', pos, text: String.fromCodePoint(ch) }
    }
  }

  #scanQuoted (quote: Rune): boolean {
    let legal = true
    let ch = this.next()
    while (ch !== quote) {
      if (ch === 0x0a || ch < 0) return false // not terminated
      if (ch === 0x5c) {
        const [next, ok] = this.#scanEscape(quote)
        ch = next
        if (!ok) legal = false
      } else {
        ch = this.next()
      }
    }
    return legal
  }

  #scanEscape (quote: Rune): [Rune, boolean] {
    const ch = this.next()
    if ('abfnrtv\\'.includes(String.fromCodePoint(Math.max(ch, 0))) || ch === quote) return [this.next(), true]
    if (ch >= 0x30 && ch <= 0x37) return this.#scanDigits(ch, 8, 3)
    if (ch === 0x78) return this.#scanDigits(this.next(), 16, 2) // x
    if (ch === 0x75) return this.#scanDigits(this.next(), 16, 4) // u
    if (ch === 0x55) return this.#scanDigits(this.next(), 16, 8) // U
    return [ch, false]
  }

  #scanDigits (first: Rune, base: number, n: number): [Rune, boolean] {
    let ch = first
    while (n > 0 && digitVal(ch) < base) {
      ch = this.next()
      n--
    }
    return [ch, n === 0]
  }
}

/** containerd's `unquote`: Go string syntax with `"`, `/` or `|` as the delimiter (the latter two for regexps). */
export function unquote (s: string): string {
  const quote = s[0]
  if (s.length < 2 || quote !== s[s.length - 1] || (quote !== '"' && quote !== '/' && quote !== '|')) {
    throw new SyntaxError('quote syntax error')
  }
  const body = s.slice(1, -1)
  if (body.includes('\n')) throw new SyntaxError('quote syntax error')
  if (!body.includes('\\') && !body.includes(quote)) return body
  // bytes, not chars: `\xff` is one raw byte in Go, so the result is decoded as UTF-8 at the end
  const out: number[] = []
  const push = (cp: number): void => { out.push(...Buffer.from(String.fromCodePoint(cp), 'utf8')) }
  let i = 0
  const hex = (n: number): number => {
    const h = body.slice(i, i + n)
    if (h.length < n || !/^[0-9a-fA-F]+$/.test(h)) throw new SyntaxError('quote syntax error')
    i += n
    return parseInt(h, 16)
  }
  while (i < body.length) {
    const cp = body.codePointAt(i)!
    const c = String.fromCodePoint(cp)
    if (c === quote) throw new SyntaxError('quote syntax error')
    if (c !== '\\') { push(cp); i += c.length; continue }
    const e = body[i + 1]
    i += 2
    switch (e) {
      case 'a': out.push(7); break
      case 'b': out.push(8); break
      case 'f': out.push(12); break
      case 'n': out.push(10); break
      case 'r': out.push(13); break
      case 't': out.push(9); break
      case 'v': out.push(11); break
      case '\\': out.push(0x5c); break
      case 'x': out.push(hex(2)); break
      case 'u': push(hex(4)); break
      case 'U': {
        const v = hex(8)
        if (v > 0x10ffff) throw new SyntaxError('quote syntax error')
        push(v)
        break
      }
      case '0': case '1': case '2': case '3': case '4': case '5': case '6': case '7': {
        const o = (e + body.slice(i, i + 2))
        if (!/^[0-7]{3}$/.test(o) || parseInt(o, 8) > 255) throw new SyntaxError('quote syntax error')
        out.push(parseInt(o, 8))
        i += 2
        break
      }
      case '"': case '\'': case '|': case '/':
        if (e !== quote) throw new SyntaxError('quote syntax error')
        out.push(e.charCodeAt(0))
        break
      default:
        throw new SyntaxError('quote syntax error')
    }
  }
  return Buffer.from(out).toString('utf8')
}

/** RE2 allows leading inline flags `(?i)`, `(?s)`, `(?m)`, `(?is)`; JavaScript takes them as RegExp flags. */
function compileRegexp (source: string): RegExp {
  const m = /^\(\?([ims]+)\)/.exec(source)
  const flags = m === null ? '' : [...new Set(m[1]!)].join('')
  return new RegExp(m === null ? source : source.slice(m[0].length), flags)
}

class Parser {
  readonly #input: string
  readonly #scanner: Scanner

  constructor (input: string) {
    this.#input = input
    this.#scanner = new Scanner(input)
  }

  parse (): Selector[] {
    const all = [this.#selector()]
    for (;;) {
      const r = this.#scanner.peek()
      if (r === EOF) return all
      if (r !== 0x2c) throw this.#error(this.#scanner.ppos, `unexpected input: ${r < 0 ? 'illegal' : String.fromCodePoint(r)}`)
      const t = this.#scanner.scan()
      if (t.kind !== 'separator') throw this.#error(t.pos, 'expected a separator')
      all.push(this.#selector())
    }
  }

  #selector (): Selector {
    const fieldpath = this.#fieldpath()
    const r = this.#scanner.peek()
    if (r === 0x2c || r === EOF) return { fieldpath, operator: 'present', value: '' }
    const operator = this.#operator()
    const t = this.#scanner.scan()
    let value: string
    if (t.kind === 'value' || t.kind === 'field') value = t.text
    else if (t.kind === 'quoted') value = this.#unquote(t)
    else throw this.#error(t.pos, 'expected value or quoted')
    if (operator !== '~=') return { fieldpath, operator, value }
    try {
      return { fieldpath, operator, value, re: compileRegexp(value) }
    } catch (err) {
      throw this.#error(t.pos, `invalid regular expression ${JSON.stringify(value)}: ${(err as Error).message}`)
    }
  }

  #fieldpath (): string[] {
    const path = [this.#field()]
    while (this.#scanner.peek() === 0x2e) {
      const t = this.#scanner.scan()
      if (t.kind !== 'separator') throw this.#error(t.pos, 'expected a field separator (`.`)')
      path.push(this.#field())
    }
    return path
  }

  #field (): string {
    const t = this.#scanner.scan()
    if (t.kind === 'field') return t.text
    if (t.kind === 'quoted') return this.#unquote(t)
    throw this.#error(t.pos, 'expected field or quoted')
  }

  #operator (): FilterOperator {
    const t = this.#scanner.scan()
    if (t.kind !== 'operator') throw this.#error(t.pos, 'expected an operator ("=="|"!="|"~=")')
    if (t.text === '==' || t.text === '!=' || t.text === '~=') return t.text
    throw this.#error(t.pos, `unsupported operator ${JSON.stringify(t.text)}`)
  }

  #unquote (t: Token): string {
    try {
      return unquote(t.text)
    } catch (err) {
      throw this.#error(t.pos, `unquoting failed: ${(err as Error).message}`)
    }
  }

  #error (pos: number, msg: string): SnapshotterError {
    const s = this.#input
    const where = pos < s.length ? `[${s.slice(0, pos)} >|${s.slice(pos, pos + 1)}|< ${s.slice(pos + 1)}]` : `[${s}]`
    return new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_INVALID_ARGUMENT', `filters: parse error: ${where}: ${msg}`)
  }
}

/** One filter: its selectors, all of which must match (none for '': matches everything). */
export function parseFilter (s: string): Selector[] {
  if (s === '') return []
  return new Parser(s).parse()
}

/** A request's filters, any of which may match; an empty list matches everything. Throws INVALID_ARGUMENT. */
export function parseFilters (filters: readonly string[]): Filter {
  if (filters.length === 0) return [[]]
  return filters.map(parseFilter)
}

function matchSelector (s: Selector, fields: FieldAdaptor): boolean {
  const value = fields(s.fieldpath)
  switch (s.operator) {
    case 'present': return value !== undefined
    case '==': return value !== undefined && value === s.value
    case '!=': return (value ?? '') !== s.value
    case '~=': return s.re!.test(value ?? '')
  }
}

export function matches (filter: Filter, fields: FieldAdaptor): boolean {
  return filter.some(all => all.every(s => matchSelector(s, fields)))
}

/**
 * The fields of a snapshot as containerd's snapshot adaptor exposes them: `kind` (`view|active|committed`),
 * `name` and `parent` (always present, '' for none: containerd finds the bottom layers with `parent==""`),
 * `labels.<key>` (the key may itself hold dots: the rest of the path is joined back with `.`).
 */
export function snapshotFields (info: SnapshotInfo): FieldAdaptor {
  return (path) => {
    switch (path[0]) {
      case 'kind': return info.kind
      // always present, '' for none: containerd finds a claimed bottom layer with `parent==""`
      case 'name': return info.name
      case 'parent': return info.parent
      case 'labels': {
        if (path.length < 2) return undefined
        const key = path.slice(1).join('.')
        return Object.hasOwn(info.labels, key) ? info.labels[key] : undefined
      }
      default: return undefined
    }
  }
}
