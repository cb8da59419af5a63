/**
 * The embedded registry speaks the OCI distribution protocol: blobs (HEAD/GET/Range/DELETE), monolithic,
 * chunked and mounted uploads, manifests and indexes checked against the repository, tags, counters.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import {
  OCI_INDEX, OCI_MANIFEST, errorCode, imageManifest, pushBlob, putManifest, sha256, withRegistry
} from './server-testkit.js'

async function filesUnder (dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true })
  return entries.filter(e => e.isFile()).map(e => join(e.parentPath ?? e.path, e.name))
}

test('GET /v2/ answers 200 with the API version header', async () => {
  await withRegistry({}, async ({ reg }) => {
    assert.match(reg.url, /^http:\/\/127\.0\.0\.1:\d+$/)
    assert.equal(reg.host, `127.0.0.1:${reg.port}`)
    const res = await fetch(`${reg.url}/v2/`)
    assert.equal(res.status, 200)
    assert.equal(res.headers.get('docker-distribution-api-version'), 'registry/2.0')
    assert.deepEqual(await res.json(), {})
  })
})

test('monolithic upload, then HEAD and GET the blob', async () => {
  await withRegistry({}, async ({ reg, errors }) => {
    const data = 'hello, registry'
    const digest = sha256(data)
    const put = await fetch(`${reg.url}/v2/a/b/c/blobs/uploads/?digest=${digest}`, { method: 'POST', body: data })
    assert.equal(put.status, 201)
    assert.equal(put.headers.get('location'), `/v2/a/b/c/blobs/${digest}`)
    assert.equal(put.headers.get('docker-content-digest'), digest)
    const head = await fetch(`${reg.url}/v2/a/b/c/blobs/${digest}`, { method: 'HEAD' })
    assert.equal(head.status, 200)
    assert.equal(head.headers.get('content-length'), String(data.length))
    assert.equal(head.headers.get('docker-content-digest'), digest)
    assert.equal(head.headers.get('accept-ranges'), 'bytes')
    const get = await fetch(`${reg.url}/v2/a/b/c/blobs/${digest}`)
    assert.equal(await get.text(), data)
    // Content-addressed under root/blobs, shared by repositories.
    assert.equal((await fetch(`${reg.url}/v2/other/blobs/${digest}`)).status, 404)
    assert.deepEqual(errors, [])
  })
})

test('Range forms: a-b, a-, -n, clamped end, ignored multi-range, 416 past the end', async () => {
  await withRegistry({}, async ({ reg }) => {
    const data = '0123456789'
    const digest = await pushBlob(reg, 'r', data)
    const get = async (range: string): Promise<Response> => await fetch(`${reg.url}/v2/r/blobs/${digest}`, { headers: { Range: range } })
    const cases: Array<[string, string, string]> = [
      ['bytes=2-5', '2345', 'bytes 2-5/10'],
      ['bytes=7-', '789', 'bytes 7-9/10'],
      ['bytes=-3', '789', 'bytes 7-9/10'],
      ['bytes=-30', data, 'bytes 0-9/10'],
      ['bytes=8-100', '89', 'bytes 8-9/10']
    ]
    for (const [range, body, contentRange] of cases) {
      const res = await get(range)
      assert.equal(res.status, 206, range)
      assert.equal(res.headers.get('content-range'), contentRange, range)
      assert.equal(res.headers.get('content-length'), String(body.length), range)
      assert.equal(await res.text(), body, range)
    }
    const multi = await get('bytes=0-1,4-5')
    assert.equal(multi.status, 200)
    assert.equal(await multi.text(), data)
    for (const range of ['bytes=10-', 'bytes=10-20', 'bytes=-0']) {
      const res = await get(range)
      assert.equal(res.status, 416, range)
      assert.equal(res.headers.get('content-range'), 'bytes */10')
      assert.equal(await errorCode(res), 'RANGE_INVALID')
    }
    assert.equal(reg.counters.snapshot().r.rangeRequests, 9)
  })
})

test('a digest mismatch is rejected with DIGEST_INVALID and nothing is stored', async () => {
  await withRegistry({}, async ({ reg, root }) => {
    const wrong = sha256('something else')
    const res = await fetch(`${reg.url}/v2/r/blobs/uploads/?digest=${wrong}`, { method: 'POST', body: 'payload' })
    assert.equal(res.status, 400)
    assert.equal(await errorCode(res), 'DIGEST_INVALID')
    assert.equal((await fetch(`${reg.url}/v2/r/blobs/${wrong}`, { method: 'HEAD' })).status, 404)
    assert.equal((await fetch(`${reg.url}/v2/r/blobs/${sha256('payload')}`, { method: 'HEAD' })).status, 404)
    // Same through a session: the final PUT fails and the session and its bytes are gone.
    const post = await fetch(`${reg.url}/v2/r/blobs/uploads/`, { method: 'POST' })
    const loc = post.headers.get('location') as string
    const put = await fetch(`${reg.url}${loc}?digest=${wrong}`, { method: 'PUT', body: 'payload' })
    assert.equal(put.status, 400)
    assert.equal(await errorCode(put), 'DIGEST_INVALID')
    assert.equal(await errorCode(await fetch(`${reg.url}${loc}`)), 'BLOB_UPLOAD_UNKNOWN')
    assert.deepEqual(await filesUnder(join(root, 'blobs')), [])
    assert.deepEqual(await filesUnder(join(root, 'uploads')), [])
  })
})

test('chunked upload: POST, PATCH with and without Content-Range, 416 out of order, status, PUT', async () => {
  await withRegistry({}, async ({ reg }) => {
    const post = await fetch(`${reg.url}/v2/r/blobs/uploads/`, { method: 'POST' })
    assert.equal(post.status, 202)
    const loc = post.headers.get('location') as string
    const uuid = post.headers.get('docker-upload-uuid') as string
    assert.match(uuid, /^[0-9a-f-]{36}$/)
    assert.equal(loc, `/v2/r/blobs/uploads/${uuid}`)
    assert.equal(post.headers.get('range'), '0-0')

    const p1 = await fetch(`${reg.url}${loc}`, { method: 'PATCH', body: 'abcdefghij', headers: { 'Content-Range': '0-9', 'Content-Type': 'application/octet-stream' } })
    assert.equal(p1.status, 202)
    assert.equal(p1.headers.get('range'), '0-9')

    const bad = await fetch(`${reg.url}${loc}`, { method: 'PATCH', body: 'xyz', headers: { 'Content-Range': '5-7' } })
    assert.equal(bad.status, 416)
    assert.equal(bad.headers.get('range'), '0-9')
    assert.equal(await errorCode(bad), 'RANGE_INVALID')

    const short = await fetch(`${reg.url}${loc}`, { method: 'PATCH', body: 'xy', headers: { 'Content-Range': '10-12' } })
    assert.equal(short.status, 400)
    assert.equal(await errorCode(short), 'SIZE_INVALID')

    // Streamed chunk (no Content-Range, chunked transfer encoding).
    const stream = new ReadableStream({ start (c) { c.enqueue(new TextEncoder().encode('klmno')); c.close() } })
    const p2 = await fetch(`${reg.url}${loc}`, { method: 'PATCH', body: stream, duplex: 'half' } as RequestInit)
    assert.equal(p2.status, 202)
    assert.equal(p2.headers.get('range'), '0-14')

    const status = await fetch(`${reg.url}${loc}`)
    assert.equal(status.status, 204)
    assert.equal(status.headers.get('range'), '0-14')
    assert.equal(status.headers.get('docker-upload-uuid'), uuid)

    const whole = 'abcdefghijklmnopqrst'
    const digest = sha256(whole)
    const put = await fetch(`${reg.url}${loc}?digest=${digest}`, { method: 'PUT', body: 'pqrst', headers: { 'Content-Range': '15-19' } })
    assert.equal(put.status, 201)
    assert.equal(put.headers.get('location'), `/v2/r/blobs/${digest}`)
    assert.equal(put.headers.get('docker-content-digest'), digest)
    assert.equal(await (await fetch(`${reg.url}/v2/r/blobs/${digest}`)).text(), whole)
    assert.equal((await fetch(`${reg.url}${loc}`)).status, 404)
  })
})

test('PUT without a body completes; bad digest parameter keeps the session; DELETE cancels', async () => {
  await withRegistry({}, async ({ reg }) => {
    const loc = (await fetch(`${reg.url}/v2/r/blobs/uploads/`, { method: 'POST' })).headers.get('location') as string
    await fetch(`${reg.url}${loc}`, { method: 'PATCH', body: 'data' })
    const noDigest = await fetch(`${reg.url}${loc}`, { method: 'PUT' })
    assert.equal(await errorCode(noDigest), 'DIGEST_INVALID')
    const put = await fetch(`${reg.url}${loc}?digest=${sha256('data')}`, { method: 'PUT' })
    assert.equal(put.status, 201)

    const loc2 = (await fetch(`${reg.url}/v2/r/blobs/uploads/`, { method: 'POST' })).headers.get('location') as string
    assert.equal((await fetch(`${reg.url}${loc2}`, { method: 'DELETE' })).status, 204)
    const gone = await fetch(`${reg.url}${loc2}`, { method: 'PATCH', body: 'x' })
    assert.equal(gone.status, 404)
    assert.equal(await errorCode(gone), 'BLOB_UPLOAD_UNKNOWN')
    // An upload belongs to the repository that opened it.
    const loc3 = (await fetch(`${reg.url}/v2/r/blobs/uploads/`, { method: 'POST' })).headers.get('location') as string
    const elsewhere = loc3.replace('/v2/r/', '/v2/q/')
    assert.equal(await errorCode(await fetch(`${reg.url}${elsewhere}`)), 'BLOB_UPLOAD_UNKNOWN')
  })
})

test('cross-repository mount: 201 when the source holds the blob, else an upload session', async () => {
  await withRegistry({}, async ({ reg }) => {
    const digest = await pushBlob(reg, 'src/app', 'layer bytes')
    const res = await fetch(`${reg.url}/v2/dst/app/blobs/uploads/?mount=${digest}&from=src/app`, { method: 'POST' })
    assert.equal(res.status, 201)
    assert.equal(res.headers.get('location'), `/v2/dst/app/blobs/${digest}`)
    assert.equal(await (await fetch(`${reg.url}/v2/dst/app/blobs/${digest}`)).text(), 'layer bytes')
    const missing = sha256('not there')
    const fallback = await fetch(`${reg.url}/v2/dst/app/blobs/uploads/?mount=${missing}&from=src/app`, { method: 'POST' })
    assert.equal(fallback.status, 202)
    assert.match(fallback.headers.get('location') as string, /^\/v2\/dst\/app\/blobs\/uploads\//)
  })
})

test('blob DELETE unlinks it from one repository only', async () => {
  await withRegistry({}, async ({ reg }) => {
    const digest = await pushBlob(reg, 'one', 'shared')
    await pushBlob(reg, 'two', 'shared')
    assert.equal((await fetch(`${reg.url}/v2/one/blobs/${digest}`, { method: 'DELETE' })).status, 202)
    const gone = await fetch(`${reg.url}/v2/one/blobs/${digest}`)
    assert.equal(gone.status, 404)
    assert.equal(await errorCode(gone), 'BLOB_UNKNOWN')
    assert.equal(await (await fetch(`${reg.url}/v2/two/blobs/${digest}`)).text(), 'shared')
    assert.equal(await errorCode(await fetch(`${reg.url}/v2/one/blobs/${digest}`, { method: 'DELETE' })), 'BLOB_UNKNOWN')
  })
})

test('manifest PUT by tag, GET/HEAD by tag and digest, DELETE by digest', async () => {
  await withRegistry({}, async ({ reg }) => {
    const body = await imageManifest(reg, 'app', ['layer-1', 'layer-2'])
    const digest = sha256(body)
    const put = await putManifest(reg, 'app', 'v1', body)
    assert.equal(put.status, 201)
    assert.equal(put.headers.get('docker-content-digest'), digest)
    assert.equal(put.headers.get('location'), `/v2/app/manifests/${digest}`)
    for (const ref of ['v1', digest]) {
      const get = await fetch(`${reg.url}/v2/app/manifests/${ref}`, { headers: { Accept: OCI_MANIFEST } })
      assert.equal(get.status, 200)
      assert.equal(get.headers.get('content-type'), OCI_MANIFEST)
      assert.equal(get.headers.get('docker-content-digest'), digest)
      assert.deepEqual(Buffer.from(await get.arrayBuffer()), body)
      const head = await fetch(`${reg.url}/v2/app/manifests/${ref}`, { method: 'HEAD' })
      assert.equal(head.headers.get('content-length'), String(body.length))
    }
    const unknownTag = await fetch(`${reg.url}/v2/app/manifests/nope`)
    assert.equal(unknownTag.status, 404)
    assert.equal(await errorCode(unknownTag), 'MANIFEST_UNKNOWN')
    assert.equal(await errorCode(await fetch(`${reg.url}/v2/nothing/manifests/v1`)), 'NAME_UNKNOWN')

    assert.equal((await fetch(`${reg.url}/v2/app/manifests/${digest}`, { method: 'DELETE' })).status, 202)
    assert.equal(await errorCode(await fetch(`${reg.url}/v2/app/manifests/v1`)), 'MANIFEST_UNKNOWN')
    assert.equal(await errorCode(await fetch(`${reg.url}/v2/app/manifests/${digest}`, { method: 'DELETE' })), 'MANIFEST_UNKNOWN')
  })
})

test('manifests referencing missing or foreign-repository blobs are rejected', async () => {
  await withRegistry({}, async ({ reg }) => {
    const body = await imageManifest(reg, 'app', ['present'])
    const doc = JSON.parse(body.toString()) as { layers: Array<{ digest: string, size: number, mediaType: string }> }
    doc.layers.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha256('absent'), size: 6 })
    const res = await putManifest(reg, 'app', 'v1', Buffer.from(JSON.stringify(doc)))
    assert.equal(res.status, 400)
    assert.equal(await errorCode(res), 'MANIFEST_BLOB_UNKNOWN')
    // Blobs of another repository do not count.
    const other = await putManifest(reg, 'other', 'v1', body)
    assert.equal(await errorCode(other), 'MANIFEST_BLOB_UNKNOWN')
    // A descriptor whose size disagrees with the stored blob.
    doc.layers.pop()
    doc.layers[0].size += 1
    assert.equal(await errorCode(await putManifest(reg, 'app', 'v1', Buffer.from(JSON.stringify(doc)))), 'MANIFEST_INVALID')
    assert.equal(await errorCode(await fetch(`${reg.url}/v2/app/manifests/v1`)), 'MANIFEST_UNKNOWN')
  })
})

test('invalid manifests: bad JSON, schema, media type, Content-Type mismatch, digest, size cap', async () => {
  await withRegistry({ maxManifestSize: 4096 }, async ({ reg }) => {
    const good = await imageManifest(reg, 'app', ['l'])
    const invalid: Array<[Buffer, string]> = [
      [Buffer.from('{not json'), OCI_MANIFEST],
      [Buffer.from('[1,2]'), OCI_MANIFEST],
      [Buffer.from(JSON.stringify({ ...JSON.parse(good.toString()), schemaVersion: 1 })), OCI_MANIFEST],
      [Buffer.from(JSON.stringify({ ...JSON.parse(good.toString()), mediaType: 'application/x-nope' })), 'application/x-nope'],
      [Buffer.from(JSON.stringify({ ...JSON.parse(good.toString()), layers: 'x' })), OCI_MANIFEST],
      [Buffer.from(JSON.stringify({ ...JSON.parse(good.toString()), config: { digest: 'sha256:zz', size: 1, mediaType: 'x' } })), OCI_MANIFEST],
      [good, OCI_INDEX]
    ]
    for (const [body, type] of invalid) {
      const res = await putManifest(reg, 'app', 'v1', body, type)
      assert.equal(res.status, 400, body.toString())
      assert.equal(await errorCode(res), 'MANIFEST_INVALID', body.toString())
    }
    const wrongDigest = await putManifest(reg, 'app', sha256('other'), good)
    assert.equal(await errorCode(wrongDigest), 'DIGEST_INVALID')
    const big = Buffer.alloc(5000, 0x20)
    const tooBig = await putManifest(reg, 'app', 'v1', big)
    assert.equal(tooBig.status, 413)
    assert.equal(await errorCode(tooBig), 'MANIFEST_INVALID')
    // By digest, and with the Docker media type.
    assert.equal((await putManifest(reg, 'app', sha256(good), good)).status, 201)
    const docker = Buffer.from(JSON.stringify({ ...JSON.parse(good.toString()), mediaType: 'application/vnd.docker.distribution.manifest.v2+json' }))
    const res = await putManifest(reg, 'app', 'docker', docker, 'application/vnd.docker.distribution.manifest.v2+json')
    assert.equal(res.status, 201)
    const get = await fetch(`${reg.url}/v2/app/manifests/docker`)
    assert.equal(get.headers.get('content-type'), 'application/vnd.docker.distribution.manifest.v2+json')
  })
})

test('an index is accepted only when every manifest it lists is in the repository', async () => {
  await withRegistry({}, async ({ reg }) => {
    const m = await imageManifest(reg, 'multi', ['amd64 layer'])
    const entry = { mediaType: OCI_MANIFEST, digest: sha256(m), size: m.length, platform: { os: 'linux', architecture: 'amd64' } }
    const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [entry] }))
    const early = await putManifest(reg, 'multi', 'latest', index, OCI_INDEX)
    assert.equal(early.status, 400)
    assert.equal(await errorCode(early), 'MANIFEST_BLOB_UNKNOWN')
    assert.equal((await putManifest(reg, 'multi', sha256(m), m)).status, 201)
    assert.equal((await putManifest(reg, 'multi', 'latest', index, OCI_INDEX)).status, 201)
    const get = await fetch(`${reg.url}/v2/multi/manifests/latest`)
    assert.equal(get.headers.get('content-type'), OCI_INDEX)
    assert.equal(get.headers.get('docker-content-digest'), sha256(index))
  })
})

test('tags list: sorted, paginated with n and last, NAME_UNKNOWN for an unknown repository', async () => {
  await withRegistry({}, async ({ reg }) => {
    const body = await imageManifest(reg, 'lib/app', ['l'])
    for (const tag of ['v2', 'latest', 'v1', 'V0_rc.1-x']) assert.equal((await putManifest(reg, 'lib/app', tag, body)).status, 201)
    const all = await fetch(`${reg.url}/v2/lib/app/tags/list`)
    assert.deepEqual(await all.json(), { name: 'lib/app', tags: ['V0_rc.1-x', 'latest', 'v1', 'v2'] })
    const page = await fetch(`${reg.url}/v2/lib/app/tags/list?n=2`)
    assert.deepEqual(await page.json(), { name: 'lib/app', tags: ['V0_rc.1-x', 'latest'] })
    assert.equal(page.headers.get('link'), '</v2/lib/app/tags/list?n=2&last=latest>; rel="next"')
    const next = await fetch(`${reg.url}/v2/lib/app/tags/list?n=2&last=latest`)
    assert.deepEqual(await next.json(), { name: 'lib/app', tags: ['v1', 'v2'] })
    assert.equal(next.headers.get('link'), null)
    assert.equal(await errorCode(await fetch(`${reg.url}/v2/lib/app/tags/list?n=-1`)), 'PAGINATION_NUMBER_INVALID')
    const unknown = await fetch(`${reg.url}/v2/lib/none/tags/list`)
    assert.equal(unknown.status, 404)
    assert.equal(await errorCode(unknown), 'NAME_UNKNOWN')
    // Deleting a tag (spec 1.1) leaves the manifest.
    assert.equal((await fetch(`${reg.url}/v2/lib/app/manifests/v2`, { method: 'DELETE' })).status, 202)
    assert.deepEqual(((await (await fetch(`${reg.url}/v2/lib/app/tags/list`)).json()) as { tags: string[] }).tags, ['V0_rc.1-x', 'latest', 'v1'])
  })
})

test('counters: bytes served, received, requests and range requests per repository', async () => {
  await withRegistry({}, async ({ reg }) => {
    const data = Buffer.alloc(1000, 7)
    const digest = await pushBlob(reg, 'count/me', data)
    await (await fetch(`${reg.url}/v2/count/me/blobs/${digest}`)).arrayBuffer()
    await (await fetch(`${reg.url}/v2/count/me/blobs/${digest}`, { headers: { Range: 'bytes=0-99' } })).arrayBuffer()
    await fetch(`${reg.url}/v2/count/me/blobs/${digest}`, { method: 'HEAD' })
    await (await fetch(`${reg.url}/v2/elsewhere/blobs/${digest}`)).arrayBuffer()
    await (await fetch(`${reg.url}/v2/`)).arrayBuffer()
    assert.equal(reg.counters.bytesServed('count/me'), 1100)
    assert.equal(reg.counters.bytesServed(), 1100)
    assert.equal(reg.counters.requests('count/me'), 4)
    assert.equal(reg.counters.requests('elsewhere'), 1)
    assert.equal(reg.counters.requests(), 6)
    assert.equal(reg.counters.requests('never'), 0)
    const snap = reg.counters.snapshot()
    assert.deepEqual(snap['count/me'], { bytesServed: 1100, bytesReceived: 1000, requests: 4, rangeRequests: 1 })
    snap['count/me'].requests = 99
    assert.equal(reg.counters.requests('count/me'), 4, 'snapshot is a copy')
  })
})

test('storage survives a restart on the same root', async () => {
  const { mkdtemp, rm } = await import('node:fs/promises')
  const { tmpdir } = await import('node:os')
  const { startRegistryServer } = await import('./server.js')
  const root = await mkdtemp(join(tmpdir(), 'rafspeer-reg-'))
  try {
    const first = await startRegistryServer({ root })
    let body: Buffer
    try {
      body = await imageManifest(first, 'keep', ['persisted'])
      assert.equal((await putManifest(first, 'keep', 'v1', body)).status, 201)
    } finally { await first.stop() }
    const second = await startRegistryServer({ root })
    try {
      const get = await fetch(`${second.url}/v2/keep/manifests/v1`)
      assert.deepEqual(Buffer.from(await get.arrayBuffer()), body)
      assert.equal(await (await fetch(`${second.url}/v2/keep/blobs/${sha256('persisted')}`)).text(), 'persisted')
    } finally { await second.stop() }
  } finally { await rm(root, { recursive: true, force: true }) }
})

test('options are validated, every problem reported at once', async () => {
  const { startRegistryServer } = await import('./server.js')
  await assert.rejects(startRegistryServer({ root: '', port: 70000, bandwidthLimit: -1, maxManifestSize: 0 }), (err: Error) => {
    assert.match(err.message, /root/)
    assert.match(err.message, /port/)
    assert.match(err.message, /bandwidthLimit/)
    assert.match(err.message, /maxManifestSize/)
    return true
  })
})
