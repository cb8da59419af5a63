/**
 * One mirror, in process, over a real blob cache, in front of real registries (rafspeer's embedded one; hostile
 * ones made here): the distribution API as clients see it (base, manifests by tag and digest, blobs whole and by
 * Range, HEAD), bad requests answered with the right 4xx while the mirror keeps serving, bearer auth relayed, an
 * unreachable or stalled upstream answered quickly, and a blob the upstream sends wrong never delivered whole.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { createServer, request, type Server } from 'node:http'
import { connect, type AddressInfo } from 'node:net'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { silentLogger } from '../base/index.js'
import { BlobCache } from '../cache/index.js'
import { RegistryClient, startRegistryServer, type RegistryServer } from '../registry/index.js'
import { slowloris, timed } from '../test/helpers/slowloris.js'
import { Mirror, type MirrorInit } from './mirror.js'

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`

interface Image { manifest: Buffer, manifestDigest: string, layers: Buffer[], config: Buffer }

async function pushImage (client: RegistryClient, host: string, repo: string, tag: string, layers: Buffer[]): Promise<Image> {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: layers.map(sha) } }))
  for (const b of [config, ...layers]) {
    await client.pushBlob(`${host}/${repo}`, sha(b), b.length, () => (async function * () { yield b })())
  }
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length },
    layers: layers.map(l => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha(l), size: l.length }))
  }))
  await client.putManifest(`${host}/${repo}:${tag}`, 'application/vnd.oci.image.manifest.v1+json', manifest)
  return { manifest, manifestDigest: sha(manifest), layers, config }
}

interface Kit { dir: string, cache: BlobCache, mirror: Mirror, base: string, stop: () => Promise<void> }

async function startMirror (upstream: string, init: Partial<MirrorInit> = {}): Promise<Kit> {
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-mirror-unit-'))
  const cache = await BlobCache.open(join(dir, 'cache'))
  const mirror = await Mirror.start({ cache, logger: silentLogger }, {
    listen: '127.0.0.1:0', dir: join(dir, 'proxy'), defaultUpstream: upstream, pieceBytes: 64 << 10, upstreamTimeoutMs: 1_500,
    stallMs: 3_000, ...init
  })
  return {
    dir, cache, mirror, base: `http://${mirror.address}`,
    stop: async () => { await mirror.stop(); await cache.close(); await rm(dir, { recursive: true, force: true }) }
  }
}

async function withRegistry (fn: (reg: RegistryServer, client: RegistryClient) => Promise<void>, auth?: Parameters<typeof startRegistryServer>[0]['auth']): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), 'rafspeer-mirror-reg-'))
  const reg = await startRegistryServer({ root, ...(auth !== undefined ? { auth } : {}) })
  const client = new RegistryClient({ ...(auth?.bearer !== undefined ? { credentials: { [reg.host]: { username: auth.bearer.user, password: auth.bearer.password } } } : {}) })
  try { await fn(reg, client) } finally { await reg.stop(); await rm(root, { recursive: true, force: true }) }
}

/** A raw request (the mirror must answer what fetch would refuse to send). */
async function raw (base: string, text: string): Promise<string> {
  const { port } = new URL(base)
  return await new Promise((resolve, reject) => {
    const s = connect(Number(port), '127.0.0.1', () => { s.write(text) })
    let out = ''
    s.on('data', d => { out += d.toString('latin1') })
    s.on('end', () => { resolve(out) })
    s.on('error', reject)
    s.setTimeout(5_000, () => { s.destroy(); resolve(out) })
  })
}

test('serves the distribution API: base, manifests by tag and digest, blobs whole, by Range and HEAD', async () => {
  await withRegistry(async (reg, client) => {
    const img = await pushImage(client, reg.host, 'team/app', 'v1', [randomBytes(300_000), randomBytes(5_000)])
    const k = await startMirror(reg.host)
    try {
      for (const path of ['/v2/', '/v2']) {
        const res = await fetch(k.base + path)
        assert.equal(res.status, 200)
        assert.equal(res.headers.get('docker-distribution-api-version'), 'registry/2.0')
        assert.deepEqual(await res.json(), {})
      }
      const head = await fetch(`${k.base}/v2/team/app/manifests/v1`, { method: 'HEAD', headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } })
      assert.equal(head.status, 200)
      assert.equal(head.headers.get('docker-content-digest'), img.manifestDigest)
      assert.equal(head.headers.get('content-length'), String(img.manifest.length))
      assert.equal(head.headers.get('content-type'), 'application/vnd.oci.image.manifest.v1+json')
      const byDigest = await fetch(`${k.base}/v2/team/app/manifests/${img.manifestDigest}`)
      assert.deepEqual(Buffer.from(await byDigest.arrayBuffer()), img.manifest)
      const layer = img.layers[0]!
      const url = `${k.base}/v2/team/app/blobs/${sha(layer)}`
      // a Range before the mirror has the blob is relayed from the upstream
      const early = await fetch(url, { headers: { range: 'bytes=1000-1999' } })
      assert.equal(early.status, 206)
      assert.equal(early.headers.get('content-range'), `bytes 1000-1999/${layer.length}`)
      assert.deepEqual(Buffer.from(await early.arrayBuffer()), layer.subarray(1000, 2000))
      const whole = await fetch(url)
      assert.equal(whole.status, 200)
      assert.equal(whole.headers.get('docker-content-digest'), sha(layer))
      assert.equal(whole.headers.get('accept-ranges'), 'bytes')
      assert.deepEqual(Buffer.from(await whole.arrayBuffer()), layer)
      // containerd resumes a cut body with bytes=N-: now from the pieces
      const resumed = await fetch(url, { headers: { range: 'bytes=123457-' } })
      assert.equal(resumed.status, 206)
      assert.equal(resumed.headers.get('content-range'), `bytes 123457-${layer.length - 1}/${layer.length}`)
      assert.deepEqual(Buffer.from(await resumed.arrayBuffer()), layer.subarray(123457))
      const suffix = await fetch(url, { headers: { range: 'bytes=-10' } })
      assert.deepEqual(Buffer.from(await suffix.arrayBuffer()), layer.subarray(layer.length - 10))
      const h = await fetch(url, { method: 'HEAD' })
      assert.equal(h.headers.get('content-length'), String(layer.length))
      const bad = await fetch(url, { headers: { range: `bytes=${layer.length}-` } })
      assert.equal(bad.status, 416)
      assert.equal(bad.headers.get('content-range'), `bytes */${layer.length}`)
      const m = k.mirror.metrics.json()
      assert.equal(m.blobs.confirmed, 1)
      assert.ok(m.bytesBySource.upstream >= layer.length)
    } finally {
      await k.stop()
    }
  })
})

test('answers bad requests with the right 4xx and keeps serving', async () => {
  await withRegistry(async (reg, client) => {
    const img = await pushImage(client, reg.host, 'app', 'v1', [randomBytes(10_000)])
    const k = await startMirror(reg.host)
    try {
      const status = async (path: string, init?: RequestInit): Promise<[number, string]> => {
        const res = await fetch(k.base + path, init)
        return [res.status, await res.text()]
      }
      const digest = sha(img.layers[0]!)
      for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) {
        const res = await fetch(`${k.base}/v2/app/blobs/${digest}`, { method })
        assert.equal(res.status, 405, method)
        assert.equal(res.headers.get('allow'), 'GET, HEAD')
        assert.match(await res.text(), /UNSUPPORTED/)
      }
      assert.equal((await status('/v2/App/blobs/' + digest))[0], 400)
      assert.match((await status('/v2/a//b/manifests/v1'))[1], /NAME_INVALID/)
      assert.match((await status('/v2/app/blobs/sha256:abc'))[1], /DIGEST_INVALID/)
      assert.match((await status('/v2/app/blobs/md5:' + 'a'.repeat(32)))[1], /DIGEST_INVALID/)
      assert.match((await status('/v2/app/manifests/-bad'))[1], /TAG_INVALID/)
      assert.equal((await status('/v2/_catalog'))[0], 404)
      assert.equal((await status('/v2/app/tags/list'))[0], 404)
      assert.equal((await status('/v2/app/blobs/' + digest + '?ns=not%20a%20host'))[0], 400)
      assert.equal((await status('/v2/app/blobs/' + 'sha256:' + 'b'.repeat(64)))[0], 404)
      assert.match(await raw(k.base, `GET /v2/../../etc/passwd HTTP/1.1\r\nhost: x\r\n\r\n`), /^HTTP\/1\.1 400/)
      assert.match(await raw(k.base, `GET /v2/app/${'x'.repeat(3000)}/manifests/v1 HTTP/1.1\r\nhost: x\r\n\r\n`), /^HTTP\/1\.1 414/)
      assert.match(await raw(k.base, `GET /v2/ HTTP/1.1\r\nhost: x\r\nx-big: ${'y'.repeat(20_000)}\r\n\r\n`), /^HTTP\/1\.1 431/)
      assert.match(await raw(k.base, `\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n`), /^HTTP\/1\.1 400/)
      assert.equal((await status('/v2/app/blobs/' + digest, { headers: { range: 'bytes=5-2' } }))[0], 416)
      assert.equal((await status('/v2/app/blobs/' + digest, { headers: { range: 'bytes=0-1,4-5' } }))[0], 416)
      // unharmed
      const ok = await fetch(`${k.base}/v2/app/blobs/${digest}`)
      assert.deepEqual(Buffer.from(await ok.arrayBuffer()), img.layers[0])
      const requests = k.mirror.metrics.json().requests
      assert.ok((requests['other 405'] ?? 0) >= 4 && (requests['malformed 431'] ?? 0) >= 1, JSON.stringify(requests))
    } finally {
      await k.stop()
    }
  })
})

test('relays the upstream\'s bearer challenge; a cached blob needs the client\'s own token again', async () => {
  await withRegistry(async (reg, client) => {
    const img = await pushImage(client, reg.host, 'private/app', 'v1', [randomBytes(200_000)])
    const k = await startMirror(reg.host, { authTtlMs: 60_000 })
    try {
      const url = `${k.base}/v2/private/app/blobs/${sha(img.layers[0]!)}`
      const challenged = await fetch(url)
      assert.equal(challenged.status, 401)
      const challenge = challenged.headers.get('www-authenticate') ?? ''
      assert.match(challenge, /^Bearer realm="[^"]+",service="[^"]+",scope="repository:private\/app:pull"$/)
      const realm = /realm="([^"]+)"/.exec(challenge)![1]!
      const service = /service="([^"]+)"/.exec(challenge)![1]!
      const tokenRes = await fetch(`${realm}?service=${encodeURIComponent(service)}&scope=repository:private/app:pull`, {
        headers: { authorization: `Basic ${Buffer.from('u:p').toString('base64')}` }
      })
      const { token } = await tokenRes.json() as { token: string }
      const ok = await fetch(url, { headers: { authorization: `Bearer ${token}` } })
      assert.equal(ok.status, 200)
      assert.deepEqual(Buffer.from(await ok.arrayBuffer()), img.layers[0])
      // every byte is cached now: still nothing for a client without a token, or with a forged one
      for (const headers of [{}, { authorization: 'Bearer forged' }] as Array<Record<string, string>>) {
        const res = await fetch(url, { headers })
        assert.equal(res.status, 401)
        assert.match(await res.text(), /UNAUTHORIZED/)
      }
    } finally {
      await k.stop()
    }
  }, { bearer: { user: 'u', password: 'p' } })
})

test('an unreachable upstream: digests of repositories seen public are served from the cache, the rest refused at once', async () => {
  let k: Kit | undefined
  let digest = ''
  let layer: Buffer = Buffer.alloc(0)
  let img: Image | undefined
  await withRegistry(async (reg, client) => {
    img = await pushImage(client, reg.host, 'public/app', 'v1', [randomBytes(150_000)])
    layer = img.layers[0]!
    digest = sha(layer)
    k = await startMirror(reg.host, { authTtlMs: 0 })
    assert.equal((await fetch(`${k.base}/v2/public/app/manifests/v1`)).status, 200)
    assert.equal((await fetch(`${k.base}/v2/public/app/blobs/${digest}`)).status, 200)
  })
  try {
    // the registry is gone now
    const t0 = Date.now()
    const cached = await fetch(`${k!.base}/v2/public/app/blobs/${digest}`)
    assert.equal(cached.status, 200)
    assert.deepEqual(Buffer.from(await cached.arrayBuffer()), layer)
    const manifest = await fetch(`${k!.base}/v2/public/app/manifests/${img!.manifestDigest}`)
    assert.equal(manifest.status, 200)
    const tag = await fetch(`${k!.base}/v2/public/app/manifests/v1`)
    assert.equal(tag.status, 404)
    assert.match(await tag.text(), /MANIFEST_UNKNOWN/)
    const unknown = await fetch(`${k!.base}/v2/public/app/blobs/sha256:${'c'.repeat(64)}`)
    assert.equal(unknown.status, 404)
    assert.match(await unknown.text(), /BLOB_UNKNOWN/)
    const otherRepo = await fetch(`${k!.base}/v2/other/app/blobs/${digest}`)
    assert.equal(otherRepo.status, 404)
    assert.ok(Date.now() - t0 < 10_000, `answers took ${Date.now() - t0} ms`)
    assert.ok(k!.mirror.gate.counters.offline >= 2)
  } finally {
    await k?.stop()
  }
})

/**
 * A registry that answers HEADs truthfully and sends `body` for the blob, or never answers (stall); with
 * `ignoreRange`, every GET is answered 200 with the whole body, as HTTP allows.
 */
async function fakeUpstream (blob: Buffer, body: Buffer | 'stall', opts: { ignoreRange?: boolean } = {}): Promise<{ host: string, close: () => Promise<void> }> {
  const server: Server = createServer((req, res) => {
    if (req.url === '/v2/' || req.url === '/v2') { res.setHeader('docker-distribution-api-version', 'registry/2.0'); res.end('{}'); return }
    if (req.method === 'HEAD') { res.writeHead(200, { 'content-length': String(blob.length), 'docker-content-digest': sha(blob) }).end(); return }
    if (body === 'stall') return
    const m = opts.ignoreRange === true ? null : /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '')
    const start = m !== null ? Number(m[1]) : 0
    const end = m !== null && m[2] !== '' ? Number(m[2]) + 1 : body.length
    res.writeHead(m !== null ? 206 : 200, { 'content-length': String(end - start), ...(m !== null ? { 'content-range': `bytes ${start}-${end - 1}/${body.length}` } : {}) })
    res.end(body.subarray(start, end))
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  return {
    host: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: async () => { server.closeAllConnections(); await new Promise<void>(resolve => server.close(() => { resolve() })) }
  }
}

/** Every byte a client receives for `path`, and whether the body ended cleanly. */
async function receive (base: string, path: string): Promise<{ status: number, bytes: Buffer, complete: boolean }> {
  return await new Promise((resolve, reject) => {
    const req = request(base + path, res => {
      const parts: Buffer[] = []
      res.on('data', (d: Buffer) => parts.push(d))
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, bytes: Buffer.concat(parts), complete: true }) })
      res.on('error', () => { resolve({ status: res.statusCode ?? 0, bytes: Buffer.concat(parts), complete: false }) })
      res.on('aborted', () => { resolve({ status: res.statusCode ?? 0, bytes: Buffer.concat(parts), complete: false }) })
    })
    req.on('error', reject)
    req.end()
  })
}

test('a blob the upstream sends wrong never reaches a client whole, and is not kept', async () => {
  const blob = randomBytes(200_000)
  const liar = Buffer.from(blob)
  liar[150_000] ^= 0xff
  const up = await fakeUpstream(blob, liar)
  const k = await startMirror(up.host)
  try {
    for (let i = 0; i < 2; i++) {
      const r = await receive(k.base, `/v2/app/blobs/${sha(blob)}`)
      assert.equal(r.status, 200)
      assert.equal(r.complete, false)
      assert.ok(r.bytes.length < blob.length, `${r.bytes.length} bytes of ${blob.length} delivered`)
    }
    assert.equal(k.mirror.metrics.json().blobs.failed, 2)
    assert.equal(k.mirror.metrics.json().blobs.confirmed, 0)
  } finally {
    await k.stop()
    await up.close()
  }
})

test('a stalled upstream is answered with BLOB_UNKNOWN within its deadline, never a hang', async () => {
  const blob = randomBytes(50_000)
  const up = await fakeUpstream(blob, 'stall')
  const k = await startMirror(up.host, { upstreamTimeoutMs: 1_000 })
  try {
    const t0 = Date.now()
    const res = await fetch(`${k.base}/v2/app/blobs/${sha(blob)}`)
    assert.equal(res.status, 404)
    assert.match(await res.text(), /BLOB_UNKNOWN/)
    assert.ok(Date.now() - t0 < 8_000, `${Date.now() - t0} ms`)
  } finally {
    await k.stop()
    await up.close()
  }
})

test('an upstream that ignores Range: blobs and ranges of them are still served whole and exact', async () => {
  const blob = randomBytes(300_000)
  const up = await fakeUpstream(blob, blob, { ignoreRange: true })
  const k = await startMirror(up.host)
  try {
    const ranged = await fetch(`${k.base}/v2/app/blobs/${sha(blob)}`, { headers: { range: 'bytes=200000-200099' } })
    assert.equal(ranged.status, 206)
    assert.deepEqual(Buffer.from(await ranged.arrayBuffer()), blob.subarray(200_000, 200_100))
    const whole = await receive(k.base, `/v2/app/blobs/${sha(blob)}`)
    assert.equal(whole.status, 200)
    assert.ok(whole.complete)
    assert.ok(whole.bytes.equals(blob))
  } finally {
    await k.stop()
    await up.close()
  }
})

test('slowloris sockets are answered 408 and closed within the headers timeout; honest pulls are served meanwhile', async t => {
  const headersTimeoutMs = 1_000
  const k = await startMirror('127.0.0.1:1', { headersTimeoutMs, requestTimeoutMs: headersTimeoutMs })
  try {
    const { port } = new URL(k.base)
    const attack = slowloris({ port: Number(port) }, { sockets: 50, dripMs: 200, giveUpMs: headersTimeoutMs + 10_000, head: 'GET /v2/ HTTP/1.1\r\nHost: x\r\n' })
    await attack.connected
    const honest = await timed(async () => await fetch(`${k.base}/v2/`))
    assert.equal(honest.value.status, 200)
    const r = await attack.done
    t.diagnostic(`mirror: 50 slowloris sockets closed after ${Math.round(r.closedAfterMs[0]!)}..${Math.round(r.closedAfterMs.at(-1)!)} ms ` +
      `(headers timeout ${headersTimeoutMs} ms); honest GET /v2/ during the attack: ${honest.ms.toFixed(1)} ms`)
    assert.equal(r.stillOpen, 0)
    assert.equal(r.closedAfterMs.length, 50)
    assert.ok(r.closedAfterMs[0]! >= headersTimeoutMs * 0.9, `closed before the deadline: ${r.closedAfterMs[0]} ms`)
    assert.ok(r.closedAfterMs.at(-1)! <= headersTimeoutMs + 2_000, `closed late: ${r.closedAfterMs.at(-1)} ms`)
    assert.deepEqual(Object.keys(r.answers), ['HTTP/1.1 408 Request Timeout'])
  } finally {
    await k.stop()
  }
})
