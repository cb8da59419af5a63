import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { BlobCache } from '../../cache/index.js'
import { buildBlob, tempDir } from '../../cache/test-support.js'
import { getBit } from './have-protocol.js'
import { CacheChunks, waitingForFlights } from './local-chunks.js'

test('a node\'s own chunks for its neighbours: registration, presence, in-flight, given up, evicted, digests', async t => {
  const dir = await tempDir(t)
  const b = await buildBlob(dir, [200_000, 5000, 70_000, 9000])
  const cache = await BlobCache.open(join(dir, 'cache'))
  const local = new CacheChunks(cache, { pendingWhenPlanned: false })
  t.after(async () => { local.close(); await cache.close() })
  const id = b.blob.blobId
  const heard: string[] = []
  const off = local.subscribe(id, {
    have: xs => heard.push(`have ${xs.join()}`),
    pending: xs => heard.push(`pending ${xs.join()}`),
    dropped: xs => heard.push(`dropped ${xs.join()}`),
    known: () => heard.push('known')
  })
  assert.equal(local.snapshot(id), undefined)
  await cache.registerBlob(b.blob)
  assert.deepEqual(heard, ['known'])
  // a fetch starts, the chunk lands in the cache, the fetch ends: PENDING then HAVE, no DROPPED
  local.started(id, [b.chunks[0]!, b.chunks[1]!])
  assert.deepEqual(local.snapshot(id)!.pending.sort(), [0, 1])
  await cache.putChunk(id, b.chunks[0]!, b.plain[0]!)
  local.ended(id, 0)
  // the other fetch is given up
  local.ended(id, 1)
  assert.deepEqual(heard.slice(1), ['pending 0,1', 'have 0', 'dropped 1'])
  const snap = local.snapshot(id)!
  assert.equal(snap.chunks, b.chunks.length)
  assert.equal(getBit(snap.bits, 0), true)
  assert.equal(getBit(snap.bits, 1), false)
  assert.deepEqual(snap.pending, [])
  // two fetches of one chunk (two mounts): pending once, ended twice
  local.started(id, [b.chunks[2]!])
  local.started(id, [b.chunks[2]!])
  assert.equal(local.fetching(b.chunks[2]!.digest), true)
  let landed = false
  const waiting = local.landed(b.chunks[2]!.digest, 5000).then(() => { landed = true })
  local.ended(id, 2)
  assert.deepEqual(local.snapshot(id)!.pending, [2])
  await new Promise(resolve => setImmediate(resolve))
  assert.equal(landed, false, 'one fetch of it still runs')
  local.ended(id, 2)
  await waiting
  assert.equal(local.fetching(b.chunks[2]!.digest), false)
  assert.equal(heard.at(-1), 'dropped 2')
  // a chunk that fails its check is dropped from presence: neighbours hear DROPPED
  heard.length = 0
  await cache.verifyAll(id)
  assert.deepEqual(heard, [])
  assert.deepEqual(await local.hasDigests([b.chunks[0]!.digest, b.chunks[3]!.digest]), [true, false])
  off()
  await cache.putChunk(id, b.chunks[3]!, b.plain[3]!)
  assert.deepEqual(heard, [], 'no listener after unsubscribing')
})

test('PENDING when planned: a fetch in flight says nothing until the locator chose its source; given up unsaid, no DROPPED', async t => {
  const dir = await tempDir(t)
  const b = await buildBlob(dir, [5000, 7000, 9000])
  const cache = await BlobCache.open(join(dir, 'cache'))
  const local = new CacheChunks(cache)
  t.after(async () => { local.close(); await cache.close() })
  const id = b.blob.blobId
  await cache.registerBlob(b.blob)
  const heard: string[] = []
  local.subscribe(id, { have: xs => heard.push(`have ${xs.join()}`), pending: xs => heard.push(`pending ${xs.join()}`), dropped: xs => heard.push(`dropped ${xs.join()}`), known: () => {} })
  local.started(id, [b.chunks[0]!, b.chunks[1]!, b.chunks[2]!])
  assert.deepEqual(heard, [])
  assert.deepEqual(local.snapshot(id)!.pending, [])
  // in flight all the same: a neighbour's request for it waits (the chunk server's `fetching`)
  assert.equal(local.fetching(b.chunks[2]!.digest), true)
  local.planned(id, [0, 1, 7])
  local.planned(id, [1])
  assert.deepEqual(heard, ['pending 0,1'])
  assert.deepEqual(local.snapshot(id)!.pending.sort(), [0, 1])
  local.ended(id, 1)
  local.ended(id, 2)
  assert.deepEqual(heard, ['pending 0,1', 'dropped 1'])
})

/** a cache with a registered blob of two chunks (none present yet), and our view of it */
async function twoChunks (t: TestContext): Promise<{ b: Awaited<ReturnType<typeof buildBlob>>, cache: BlobCache, local: CacheChunks }> {
  const dir = await tempDir(t)
  const b = await buildBlob(dir, [5000, 7000])
  const cache = await BlobCache.open(join(dir, 'cache'))
  const local = new CacheChunks(cache)
  t.after(async () => { local.close(); await cache.close() })
  await cache.registerBlob(b.blob)
  return { b, cache, local }
}

test('the chunk server\'s view waits for a chunk in flight its own default, or as long as the look-up asks', async t => {
  const { b, cache, local } = await twoChunks(t)
  const servable = waitingForFlights(cache, local, 50)
  local.started(b.blob.blobId, [b.chunks[0]!])
  let started = performance.now()
  assert.equal(await servable.findByDigest(b.chunks[0]!.digest), undefined, 'the default wait ran out')
  const waited = performance.now() - started
  assert.ok(waited >= 40 && waited < 400, `waited ${waited.toFixed(0)} ms`)
  // a longer wait (an asker a redirect sent here) sees the chunk land
  started = performance.now()
  setTimeout(() => { void cache.putChunk(b.blob.blobId, b.chunks[0]!, b.plain[0]!).then(() => { local.ended(b.blob.blobId, 0) }) }, 150)
  const found = await servable.findByDigest(b.chunks[0]!.digest, { waitMs: 2000 })
  assert.equal(found?.chunk.index, 0)
  assert.ok(performance.now() - started >= 140)
})

test('the chunk server\'s view does not wait for a chunk our fetch is asking the asker for', async t => {
  const { b, cache, local } = await twoChunks(t)
  const asked: Array<[string, string]> = []
  // our fetch of chunk 0 waits on peer "A"
  const servable = waitingForFlights(cache, local, 5000, (digest, peer) => {
    asked.push([digest.toString('hex'), peer])
    return peer === 'A' && digest.equals(b.chunks[0]!.digest)
  })
  local.started(b.blob.blobId, [b.chunks[0]!, b.chunks[1]!])
  // "A" asking for chunk 0 would wait on us while we wait on it: answered at once, not found (the server says BUSY)
  let started = performance.now()
  assert.equal(await servable.findByDigest(b.chunks[0]!.digest, { asker: 'A' }), undefined)
  assert.ok(performance.now() - started < 1000, 'not parked')
  assert.deepEqual(asked, [[b.chunks[0]!.digest.toString('hex'), 'A']])
  // anyone else waits for our fetch of it, and so does "A" for a chunk we ask someone else for
  started = performance.now()
  setTimeout(() => { void cache.putChunk(b.blob.blobId, b.chunks[0]!, b.plain[0]!).then(() => { local.ended(b.blob.blobId, 0) }) }, 150)
  assert.equal((await servable.findByDigest(b.chunks[0]!.digest, { asker: 'B' }))?.chunk.index, 0)
  assert.ok(performance.now() - started >= 140)
  setTimeout(() => { void cache.putChunk(b.blob.blobId, b.chunks[1]!, b.plain[1]!).then(() => { local.ended(b.blob.blobId, 1) }) }, 150)
  assert.equal((await servable.findByDigest(b.chunks[1]!.digest, { asker: 'A' }))?.chunk.index, 1)
})
