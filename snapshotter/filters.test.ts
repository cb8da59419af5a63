import { test } from 'node:test'
import assert from 'node:assert/strict'
import { matches, parseFilter, parseFilters, snapshotFields, unquote } from './filters.js'
import type { SnapshotInfo } from './types.js'

const info = (name: string, kind: SnapshotInfo['kind'], parent = '', labels: Record<string, string> = {}): SnapshotInfo =>
  ({ name, kind, parent, labels, createdAt: new Date(0), updatedAt: new Date(0) })

const snaps = [
  info('sha256:aaa', 'committed', '', { 'containerd.io/snapshot.ref': 'sha256:aaa', 'x.y': 'z' }),
  info('sha256:bbb', 'committed', 'sha256:aaa', { 'containerd.io/snapshot/nydus-bootstrap': 'true' }),
  info('default/1/extract', 'active', 'sha256:bbb'),
  info('view-1', 'view', 'sha256:bbb', { team: 'a b' })
]

const names = (filters: string[]): string[] => snaps.filter(s => matches(parseFilters(filters), snapshotFields(s))).map(s => s.name)

test('selectors: equality, inequality, presence, regexp, on name, parent, kind and labels', () => {
  assert.deepEqual(names(['kind==committed']), ['sha256:aaa', 'sha256:bbb'])
  assert.deepEqual(names(['kind!=committed']), ['default/1/extract', 'view-1'])
  assert.deepEqual(names(['parent==sha256:bbb']), ['default/1/extract', 'view-1'])
  // name and parent are always present, '' for none (containerd's snapshot adaptor)
  assert.deepEqual(names(['parent']), snaps.map(s => s.name))
  assert.deepEqual(names(['parent==""']), ['sha256:aaa'])
  assert.deepEqual(names(['parent!=sha256:bbb']), ['sha256:aaa', 'sha256:bbb'])
  // an absent label is not present, and != of it compares ''
  assert.deepEqual(names(['labels.team!=x']), snaps.map(s => s.name))
  assert.deepEqual(names(['name~=^sha256:']), ['sha256:aaa', 'sha256:bbb'])
  assert.deepEqual(names(['name~=extract']), ['default/1/extract'])
  assert.deepEqual(names(['name==default/1/extract']), ['default/1/extract'])
  assert.deepEqual(names(['labels."containerd.io/snapshot.ref"==sha256:aaa']), ['sha256:aaa'])
  assert.deepEqual(names(['labels."containerd.io/snapshot/nydus-bootstrap"']), ['sha256:bbb'])
  // an unquoted dotted path is joined back into one key
  assert.deepEqual(names(['labels.x.y==z']), ['sha256:aaa'])
  assert.deepEqual(names(['labels.team=="a b"']), ['view-1'])
  assert.deepEqual(names(['unknown']), [])
  assert.deepEqual(names(['labels']), [])
})

test('comma is AND inside a filter, several filters are OR, none or an empty one matches all', () => {
  assert.deepEqual(names(['kind==committed,parent==sha256:aaa']), ['sha256:bbb'])
  assert.deepEqual(names(['kind==view', 'kind==active']), ['default/1/extract', 'view-1'])
  assert.deepEqual(names(['kind==view', 'name==sha256:aaa']), ['sha256:aaa', 'view-1'])
  assert.deepEqual(names([]), snaps.map(s => s.name))
  assert.deepEqual(names(['']), snaps.map(s => s.name))
  assert.deepEqual(names(['kind==view', '']), snaps.map(s => s.name))
})

test('the parse tree of a filter', () => {
  assert.deepEqual(parseFilter('labels."a.b",name==x').map(s => [s.fieldpath, s.operator, s.value]), [
    [['labels', 'a.b'], 'present', ''],
    [['name'], '==', 'x']
  ])
  // spaces around operators and after commas are allowed
  assert.deepEqual(parseFilter(' name == x, kind !=view').map(s => [s.fieldpath, s.operator, s.value]), [
    [['name'], '==', 'x'],
    [['kind'], '!=', 'view']
  ])
  // a value may hold dots, slashes, colons and '=' after its first character
  assert.equal(parseFilter('name==a.b/c:d=e')[0]!.value, 'a.b/c:d=e')
  // regexps quoted with / or |, with their own delimiter escaped
  assert.equal(parseFilter('name~=/^sha256:[a-f]+$/')[0]!.value, '^sha256:[a-f]+$')
  assert.equal(parseFilter('name~=|a\\|b|')[0]!.value, 'a|b')
  assert.equal(parseFilter('name~=/a\\/b/')[0]!.value, 'a/b')
  // unquoted regexp values keep their backslashes
  assert.equal(parseFilter('name~=a\\.b')[0]!.value, 'a\\.b')
  assert.equal(parseFilter('labels."k"=="\\u00e9\\x41\\101\\n"')[0]!.value, 'éAA\n')
})

test('RE2 inline flags become JavaScript flags', () => {
  const f = parseFilters(['name~=(?i)^SHA256:AAA'])
  assert.equal(matches(f, snapshotFields(snaps[0]!)), true)
  assert.equal(matches(f, snapshotFields(snaps[1]!)), false)
})

test('bad syntax is INVALID_ARGUMENT with the position', () => {
  const bad = [
    'name==', // no value
    '==x', // no field
    'name=x', // unsupported operator
    'name===x',
    'name==x ', // trailing space after a value
    'name==x,', // dangling separator
    'name==x kind==view', // missing comma
    'labels."unterminated',
    'labels."a\\qb"', // illegal escape
    'name~=/a\\.b/', // containerd refuses \. inside a quoted value too
    'name~=(', // bad regexp
    'name==.x', // a value cannot start with a separator
    'a..b',
    'name==x\u0000'
  ]
  for (const s of bad) {
    assert.throws(() => parseFilters([s]), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'RAFSPEER_ERR_SNAPSHOT_INVALID_ARGUMENT', s)
      assert.match(err.message, /^filters: parse error: \[/, s)
      return true
    }, s)
  }
  assert.throws(() => parseFilters(['kind==view', 'name==']), { code: 'RAFSPEER_ERR_SNAPSHOT_INVALID_ARGUMENT' })
})

test('unquote follows Go string syntax with " / | delimiters', () => {
  assert.equal(unquote('"plain"'), 'plain')
  assert.equal(unquote('"a\\"b"'), 'a"b')
  assert.equal(unquote('/a\\/b/'), 'a/b')
  assert.equal(unquote('"\\t\\\\"'), '\t\\')
  assert.equal(unquote('"\\U0001F600"'), '\u{1F600}')
  for (const s of ['"', '"a', '"a/', '\'a\'', '"a\\/b"', '"\\400"', '"\\xZZ"']) assert.throws(() => unquote(s), SyntaxError, s)
})
