/**
 * The client against registries that misbehave on purpose (plain node:http servers on port 0): throttling, 5xx,
 * resets mid-body, wrong bytes, ignored or wrong ranges, redirects to other hosts, huge or unknown manifests,
 * bearer tokens. Each test pins one behaviour the client promises.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http'
import { createServer as createTlsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { RegistryClient } from './client.js'
import { MediaTypes } from './manifest.js'
import { captureLogs } from '../test/helpers/logs.js'

interface Seen { method: string, url: string, headers: IncomingHttpHeaders, body: Buffer }
interface Hostile { host: string, seen: Seen[], close: () => Promise<void> }

const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`
const BLOB = randomBytes(300_000)
const DIGEST = sha256(BLOB)

/** A registry that answers `handler`; every request is recorded (with its body) before the handler runs. */
async function hostile (handler: (req: IncomingMessage, res: ServerResponse, seen: Seen[]) => void): Promise<Hostile> {
  const seen: Seen[] = []
  const srv = createServer((req, res) => {
    const parts: Buffer[] = []
    req.on('data', (c: Buffer) => parts.push(c))
    req.on('end', () => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(parts) })
      handler(req, res, seen)
    })
  })
  await new Promise<void>(resolve => srv.listen(0, '127.0.0.1', resolve))
  const { port } = srv.address() as AddressInfo
  return {
    host: `127.0.0.1:${port}`,
    seen,
    close: async () => { srv.closeAllConnections(); await new Promise(resolve => srv.close(resolve)) }
  }
}

async function withHostile (handler: Parameters<typeof hostile>[0], fn: (h: Hostile, c: RegistryClient) => Promise<void>,
  init: ConstructorParameters<typeof RegistryClient>[0] = {}): Promise<void> {
  const h = await hostile(handler)
  const c = new RegistryClient({ dockerConfig: '/nonexistent/config.json', retryBaseMs: 5, ...init })
  try { await fn(h, c) } finally { await h.close(); await c.close() }
}

async function collect (s: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = []
  for await (const c of s) parts.push(Buffer.from(c))
  return Buffer.concat(parts)
}

const code = (c: string, ...parts: string[]) => (e: Error & { code?: string }) => {
  assert.equal(e.code, c, e.message)
  for (const p of parts) assert.ok(e.message.includes(p), `"${e.message}" should name ${p}`)
  return true
}

function sendBlob (res: ServerResponse, body: Buffer = BLOB): void {
  res.writeHead(200, { 'content-length': body.length, 'docker-content-digest': DIGEST }).end(body)
}

test('429 with Retry-After is honoured, then the request succeeds', async () => {
  await withHostile((_req, res, seen) => {
    if (seen.length === 1) res.writeHead(429, { 'retry-after': '1' }).end()
    else res.writeHead(200, { 'content-length': BLOB.length }).end()
  }, async (h, c) => {
    const t0 = Date.now()
    assert.equal(await c.headBlob(`${h.host}/hostile/app`, DIGEST), BLOB.length)
    assert.ok(Date.now() - t0 >= 900, 'waited for Retry-After')
    assert.equal(h.seen.length, 2)
  })
})

test('503 twice then success; 503 forever ends in _HTTP naming the attempts', async () => {
  await withHostile((_req, res, seen) => {
    if (seen.length <= 2) res.writeHead(503).end('busy')
    else sendBlob(res)
  }, async (h, c) => {
    assert.ok((await collect(await c.getBlob(`${h.host}/hostile/app`, DIGEST))).equals(BLOB))
    assert.equal(h.seen.length, 3)
  })
  await withHostile((_req, res) => { res.writeHead(503, { 'content-type': 'application/json' }).end('{"errors":[{"code":"UNAVAILABLE","message":"down"}]}') },
    async (h, c) => {
      await assert.rejects(c.getManifest(`${h.host}/hostile/app:v1`), code('RAFSPEER_ERR_REGISTRY_HTTP', h.host, 'hostile/app', 'v1', '3 attempts', 'UNAVAILABLE'))
      assert.equal(h.seen.length, 3)
    }, { retries: 2 })
})

test('a reset mid-body resumes with Range from the byte received, and the digest still verifies', async () => {
  const cut = 123_457
  await withHostile((req, res, seen) => {
    if (seen.length === 1) {
      res.writeHead(200, { 'content-length': BLOB.length })
      res.write(BLOB.subarray(0, cut), () => setTimeout(() => req.socket.destroy(), 20))
      return
    }
    const m = /^bytes=(\d+)-$/.exec(String(req.headers.range))
    const from = Number(m?.[1])
    res.writeHead(206, { 'content-length': BLOB.length - from, 'content-range': `bytes ${from}-${BLOB.length - 1}/${BLOB.length}` })
      .end(BLOB.subarray(from))
  }, async (h, c) => {
    const got = await collect(await c.getBlob(`${h.host}/hostile/app`, DIGEST))
    assert.ok(got.equals(BLOB))
    assert.equal(h.seen.length, 2)
    assert.equal(h.seen[1]!.headers.range, `bytes=${cut}-`)
  })
})

test('a resume answered 200 (Range ignored) drops the bytes already received', async () => {
  await withHostile((req, res, seen) => {
    if (seen.length === 1) {
      res.writeHead(200, { 'content-length': BLOB.length })
      res.write(BLOB.subarray(0, 50_000), () => setTimeout(() => req.socket.destroy(), 20))
    } else sendBlob(res)
  }, async (h, c) => {
    assert.ok((await collect(await c.getBlob(`${h.host}/hostile/app`, DIGEST))).equals(BLOB))
  })
})

test('a body cut on every attempt ends in _TRUNCATED', async () => {
  await withHostile((req, res) => {
    res.writeHead(req.headers.range === undefined ? 200 : 206, {
      'content-length': BLOB.length,
      ...(req.headers.range !== undefined ? { 'content-range': `bytes ${/\d+/.exec(req.headers.range)![0]}-${BLOB.length - 1}/${BLOB.length}` } : {})
    })
    res.write(Buffer.alloc(0), () => setTimeout(() => req.socket.destroy(), 10))
  }, async (h, c) => {
    const s = await c.getBlob(`${h.host}/hostile/app`, DIGEST)
    await assert.rejects(collect(s), code('RAFSPEER_ERR_REGISTRY_TRUNCATED', h.host, 'hostile/app', DIGEST))
  }, { retries: 2 })
})

test('wrong bytes end in _DIGEST_MISMATCH, and the consumer never holds the whole body', async () => {
  const evil = Buffer.from(BLOB)
  evil[evil.length - 1]! ^= 0xff
  await withHostile((_req, res) => sendBlob(res, evil), async (h, c) => {
    const s = await c.getBlob(`${h.host}/hostile/app`, DIGEST)
    let received = 0
    await assert.rejects((async () => { for await (const chunk of s) received += (chunk as Buffer).length })(),
      code('RAFSPEER_ERR_DIGEST_MISMATCH', h.host, 'hostile/app', DIGEST))
    assert.ok(received < evil.length, `got ${received} of ${evil.length} bytes`)
  })
})

test('Range answered 200 (ignored): any range is read by skipping to it, the registry is logged once; past the end is _RANGE', async () => {
  const logs = captureLogs()
  await withHostile((_req, res) => sendBlob(res), async (h, c) => {
    const repo = `${h.host}/hostile/app`
    assert.equal(c.ignoresRange(repo), false)
    assert.ok((await c.fetchBlobRange(repo, DIGEST, 0, 999)).equals(BLOB.subarray(0, 1000)))
    assert.equal(c.ignoresRange(repo), true)
    assert.ok((await c.fetchBlobRange(repo, DIGEST, 1000, 1999)).equals(BLOB.subarray(1000, 2000)))
    const before = c.counters.downloaded(h.host)
    assert.ok((await c.fetchBlobRange(repo, DIGEST, BLOB.length - 10, BLOB.length - 1)).equals(BLOB.subarray(-10)))
    assert.ok(c.counters.downloaded(h.host) - before >= BLOB.length - 10, 'the skipped bytes crossed the network and are counted')
    await assert.rejects(c.fetchBlobRange(repo, DIGEST, 0, BLOB.length + 10), code('RAFSPEER_ERR_REGISTRY_RANGE', 'only'))
    const warned = logs.lines.filter(l => l.includes('ignores Range'))
    assert.equal(warned.length, 1, logs.lines.join('\n'))
    assert.ok(warned[0]!.includes(h.host) && warned[0]!.includes('WARN'), warned[0])
  }, { logger: logs.logger })
})

test('a whole-blob answer cut while skipping is asked again and skipped again: the range is still exact', async () => {
  const want = [200_000, 200_999] as const
  await withHostile((req, res, seen) => {
    res.writeHead(200, { 'content-length': BLOB.length })
    // the first answer dies before the range, the second inside it, the third is whole
    const cut = seen.length === 1 ? 100_000 : seen.length === 2 ? 200_500 : BLOB.length
    res.write(BLOB.subarray(0, cut), () => { if (cut < BLOB.length) setTimeout(() => req.socket.destroy(), 20); else res.end() })
  }, async (h, c) => {
    assert.ok((await c.fetchBlobRange(`${h.host}/hostile/app`, DIGEST, ...want)).equals(BLOB.subarray(want[0], want[1] + 1)))
    assert.deepEqual(h.seen.map(s => s.headers.range), ['bytes=200000-200999', 'bytes=200000-200999', 'bytes=200500-200999'])
  })
})

test('a ranged stream answered 200 starts at the asked byte and ends at the asked one (a mirror relays it)', async () => {
  await withHostile((_req, res) => sendBlob(res), async (h, c) => {
    const repo = `${h.host}/hostile/app`
    const mid = await c.getBlobRange(repo, DIGEST, 5000, 5999)
    assert.deepEqual([mid.start, mid.end, mid.total], [5000, 5999, BLOB.length])
    assert.ok((await collect(mid)).equals(BLOB.subarray(5000, 6000)))
    const tail = await c.getBlobRange(repo, DIGEST, 123_456)
    assert.deepEqual([tail.start, tail.end, tail.total], [123_456, BLOB.length - 1, BLOB.length])
    assert.ok((await collect(tail)).equals(BLOB.subarray(123_456)))
    await assert.rejects(c.getBlobRange(repo, DIGEST, BLOB.length), code('RAFSPEER_ERR_REGISTRY_RANGE', `${BLOB.length} bytes`))
  })
  // without a length, a whole-blob answer cannot say where an open range ends
  await withHostile((_req, res) => { res.writeHead(200); res.end(BLOB) }, async (h, c) => {
    await assert.rejects(c.getBlobRange(`${h.host}/hostile/app`, DIGEST, 10), code('RAFSPEER_ERR_REGISTRY_RANGE', 'Content-Length'))
  })
})

test('a 206 with the wrong Content-Range (or none) is _RANGE; 416 is _RANGE', async () => {
  await withHostile((req, res) => {
    if (req.headers.range === 'bytes=100-199') res.writeHead(206, { 'content-range': 'bytes 0-99/300000' }).end(BLOB.subarray(0, 100))
    else if (req.headers.range === 'bytes=200-299') res.writeHead(206).end(BLOB.subarray(200, 300))
    else res.writeHead(416, { 'content-range': 'bytes */300000' }).end()
  }, async (h, c) => {
    const repo = `${h.host}/hostile/app`
    await assert.rejects(c.fetchBlobRange(repo, DIGEST, 100, 199), code('RAFSPEER_ERR_REGISTRY_RANGE', 'bytes 0-99/300000', DIGEST))
    await assert.rejects(c.fetchBlobRange(repo, DIGEST, 200, 299), code('RAFSPEER_ERR_REGISTRY_RANGE', 'none'))
    await assert.rejects(c.fetchBlobRange(repo, DIGEST, 400_000, 400_001), code('RAFSPEER_ERR_REGISTRY_RANGE', 'HTTP 416'))
  })
})

test('a redirect to another host is followed without forwarding Authorization', async () => {
  const store = await hostile((_req, res) => sendBlob(res))
  try {
    await withHostile((req, res) => {
      if (req.headers.authorization === undefined) res.writeHead(401, { 'www-authenticate': 'Basic realm="r"' }).end()
      else res.writeHead(307, { location: `http://${store.host}/bucket/blob?X-Signature=abc` }).end()
    }, async (h) => {
      const c = new RegistryClient({ dockerConfig: '/nonexistent/config.json', credentials: { [h.host]: { username: 'u', password: 'p' } } })
      assert.ok((await collect(await c.getBlob(`${h.host}/hostile/app`, DIGEST))).equals(BLOB))
      assert.match(String(h.seen[1]!.headers.authorization), /^Basic /)
      assert.equal(store.seen.length, 1)
      assert.equal(store.seen[0]!.url, '/bucket/blob?X-Signature=abc')
      assert.equal(store.seen[0]!.headers.authorization, undefined)
    })
  } finally { await store.close() }
})

test('a manifest above 4 MiB is _TOO_LARGE, announced or not', async () => {
  const huge = Buffer.alloc((4 << 20) + 1, 0x20)
  await withHostile((req, res) => {
    if (req.url!.endsWith(':announced')) res.writeHead(200, { 'content-type': MediaTypes.OciManifest, 'content-length': huge.length }).end(huge)
    else { res.writeHead(200, { 'content-type': MediaTypes.OciManifest }); res.end(huge) }
  }, async (h, c) => {
    await assert.rejects(c.getManifest(`${h.host}/hostile/app:announced`), code('RAFSPEER_ERR_REGISTRY_TOO_LARGE', h.host, 'hostile/app', 'announced'))
    await assert.rejects(c.getManifest(`${h.host}/hostile/app:chunked`), code('RAFSPEER_ERR_REGISTRY_TOO_LARGE', 'chunked'))
  })
})

test('unsupported, malformed or tampered manifests are refused', async () => {
  const good = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.OciManifest, config: { mediaType: MediaTypes.OciConfig, digest: DIGEST, size: 1 }, layers: [] }))
  await withHostile((req, res) => {
    const tag = req.url!.split('/').pop()!
    if (tag === 'schema1') res.writeHead(200, { 'content-type': 'application/vnd.docker.distribution.manifest.v1+prettyjws' }).end('{"schemaVersion":1}')
    else if (tag === 'broken') res.writeHead(200, { 'content-type': MediaTypes.OciManifest }).end('{"schemaVersion":2,')
    else if (tag === 'nolayers') res.writeHead(200, { 'content-type': MediaTypes.OciManifest }).end('{"schemaVersion":2,"config":{}}')
    else if (tag === 'lying') res.writeHead(200, { 'content-type': MediaTypes.OciManifest, 'docker-content-digest': DIGEST }).end(good)
    else res.writeHead(200, { 'content-type': MediaTypes.OciManifest }).end(good)
  }, async (h, c) => {
    const repo = `${h.host}/hostile/app`
    await assert.rejects(c.getManifest(`${repo}:schema1`), code('RAFSPEER_ERR_REGISTRY_UNSUPPORTED_MEDIA_TYPE', 'manifest.v1+prettyjws', 'schema1'))
    await assert.rejects(c.getManifest(`${repo}:broken`), code('RAFSPEER_ERR_REGISTRY_MANIFEST_INVALID', 'broken'))
    await assert.rejects(c.getManifest(`${repo}:nolayers`), code('RAFSPEER_ERR_REGISTRY_MANIFEST_INVALID', 'config'))
    await assert.rejects(c.getManifest(`${repo}:lying`), code('RAFSPEER_ERR_DIGEST_MISMATCH', DIGEST))
    // fetched by digest, the body must hash to it whatever the headers say
    await assert.rejects(c.getManifest(`${repo}@${DIGEST}`), code('RAFSPEER_ERR_DIGEST_MISMATCH', DIGEST, sha256(good)))
    assert.equal((await c.getManifest(`${repo}@${sha256(good)}`)).digest, sha256(good))
  })
})

test('Bearer: anonymous token with scope, cached per scope until expiry, access_token accepted', async () => {
  let tokens = 0
  await withHostile((req, res) => {
    const url = new URL(req.url!, 'http://x')
    if (url.pathname === '/token') {
      tokens++
      assert.equal(url.searchParams.get('service'), 'reg')
      assert.deepEqual(url.searchParams.getAll('scope'), ['repository:hostile/app:pull'])
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ access_token: `t${tokens}`, expires_in: 1 }))
    } else if (req.headers.authorization !== `Bearer t${tokens}`) {
      res.writeHead(401, { 'www-authenticate': `Bearer realm="http://${req.headers.host}/token",service="reg",scope="repository:hostile/app:pull"` }).end()
    } else res.writeHead(200, { 'content-length': BLOB.length }).end()
  }, async (h, c) => {
    for (let i = 0; i < 4; i++) assert.equal(await c.headBlob(`${h.host}/hostile/app`, DIGEST), BLOB.length)
    assert.equal(tokens, 1)
    assert.equal(h.seen.filter(s => s.url.startsWith('/v2/')).length, 5, 'one 401, then authenticated up front')
    await new Promise(resolve => setTimeout(resolve, 600)) // past expires_in minus the margin
    assert.equal(await c.headBlob(`${h.host}/hostile/app`, DIGEST), BLOB.length)
    assert.equal(tokens, 2)
  })
})

test('Basic challenge without credentials is _AUTH naming the registry; a refused token too', async () => {
  await withHostile((req, res) => {
    if (req.url!.startsWith('/token')) res.writeHead(401).end()
    else if (req.url!.includes('/basic/')) res.writeHead(401, { 'www-authenticate': 'Basic realm="x"' }).end()
    else res.writeHead(401, { 'www-authenticate': `Bearer realm="http://${req.headers.host}/token",service="s"` }).end()
  }, async (h, c) => {
    await assert.rejects(c.headBlob(`${h.host}/basic/app`, DIGEST), code('RAFSPEER_ERR_REGISTRY_AUTH', h.host, 'basic/app', 'no credentials'))
    await assert.rejects(c.getManifest(`${h.host}/bearer/app:v1`), code('RAFSPEER_ERR_REGISTRY_AUTH', 'refused anonymous', 'bearer/app', 'v1'))
  })
})

test('push: relative Location with its query kept, chunked Range echo checked; a wrong source is _DIGEST_MISMATCH and cancelled', async () => {
  await withHostile((req, res) => {
    const url = new URL(req.url!, 'http://x')
    if (req.method === 'HEAD') res.writeHead(404).end()
    else if (req.method === 'POST') res.writeHead(202, { location: '/upload/1?_state=a%2Bb%3D' }).end()
    else if (req.method === 'PATCH') {
      const end = /-(\d+)$/.exec(String(req.headers['content-range']))![1]
      res.writeHead(202, { location: `/upload/1?_state=after${end}`, range: `0-${end}` }).end()
    } else if (req.method === 'PUT') res.writeHead(201, { 'docker-content-digest': url.searchParams.get('digest')! }).end()
    else res.writeHead(204).end()
  }, async (h, c) => {
    const repo = `${h.host}/hostile/app`
    assert.equal((await c.pushBlob(repo, DIGEST, BLOB.length, async function * () { yield BLOB })).pushed, true)
    const put = h.seen.find(s => s.method === 'PUT')!
    assert.equal(put.url, `/upload/1?_state=a%2Bb%3D&digest=${encodeURIComponent(DIGEST)}`)
    assert.ok(put.body.equals(BLOB))
    h.seen.length = 0
    await c.pushBlob(repo, DIGEST, BLOB.length, async function * () { yield BLOB }, { chunked: true, chunkSize: 100_000 })
    assert.deepEqual(h.seen.filter(s => s.method === 'PATCH').map(s => s.headers['content-range']), ['0-99999', '100000-199999', '200000-299999'])
    assert.equal(h.seen.at(-1)!.url, `/upload/1?_state=after299999&digest=${encodeURIComponent(DIGEST)}`)
    h.seen.length = 0
    const other = randomBytes(BLOB.length)
    await assert.rejects(c.pushBlob(repo, DIGEST, BLOB.length, async function * () { yield other }, { chunked: true, chunkSize: 1 << 20 }),
      code('RAFSPEER_ERR_DIGEST_MISMATCH', DIGEST, sha256(other)))
    assert.ok(!h.seen.some(s => s.method === 'PUT'), 'nothing committed')
    assert.ok(h.seen.some(s => s.method === 'DELETE'), 'session cancelled')
  })
})

test('a silent registry times out (_NETWORK after the retries); a caller abort stops at once; a closed port fails fast', async () => {
  await withHostile(() => { /* never answers */ }, async (h, c) => {
    const t0 = Date.now()
    await assert.rejects(c.getManifest(`${h.host}/hostile/app:v1`), code('RAFSPEER_ERR_REGISTRY_NETWORK', 'timed out', h.host, 'hostile/app'))
    assert.equal(h.seen.length, 2)
    assert.ok(Date.now() - t0 < 5_000)
    const ac = new AbortController()
    setTimeout(() => ac.abort(new Error('user gave up')), 50)
    await assert.rejects(c.headBlob(`${h.host}/hostile/app`, DIGEST, { signal: ac.signal }), /user gave up/)
    assert.equal(h.seen.length, 3, 'no retry after an abort')
  }, { timeoutMs: 200, retries: 1 })
  const closed = await hostile(() => {})
  await closed.close()
  const c = new RegistryClient({ dockerConfig: '/nonexistent/config.json' })
  await assert.rejects(c.ping(closed.host), code('RAFSPEER_ERR_REGISTRY_NETWORK', closed.host, 'ECONNREFUSED'))
})

test('an upload reset during its PUT starts over from a new session and succeeds', async () => {
  let puts = 0
  await withHostile((req, res) => {
    if (req.method === 'HEAD') res.writeHead(404).end()
    else if (req.method === 'POST') res.writeHead(202, { location: `/upload/${Math.random()}` }).end()
    else if (req.method === 'PUT' && ++puts === 1) req.socket.destroy()
    else if (req.method === 'PUT') res.writeHead(201).end()
    else res.writeHead(204).end()
  }, async (h, c) => {
    assert.equal((await c.pushBlob(`${h.host}/hostile/app`, DIGEST, BLOB.length, async function * () { yield BLOB })).pushed, true)
    assert.deepEqual(h.seen.filter(s => s.method !== 'DELETE').map(s => s.method), ['HEAD', 'POST', 'PUT', 'POST', 'PUT'])
    assert.ok(h.seen.filter(s => s.method === 'PUT').every(s => s.body.equals(BLOB)))
  })
})

test('TLS with a private CA: refused without `ca`, accepted with it', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-tls-'))
  try {
    try {
      await promisify(execFile)('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1',
        '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')])
    } catch (err) { t.skip(`openssl unavailable: ${(err as Error).message}`); return }
    const cert = await readFile(join(dir, 'cert.pem'))
    const srv = createTlsServer({ key: await readFile(join(dir, 'key.pem')), cert }, (_req, res) => {
      res.writeHead(200, { 'docker-distribution-api-version': 'registry/2.0' }).end('{}')
    })
    await new Promise<void>(resolve => srv.listen(0, '127.0.0.1', resolve))
    const host = `127.0.0.1:${(srv.address() as AddressInfo).port}`
    const trusting = new RegistryClient({ plainHttp: false, ca: cert, dockerConfig: '/nonexistent/config.json' })
    try {
      await assert.rejects(new RegistryClient({ plainHttp: false, retries: 0 }).ping(host), code('RAFSPEER_ERR_REGISTRY_NETWORK', host))
      const p = await trusting.ping(host)
      assert.deepEqual([p.url, p.status, p.auth], [`https://${host}`, 200, 'none'])
    } finally {
      await trusting.close()
      srv.closeAllConnections()
      await new Promise(resolve => srv.close(resolve))
    }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})
