import { test } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { MAX_URL_BYTES, parseRoute, resolveRange, type Route } from './routes.js'
import type { OciAnswer } from './errors.js'

const HEX = 'a'.repeat(64)
const DIGEST = `sha256:${HEX}`

function isAnswer (r: Route | OciAnswer): r is OciAnswer {
  return 'status' in r
}

/** The answer a request gets; fails the test when it parsed as a route. */
function refused (method: string | undefined, url: string | undefined): OciAnswer {
  const r = parseRoute(method, url)
  assert.ok(isAnswer(r), `${method ?? ''} ${url ?? ''} should be refused, parsed as ${JSON.stringify(r)}`)
  return r
}

test('/v2 and /v2/ are the base route, with or without a query', () => {
  assert.deepEqual(parseRoute('GET', '/v2'), { kind: 'base' })
  assert.deepEqual(parseRoute('HEAD', '/v2/'), { kind: 'base' })
  assert.deepEqual(parseRoute('GET', '/v2/?ns=docker.io'), { kind: 'base' })
})

test('manifests are routed by tag and by digest, blobs by digest', () => {
  assert.deepEqual(parseRoute('GET', '/v2/library/alpine/manifests/3.19'),
    { kind: 'manifest', name: 'library/alpine', reference: '3.19', byDigest: false, ns: undefined })
  assert.deepEqual(parseRoute('HEAD', `/v2/library/alpine/manifests/${DIGEST}`),
    { kind: 'manifest', name: 'library/alpine', reference: DIGEST, byDigest: true, ns: undefined })
  assert.deepEqual(parseRoute('GET', `/v2/alpine/blobs/${DIGEST}`), { kind: 'blob', name: 'alpine', digest: DIGEST, ns: undefined })
  const sha512 = `sha512:${'0'.repeat(128)}`
  assert.deepEqual(parseRoute('GET', `/v2/x/blobs/${sha512}`), { kind: 'blob', name: 'x', digest: sha512, ns: undefined })
})

test('names of several segments keep every segment', () => {
  assert.deepEqual(parseRoute('GET', '/v2/a/b/c/manifests/latest'),
    { kind: 'manifest', name: 'a/b/c', reference: 'latest', byDigest: false, ns: undefined })
  assert.deepEqual(parseRoute('GET', `/v2/team/app-x/api_1/blobs/${DIGEST}`),
    { kind: 'blob', name: 'team/app-x/api_1', digest: DIGEST, ns: undefined })
})

test('ns= names the upstream: decoded, lower-cased, ports kept', () => {
  const ns = (q: string): string | undefined => {
    const r = parseRoute('GET', `/v2/a/manifests/latest?${q}`)
    assert.ok(!isAnswer(r) && r.kind === 'manifest', q)
    return r.ns
  }
  assert.equal(ns('ns=docker.io'), 'docker.io')
  assert.equal(ns('ns=127.0.0.1%3A5000'), '127.0.0.1:5000')
  assert.equal(ns('ns=127.0.0.1:5000'), '127.0.0.1:5000')
  assert.equal(ns('ns=GHCR.IO'), 'ghcr.io')
  assert.equal(ns('ns=%5B%3A%3A1%5D%3A5000'), '[::1]:5000')
  assert.equal(ns('foo=bar&ns=quay.io'), 'quay.io')
  assert.equal(ns('xns=quay.io'), undefined)
})

test('a bad ns= is 400 NAME_INVALID: bad host, bad escape, port 0 or past 65535', () => {
  for (const q of ['ns=', 'ns=-bad.io', 'ns=a_b.io', 'ns=docker.io/x', 'ns=%E0%A4%A', 'ns=host:0', 'ns=host:70000', 'ns=%5B%3A%3A1%5D%3A0', 'ns=host:123456']) {
    const a = refused('GET', `/v2/a/manifests/latest?${q}`)
    assert.equal(a.status, 400, q)
    assert.equal(a.code, 'NAME_INVALID', q)
  }
})

test('methods other than GET and HEAD are 405 with an Allow header', () => {
  for (const m of ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'get', undefined]) {
    const a = refused(m, '/v2/a/manifests/latest')
    assert.equal(a.status, 405, String(m))
    assert.equal(a.code, 'UNSUPPORTED')
    assert.deepEqual(a.headers, { allow: 'GET, HEAD' })
  }
})

test('., .. and empty name segments are 400 NAME_INVALID', () => {
  for (const p of ['/v2/./manifests/latest', '/v2/a/../b/manifests/latest', '/v2/a//b/manifests/latest',
    '/v2//manifests/latest', `/v2/a/./blobs/${DIGEST}`, '/v2/../../etc/manifests/latest']) {
    const a = refused('GET', p)
    assert.equal(a.status, 400, p)
    assert.equal(a.code, 'NAME_INVALID', p)
  }
})

test('upper-case, percent-escaped or otherwise ungrammatical names are 400 NAME_INVALID', () => {
  for (const p of ['/v2/Library/alpine/manifests/latest', '/v2/library%2Falpine/manifests/latest', '/v2/a%2e/manifests/latest',
    '/v2/a b/manifests/latest', '/v2/-a/manifests/latest', '/v2/a--/manifests/latest', '/v2/a@b/manifests/latest']) {
    const a = refused('GET', p)
    assert.equal(a.status, 400, p)
    assert.equal(a.code, 'NAME_INVALID', p)
  }
})

test('bad digests are 400 DIGEST_INVALID, for blobs and for manifests', () => {
  const bad = [`sha256:${'a'.repeat(63)}`, `sha256:${'a'.repeat(65)}`, `sha256:${'A'.repeat(64)}`, `md5:${'a'.repeat(32)}`,
    'sha256:', `sha256:${'g'.repeat(64)}`, `sha256:${'a'.repeat(128)}`]
  for (const d of bad) {
    for (const kind of ['blobs', 'manifests']) {
      const a = refused('GET', `/v2/a/${kind}/${d}`)
      assert.equal(a.status, 400, `${kind} ${d}`)
      assert.equal(a.code, 'DIGEST_INVALID', `${kind} ${d}`)
    }
  }
  // a blob is never addressed by tag
  assert.equal(refused('GET', '/v2/a/blobs/latest').code, 'DIGEST_INVALID')
})

test('bad tags are 400 TAG_INVALID', () => {
  for (const t of ['.hidden', '-x', 'a%2Fb', 'a b', 'x'.repeat(129), 'tag!', '']) {
    const a = refused('GET', `/v2/a/manifests/${t}`)
    assert.equal(a.status, 400, t)
    assert.equal(a.code, 'TAG_INVALID', t)
  }
  assert.ok(!isAnswer(parseRoute('GET', `/v2/a/manifests/${'x'.repeat(128)}`)))
})

test('paths outside the pull API are 404 NAME_UNKNOWN', () => {
  for (const p of ['/v2/_catalog', '/v3/x', '/v2/x/tags/list', '/', '', '/v2x', '/v2/a/manifests', '/v2/a/referrers/x', '/v1/_ping']) {
    const a = refused('GET', p)
    assert.equal(a.status, 404, p)
    assert.equal(a.code, 'NAME_UNKNOWN', p)
  }
  assert.equal(refused('GET', undefined).status, 404)
})

test('a request target past MAX_URL_BYTES is 414, one at the limit is parsed', () => {
  const head = '/v2/a/manifests/latest?pad='
  const atLimit = head + 'x'.repeat(MAX_URL_BYTES - head.length)
  assert.ok(!isAnswer(parseRoute('GET', atLimit)))
  const a = refused('GET', atLimit + 'x')
  assert.equal(a.status, 414)
  assert.equal(a.code, 'NAME_INVALID')
})

test('resolveRange: no header is none, open and closed ranges are end-exclusive', () => {
  assert.equal(resolveRange(undefined, 10), 'none')
  assert.deepEqual(resolveRange('bytes=0-', 10), { start: 0, end: 10 })
  assert.deepEqual(resolveRange('bytes=5-9', 10), { start: 5, end: 10 })
  assert.deepEqual(resolveRange('bytes=5-5', 10), { start: 5, end: 6 })
  assert.deepEqual(resolveRange('bytes=9-', 10), { start: 9, end: 10 })
})

test('resolveRange: an end past the size is clamped to the size', () => {
  assert.deepEqual(resolveRange('bytes=5-100', 10), { start: 5, end: 10 })
  assert.deepEqual(resolveRange('bytes=0-9999999999999999', 10), { start: 0, end: 10 })
})

test('resolveRange: suffix ranges take the last N bytes, -0 and any range of an empty blob are unsatisfiable', () => {
  assert.deepEqual(resolveRange('bytes=-3', 10), { start: 7, end: 10 })
  assert.deepEqual(resolveRange('bytes=-10', 10), { start: 0, end: 10 })
  assert.deepEqual(resolveRange('bytes=-50', 10), { start: 0, end: 10 })
  assert.equal(resolveRange('bytes=-0', 10), 'unsatisfiable')
  assert.equal(resolveRange('bytes=-3', 0), 'unsatisfiable')
  assert.equal(resolveRange('bytes=0-', 0), 'unsatisfiable')
})

test('resolveRange: a start at or past the size, an end before the start, several ranges or garbage are unsatisfiable', () => {
  for (const h of ['bytes=10-', 'bytes=10-12', 'bytes=11-', 'bytes=5-4', 'bytes=0-1,3-4', 'bytes=-', 'bytes=', 'bytes=a-b',
    'items=0-1', 'bytes 0-1', 'bytes=0-1-2', 'bytes=+1-2', 'bytes=0x1-', '', 'garbage', 'bytes=0 - 1', 'bytes= 0-1',
    'bytes=12345678901234567-']) {
    assert.equal(resolveRange(h, 10), 'unsatisfiable', JSON.stringify(h))
  }
})

test('resolveRange: whitespace around the header is ignored', () => {
  assert.deepEqual(resolveRange('  bytes=2-3\t', 10), { start: 2, end: 4 })
})

test('resolveRange: any valid single range of a non-empty blob lands inside it, start before end', () => {
  const ask = fc.integer({ min: 1, max: 2 ** 40 }).chain(size => fc.tuple(
    fc.constant(size),
    fc.oneof(
      fc.nat({ max: size - 1 }).map(a => `bytes=${a}-`),
      fc.tuple(fc.nat({ max: size - 1 }), fc.nat({ max: 2 ** 41 })).map(([a, n]) => `bytes=${a}-${a + n}`),
      fc.integer({ min: 1, max: 2 ** 41 }).map(n => `bytes=-${n}`)
    )
  ))
  fc.assert(fc.property(ask, ([size, header]) => {
    const r = resolveRange(header, size)
    assert.ok(typeof r === 'object', `${header} of ${size}: ${String(r)}`)
    assert.ok(r.start >= 0 && r.start < r.end && r.end <= size, `${header} of ${size}: ${JSON.stringify(r)}`)
  }))
})
