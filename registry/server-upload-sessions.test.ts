/**
 * Upload sessions of the embedded registry are bounded and reaped: past `maxUploadSessions` a POST is answered 429
 * TOOMANYREQUESTS (with Retry-After) until one finishes or is cancelled; a session idle past `uploadIdleMs` is
 * dropped with its data on disk, while one in use is kept; the client retries a 429 after Retry-After.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { RegistryClient } from './client.js'
import { errorCode, raw, sha256, withRegistry } from './server-testkit.js'

const uploadFiles = async (root: string): Promise<string[]> => await readdir(join(root, 'uploads'))

test('past maxUploadSessions a new session is 429 TOOMANYREQUESTS until one is finished or cancelled', async () => {
  await withRegistry({ maxUploadSessions: 3 }, async ({ reg }) => {
    const locations: string[] = []
    for (let i = 0; i < 3; i++) {
      const r = await raw(reg, 'POST', '/v2/bound/app/blobs/uploads/')
      assert.equal(r.status, 202)
      locations.push(String(r.headers.location))
    }
    const full = await fetch(`${reg.url}/v2/bound/app/blobs/uploads/`, { method: 'POST' })
    assert.equal(full.status, 429)
    assert.equal(full.headers.get('retry-after'), '1')
    const body = await full.json() as { errors: Array<{ code: string, message: string }> }
    assert.equal(body.errors[0]!.code, 'TOOMANYREQUESTS')
    assert.match(body.errors[0]!.message, /too many upload sessions open \(3\)/)
    // single-request pushes open no session and still work
    const data = Buffer.from('monolithic')
    assert.equal((await raw(reg, 'POST', `/v2/bound/app/blobs/uploads/?digest=${sha256(data)}`, { 'Content-Length': String(data.length) }, data)).status, 201)

    // a finished session and a cancelled one free their places
    const blob = Buffer.from('finished')
    assert.equal((await raw(reg, 'PUT', `${locations[0]}?digest=${sha256(blob)}`, { 'Content-Length': String(blob.length) }, blob)).status, 201)
    assert.equal((await raw(reg, 'DELETE', locations[1]!)).status, 204)
    for (let i = 0; i < 2; i++) assert.equal((await raw(reg, 'POST', '/v2/bound/app/blobs/uploads/')).status, 202)
    assert.equal(await errorCode(await fetch(`${reg.url}/v2/bound/app/blobs/uploads/`, { method: 'POST' })), 'TOOMANYREQUESTS')
  })
})

test('an idle session is reaped with its data; a session in use is kept', async () => {
  const idleMs = 600
  await withRegistry({ uploadIdleMs: idleMs }, async ({ reg, root }) => {
    const open = async (): Promise<string> => String((await raw(reg, 'POST', '/v2/reap/app/blobs/uploads/')).headers.location)
    const abandoned = await open()
    const used = await open()
    const chunk = Buffer.alloc(1000, 1)
    assert.equal((await raw(reg, 'PATCH', abandoned, { 'Content-Length': '1000', 'Content-Range': '0-999' }, chunk)).status, 202)
    assert.equal((await uploadFiles(root)).length, 2)
    // the used session gets a request every idle/3; the abandoned one none for 3 idle times
    for (let i = 0; i < 9; i++) {
      await new Promise(resolve => setTimeout(resolve, idleMs / 3))
      assert.equal((await raw(reg, 'GET', used)).status, 204)
    }
    const gone = await fetch(`${reg.url}${abandoned}`, { method: 'PATCH', body: chunk, headers: { 'Content-Range': '1000-1999' } })
    assert.equal(gone.status, 404)
    assert.equal(await errorCode(gone), 'BLOB_UPLOAD_UNKNOWN')
    assert.deepEqual(await uploadFiles(root), [used.split('/').pop()!], 'the reaped session left no file behind')
    const blob = Buffer.from('still usable')
    assert.equal((await raw(reg, 'PUT', `${used}?digest=${sha256(blob)}`, { 'Content-Length': String(blob.length) }, blob)).status, 201)
  })
})

test('a client pushing into a full registry waits out Retry-After and succeeds once a session frees up', async () => {
  await withRegistry({ maxUploadSessions: 1 }, async ({ reg }) => {
    const held = String((await raw(reg, 'POST', '/v2/wait/app/blobs/uploads/')).headers.location)
    setTimeout(() => { void raw(reg, 'DELETE', held) }, 500)
    const client = new RegistryClient({ retries: 3, retryBaseMs: 10 })
    try {
      const blob = Buffer.from('pushed after the wait')
      const r = await client.pushBlob(`${reg.host}/wait/app`, sha256(blob), blob.length, () => (async function * () { yield blob })())
      assert.equal(r.pushed, true)
    } finally { await client.close() }
  })
})
