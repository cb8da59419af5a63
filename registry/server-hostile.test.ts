/**
 * Hostile clients cannot crash the embedded registry, escape its storage directory, or leak descriptors:
 * traversal and escaped paths, bad digests and ranges, garbage request lines, random targets, aborts mid-body,
 * and `stop()` while transfers are running.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readdir, readlink } from 'node:fs/promises'
import { request } from 'node:http'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import fc from 'fast-check'
import { pushBlob, raw, sha256, withRegistry } from './server-testkit.js'

const DIGEST = sha256('x')

function code (body: Buffer): string | undefined {
  return (JSON.parse(body.toString()) as { errors: Array<{ code: string }> }).errors[0]?.code
}

async function openPaths (): Promise<string[]> {
  const out: string[] = []
  for (const fd of await readdir('/proc/self/fd')) {
    try { out.push(await readlink(`/proc/self/fd/${fd}`)) } catch { /* closed meanwhile */ }
  }
  return out
}

async function eventually (check: () => Promise<boolean>, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms
  while (!await check()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

test('traversal, escaped slashes, bad names, digests and references get 4xx JSON errors', async () => {
  await withRegistry({}, async ({ reg, errors }) => {
    const cases: Array<[string, string, number, string]> = [
      ['GET', '/v2/../../etc/passwd', 404, 'NOT_FOUND'],
      ['GET', `/v2/a/../b/blobs/${DIGEST}`, 400, 'NAME_INVALID'],
      ['GET', `/v2/a/%2e%2e/blobs/${DIGEST}`, 400, 'NAME_INVALID'],
      ['GET', '/v2/a%2Fb/tags/list', 400, 'NAME_INVALID'],
      ['GET', '/v2/a//b/tags/list', 400, 'NAME_INVALID'],
      ['GET', '/v2/Upper/tags/list', 400, 'NAME_INVALID'],
      ['GET', '/v2/-a/tags/list', 400, 'NAME_INVALID'],
      ['GET', `/v2/${'a'.repeat(300)}/tags/list`, 400, 'NAME_INVALID'],
      ['GET', '/v2/a/blobs/sha256:xyz', 400, 'DIGEST_INVALID'],
      ['GET', '/v2/a/blobs/md5:d41d8cd98f00b204e9800998ecf8427e', 400, 'DIGEST_INVALID'],
      ['GET', `/v2/a/blobs/${DIGEST.toUpperCase()}`, 400, 'DIGEST_INVALID'],
      ['GET', '/v2/a/blobs/uploads/..', 404, 'BLOB_UPLOAD_UNKNOWN'],
      ['PATCH', '/v2/a/blobs/uploads/not-a-uuid', 404, 'BLOB_UPLOAD_UNKNOWN'],
      ['PATCH', '/v2/a/blobs/uploads/00000000-0000-0000-0000-000000000000', 404, 'BLOB_UPLOAD_UNKNOWN'],
      ['GET', '/v2/a/manifests/..', 400, 'MANIFEST_INVALID'],
      ['GET', '/v2/a/manifests/sha256:../../x', 404, 'NOT_FOUND'],
      ['PUT', '/v2/a/manifests/sha256:1234', 400, 'DIGEST_INVALID'],
      ['GET', '/v2/_catalog', 404, 'NOT_FOUND'],
      ['GET', '/', 404, 'NOT_FOUND'],
      ['PUT', '/v2/', 405, 'UNSUPPORTED'],
      ['POST', `/v2/a/blobs/${DIGEST}`, 405, 'UNSUPPORTED'],
      ['POST', '/v2/a/blobs/uploads/?digest=sha256:bad', 400, 'DIGEST_INVALID'],
      ['GET', '/v2/a/blobs/uploads/', 405, 'UNSUPPORTED'],
      ['GET', `/v2/a/blobs/${DIGEST}`, 404, 'BLOB_UNKNOWN']
    ]
    for (const [method, path, status, expected] of cases) {
      const res = await raw(reg, method, path)
      assert.equal(res.status, status, `${method} ${path}`)
      assert.equal(code(res.body), expected, `${method} ${path}`)
    }
    const absolute = await raw(reg, 'GET', 'http://evil.example/v2/')
    assert.equal(absolute.status, 400)
    assert.deepEqual(errors, [])
  })
})

test('absurd Range and Content-Range values are refused, not crashed on', async () => {
  await withRegistry({}, async ({ reg, errors }) => {
    const digest = await pushBlob(reg, 'r', '0123456789')
    for (const range of ['bytes=99999999999999999999999-', 'bytes=-99999999999999999999999', 'bytes=5-3', 'bytes=x-y', 'items=0-1', 'bytes=']) {
      const res = await raw(reg, 'GET', `/v2/r/blobs/${digest}`, { Range: range })
      assert.ok(res.status === 200 || res.status === 206 || res.status === 416, `${range}: ${res.status}`)
    }
    const post = await raw(reg, 'POST', '/v2/r/blobs/uploads/')
    const loc = post.headers.location as string
    for (const cr of ['bogus', '0-x', '5-1', '99999999999999999999-99999999999999999999']) {
      const res = await raw(reg, 'PATCH', loc, { 'Content-Range': cr }, Buffer.from('ab'))
      assert.equal(res.status, 416, cr)
      assert.equal(code(res.body), 'RANGE_INVALID')
    }
    assert.deepEqual(errors, [])
  })
})

test('random request targets and methods never produce a 5xx', async () => {
  await withRegistry({}, async ({ reg, errors }) => {
    await pushBlob(reg, 'a/b', 'known')
    const segment = fc.oneof(
      fc.constantFrom('v2', 'a', 'b', '..', '.', '%2e%2e', '%2F', 'blobs', 'uploads', 'manifests', 'tags', 'list', '', 'token',
        DIGEST, sha256('known'), 'sha256:', 'latest', '00000000-0000-0000-0000-000000000000', '?digest=', '?mount=', '&from=a/b'),
      fc.stringMatching(/^[A-Za-z0-9._:%~-]{0,12}$/)
    )
    await fc.assert(fc.asyncProperty(
      fc.constantFrom('GET', 'HEAD', 'PUT', 'POST', 'PATCH', 'DELETE', 'OPTIONS'),
      fc.array(segment, { minLength: 1, maxLength: 7 }),
      fc.boolean(),
      async (method, segments, withV2) => {
        const path = (withV2 ? '/v2/' : '/') + segments.join('/')
        const res = await raw(reg, method, path, {}, method === 'PUT' || method === 'PATCH' ? Buffer.from('{}') : undefined)
        assert.ok(res.status >= 200 && res.status < 500, `${method} ${path} → ${res.status} ${res.body.toString()}`)
      }
    ), { numRuns: 300 })
    assert.deepEqual(errors, [])
  })
})

test('garbage on the wire gets a 400 and the server keeps serving', async () => {
  await withRegistry({}, async ({ reg }) => {
    const reply = await new Promise<string>((resolve, reject) => {
      const s = connect(reg.port, '127.0.0.1', () => s.write('\x00\x01GARBAGE / HTTP/9.9\r\n\r\n'))
      let data = ''
      s.on('data', d => { data += d.toString() })
      s.on('end', () => resolve(data))
      s.on('error', reject)
    })
    assert.match(reply, /^HTTP\/1\.1 400/)
    assert.equal((await fetch(`${reg.url}/v2/`)).status, 200)
  })
})

test('a client aborting a download mid-stream leaves no descriptor open on the blob', async () => {
  await withRegistry({ bandwidthLimit: 256 * 1024 }, async ({ reg, root, errors }) => {
    const digest = await pushBlob(reg, 'big', Buffer.alloc(2 << 20, 3))
    const blobFile = `${root}/blobs/sha256/${digest.slice(7, 9)}/${digest.slice(7)}`
    await new Promise<void>((resolve, reject) => {
      const req = request({ port: reg.port, host: '127.0.0.1', path: `/v2/big/blobs/${digest}`, agent: false }, res => {
        res.once('data', () => { req.destroy(); resolve() })
      })
      req.on('error', err => { if ((err as NodeJS.ErrnoException).code !== 'ECONNRESET') reject(err) })
      req.end()
    })
    await eventually(async () => !(await openPaths()).includes(blobFile), 'the blob descriptor to close')
    const res = await fetch(`${reg.url}/v2/big/blobs/${digest}`, { headers: { Range: 'bytes=0-9' } })
    assert.equal(res.status, 206)
    assert.equal((await res.arrayBuffer()).byteLength, 10)
    assert.deepEqual(errors, [])
  })
})

test('a client aborting a chunk upload leaves the session at its previous offset', async () => {
  await withRegistry({}, async ({ reg, root, errors }) => {
    const loc = (await fetch(`${reg.url}/v2/up/blobs/uploads/`, { method: 'POST' })).headers.get('location') as string
    assert.equal((await fetch(`${reg.url}${loc}`, { method: 'PATCH', body: 'first', headers: { 'Content-Range': '0-4' } })).status, 202)
    await new Promise<void>(resolve => {
      const req = request({ port: reg.port, host: '127.0.0.1', method: 'PATCH', path: loc, agent: false, headers: { 'Content-Length': String(1 << 20), 'Content-Range': `5-${5 + (1 << 20) - 1}` } })
      req.on('error', () => resolve())
      req.write(Buffer.alloc(100 * 1024, 9), () => setTimeout(() => { req.destroy(); resolve() }, 50))
    })
    // Once the server has rolled back, the next chunk continues from offset 5.
    let res: Response | undefined
    await eventually(async () => {
      res = await fetch(`${reg.url}${loc}`, { method: 'PATCH', body: 'second', headers: { 'Content-Range': '5-10' } })
      return res.status !== 416
    }, 'the aborted chunk to be rolled back')
    assert.equal(res?.status, 202)
    assert.equal(res?.headers.get('range'), '0-10')
    const digest = sha256('firstsecond')
    assert.equal((await fetch(`${reg.url}${loc}?digest=${digest}`, { method: 'PUT' })).status, 201)
    assert.equal(await (await fetch(`${reg.url}/v2/up/blobs/${digest}`)).text(), 'firstsecond')
    assert.ok(!(await openPaths()).some(p => p.startsWith(root)), 'no descriptor left under the storage root')
    assert.deepEqual(errors, [], 'a client abort is not a server error')
  })
})

test('stop() ends running transfers promptly and closes every connection', async () => {
  await withRegistry({ bandwidthLimit: 64 * 1024 }, async ({ reg, root, errors }) => {
    const digest = await pushBlob(reg, 'slow', Buffer.alloc(1 << 20, 5))
    const clientDone = new Promise<string>(resolve => {
      const req = request({ port: reg.port, host: '127.0.0.1', path: `/v2/slow/blobs/${digest}`, agent: false }, res => {
        res.on('data', () => {})
        res.on('end', () => resolve('end'))
        res.on('error', () => resolve('error'))
        res.on('close', () => resolve('close'))
      })
      req.on('error', () => resolve('error'))
      req.end()
    })
    await new Promise(resolve => setTimeout(resolve, 200))
    const t0 = Date.now()
    await reg.stop()
    assert.ok(Date.now() - t0 < 2000, 'stop took too long')
    assert.notEqual(await clientDone, 'end', 'a 1 MiB body at 64 KiB/s cannot have completed')
    await eventually(async () => !(await openPaths()).some(p => p.startsWith(root)), 'descriptors under the root to close')
    assert.ok(root.startsWith(tmpdir()))
    assert.deepEqual(errors, [])
  })
})
