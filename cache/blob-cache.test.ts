/**
 * The blob cache's core contract: put then read, presence, a completed file byte-identical to BlobWriter's
 * uncompressed view, persistence across close/open, the format version gate, images, cross-blob copies.
 */
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { test } from 'node:test'
import { Level } from 'level'
import { BlobCache, MemoryCacheIndex } from './index.js'
import { buildBlob, tempDir } from './test-support.js'

test('put then read: plaintext back, presence, hits and misses; a sparse file sized to the view', async t => {
  const dir = await tempDir(t)
  const b = await buildBlob(dir, [200_000, 5000, 70_000])
  const cache = await BlobCache.open(join(dir, 'cache'))
  t.after(async () => { await cache.close() })
  await cache.registerBlob(b.blob)
  assert.equal((await stat(cache.blobPath(b.blob.blobId))).size, b.blob.uncompressedSize)
  const c = b.chunks[1]!
  assert.equal(await cache.readChunk(b.blob.blobId, c), undefined)
  assert.equal(cache.has(b.blob.blobId, c.index), false)
  assert.equal(await cache.putChunk(b.blob.blobId, c, b.plain[c.index]!), true)
  assert.equal(await cache.putChunk(b.blob.blobId, c, b.plain[c.index]!), false)
  assert.equal(cache.has(b.blob.blobId, c.index), true)
  assert.deepEqual(await cache.readChunk(b.blob.blobId, c), b.plain[c.index])
  assert.deepEqual(await cache.readChunk(b.blob.blobId, c, { verify: true }), b.plain[c.index])
  const s = cache.stats()
  assert.equal(s.hits, 2)
  assert.equal(s.misses, 1)
  assert.equal(s.chunksPresent, 1)
  assert.equal(s.bytesPresent, c.uncompressedSize)
  assert.equal(cache.isComplete(b.blob.blobId), false)
  await assert.rejects(cache.putChunk(b.blob.blobId, c, Buffer.alloc(3)), { code: 'RAFSPEER_ERR_CACHE_BAD_CHUNK' })
  await assert.rejects(cache.putChunk('f'.repeat(64), c, b.plain[c.index]!), { code: 'RAFSPEER_ERR_CACHE_UNKNOWN_BLOB' })
})

test('a completed cache file is byte-identical to the uncompressed view BlobWriter writes', async t => {
  const dir = await tempDir(t)
  // short chunks (zero tails), a multi-chunk file, a duplicate file (deduplicated chunks)
  const b = await buildBlob(dir, [300_000, 1, 4096, 12_345, 65_536])
  const cache = await BlobCache.open(join(dir, 'cache'))
  t.after(async () => { await cache.close() })
  await cache.registerBlob(b.blob)
  // out of order and concurrently, like a FUSE read pattern
  const order = [...b.chunks].reverse()
  await Promise.all(order.map(async c => await cache.putChunk(b.blob.blobId, c, b.plain[c.index]!)))
  assert.equal(cache.isComplete(b.blob.blobId), true)
  const got = await readFile(cache.blobPath(b.blob.blobId))
  const want = await readFile(b.viewPath)
  assert.equal(got.length, want.length)
  assert.ok(got.equals(want), 'cache file differs from the BlobWriter view')
})

test('presence, blob and image records persist across close and open', async t => {
  const dir = await tempDir(t)
  const b = await buildBlob(dir, [150_000])
  const cdir = join(dir, 'cache')
  let cache = await BlobCache.open(cdir)
  await cache.registerBlob(b.blob)
  for (const c of b.chunks.slice(0, 2)) await cache.putChunk(b.blob.blobId, c, b.plain[c.index]!)
  await cache.putImage({ ref: 'localhost/app:v1', manifestDigest: 'sha256:' + '1'.repeat(64), bootstrapPath: join(cdir, 'boot'), bootstrapDigest: 'sha256:' + '2'.repeat(64), blobIds: [b.blob.blobId] })
  const gen = cache.stats().generation
  await cache.close()
  await assert.rejects(cache.readChunk(b.blob.blobId, b.chunks[0]!), { code: 'RAFSPEER_ERR_CACHE_CLOSED' })
  await assert.rejects(cache.putChunk(b.blob.blobId, b.chunks[0]!, b.plain[0]!), { code: 'RAFSPEER_ERR_CACHE_CLOSED' })

  cache = await BlobCache.open(cdir)
  t.after(async () => { await cache.close() })
  const s = cache.stats()
  assert.equal(s.generation, gen + 1)
  assert.equal(s.recoveryChecked, 0, 'a clean close needs no re-verification')
  assert.equal(s.chunksPresent, 2)
  await cache.registerBlob(b.blob) // idempotent: keeps what is present
  for (const c of b.chunks.slice(0, 2)) assert.deepEqual(await cache.readChunk(b.blob.blobId, c, { verify: true }), b.plain[c.index])
  assert.equal(cache.has(b.blob.blobId, b.chunks[2]!.index), false)
  const img = await cache.getImage('localhost/app:v1')
  assert.deepEqual(img?.blobIds, [b.blob.blobId])
  assert.equal((await cache.listImages()).length, 1)
  assert.equal(await cache.removeImage('localhost/app:v1'), true)
  assert.equal(await cache.getImage('localhost/app:v1'), undefined)
})

test('an index of an unknown format version is refused, never misread', async t => {
  const dir = await tempDir(t)
  const cdir = join(dir, 'cache')
  const cache = await BlobCache.open(cdir)
  await cache.close()
  const db = new Level<string, string>(join(cdir, 'index'))
  await db.sublevel('meta').put('version', '99')
  await db.close()
  await assert.rejects(BlobCache.open(cdir), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'RAFSPEER_ERR_CACHE_VERSION')
    assert.match(err.message, /version 99.*reads version 1/)
    return true
  })
  // a directory with foreign LevelDB records and no version is refused too
  const other = join(dir, 'other')
  const db2 = new Level<string, string>(join(other, 'index'))
  await db2.put('something', 'else')
  await db2.close()
  await assert.rejects(BlobCache.open(other), { code: 'RAFSPEER_ERR_CACHE_VERSION' })
})

test('the index is locked against a second opener', async t => {
  const dir = await tempDir(t)
  const cache = await BlobCache.open(dir)
  t.after(async () => { await cache.close() })
  await assert.rejects(BlobCache.open(dir), { code: 'RAFSPEER_ERR_CACHE_LOCKED' })
})

test('a chunk present in another blob is found by digest and copied locally', async t => {
  const dir = await tempDir(t)
  const shared = randomBytes(64 * 1024) // exactly one chunk, identical in both blobs
  const a = await buildBlob(join(dir, 'a'), [10_000, 5000], { shared })
  const b = await buildBlob(join(dir, 'b'), [3000], { shared })
  const cache = await BlobCache.open(join(dir, 'cache'), { index: new MemoryCacheIndex() })
  t.after(async () => { await cache.close() })
  await cache.registerBlob(a.blob)
  await cache.registerBlob(b.blob)
  for (const c of a.chunks) await cache.putChunk(a.blob.blobId, c, a.plain[c.index]!)
  const target = b.chunks.find(c => a.chunks.some(x => x.digest.equals(c.digest)))!
  const found = await cache.findByDigest(target.digest, { exceptBlobId: b.blob.blobId })
  assert.equal(found?.blobId, a.blob.blobId)
  assert.equal(await cache.findByDigest(target.digest, { exceptBlobId: a.blob.blobId }), undefined)
  assert.equal(await cache.copyChunk(found!, { blobId: b.blob.blobId, chunk: target }), true)
  assert.deepEqual(await cache.readChunk(b.blob.blobId, target, { verify: true }), b.plain[target.index])
  const other = b.chunks.find(c => c !== target)!
  assert.equal(await cache.findByDigest(other.digest), undefined)
})

test('found by digest without asking the index again, and never a chunk no longer present', async t => {
  const dir = await tempDir(t)
  const a = await buildBlob(join(dir, 'a'), [10_000, 5000, 7000])
  let lookups = 0
  const index = new MemoryCacheIndex()
  const find = index.findByDigest.bind(index)
  index.findByDigest = async (d: Buffer) => { lookups++; return await find(d) }
  const cache = await BlobCache.open(join(dir, 'cache'), { index })
  t.after(async () => { await cache.close() })
  await cache.registerBlob(a.blob)
  const [c0, c1, c2] = [a.chunks[0]!, a.chunks[1]!, a.chunks[2]!]
  assert.equal(await cache.findByDigest(c1.digest), undefined)
  assert.equal(await cache.findByDigest(c1.digest), undefined)
  assert.equal(lookups, 1, 'an absence is remembered')
  await cache.putChunk(a.blob.blobId, c1, a.plain[c1.index]!)
  assert.equal((await cache.findByDigest(c1.digest))?.chunk.index, c1.index, 'a store unlearns the absence at once')
  await cache.putChunk(a.blob.blobId, c0, a.plain[c0.index]!)
  for (let i = 0; i < 3; i++) assert.equal((await cache.findByDigest(c0.digest))?.chunk.uncompressedOffset, c0.uncompressedOffset)
  assert.equal(lookups, 1, 'stored chunks are found without the index')
  // bytes flipped on disk: the read unmarks the chunk, and the digest is no longer found
  const { open } = await import('node:fs/promises')
  const fh = await open(join(dir, 'cache', `${a.blob.blobId}.blob.data`), 'r+')
  await fh.write(Buffer.from([0x55 ^ a.plain[c0.index]![3]!]), 0, 1, c0.uncompressedOffset + 3)
  await fh.close()
  assert.equal(await cache.readChunk(a.blob.blobId, c0, { verify: true }), undefined)
  assert.equal(await cache.findByDigest(c0.digest), undefined, 'an unmarked chunk is never found')
  await cache.putChunk(a.blob.blobId, c2, a.plain[c2.index]!)
  await cache.removeBlob(a.blob.blobId)
  assert.equal(await cache.findByDigest(c2.digest), undefined, 'nor one of a removed blob')
})

test("verify 'once': bytes changed on disk while closed are caught on the first read, then reads skip hashing", async t => {
  const dir = await tempDir(t)
  const b = await buildBlob(dir, [100_000, 50_000])
  const cdir = join(dir, 'cache')
  let cache = await BlobCache.open(cdir)
  await cache.registerBlob(b.blob)
  for (const c of b.chunks) await cache.putChunk(b.blob.blobId, c, b.plain[c.index]!)
  const [c0, c1] = [b.chunks[0]!, b.chunks[1]!]
  assert.equal(cache.isVerified(b.blob.blobId, c0.index), true, 'a put chunk was verified by its writer')
  await cache.close()
  // flip one byte of chunk 1 while no daemon runs
  const { open } = await import('node:fs/promises')
  const fh = await open(join(cdir, `${b.blob.blobId}.blob.data`), 'r+')
  const one = Buffer.alloc(1)
  await fh.read(one, 0, 1, c1.uncompressedOffset + 7)
  one[0] = one[0]! ^ 0xff
  await fh.write(one, 0, 1, c1.uncompressedOffset + 7)
  await fh.close()
  cache = await BlobCache.open(cdir)
  t.after(async () => { await cache.close() })
  assert.equal(cache.has(b.blob.blobId, c1.index), true)
  assert.equal(cache.isVerified(b.blob.blobId, c1.index), false, 'nothing is verified in a new process')
  assert.deepEqual(await cache.readChunk(b.blob.blobId, c0, { verify: 'once' }), b.plain[c0.index])
  assert.equal(cache.isVerified(b.blob.blobId, c0.index), true)
  assert.equal(await cache.readChunk(b.blob.blobId, c1, { verify: 'once' }), undefined, 'flipped bytes are never served')
  assert.equal(cache.has(b.blob.blobId, c1.index), false, 'the bad chunk is unmarked')
  assert.equal(cache.stats().verifyFailures, 1)
  // the fast path copies verified spans straight from the file
  const out = Buffer.alloc(1000)
  assert.equal(await cache.readVerifiedInto(b.blob.blobId, c0.uncompressedOffset + 10, 990, out, 10), true)
  assert.ok(out.subarray(10).equals(b.plain[c0.index]!.subarray(10, 1000)))
  // refetched bytes are verified again by their writer
  await cache.putChunk(b.blob.blobId, c1, b.plain[c1.index]!)
  assert.equal(cache.isVerified(b.blob.blobId, c1.index), true)
})

test("the 'stored' event hears every durably marked digest; presentDigests lists what is held", async t => {
  const dir = await tempDir(t)
  const b = await buildBlob(dir, [100_000, 50_000, 7000])
  const heard: string[] = []
  const cache = await BlobCache.open(join(dir, 'cache'))
  cache.events.on('stored', d => { for (const x of d) heard.push(x.toString('hex')) })
  t.after(async () => { await cache.close() })
  await cache.registerBlob(b.blob)
  for (const c of b.chunks.slice(0, 2)) await cache.putChunk(b.blob.blobId, c, b.plain[c.index]!)
  const want = b.chunks.slice(0, 2).map(c => c.digest.toString('hex')).sort()
  assert.deepEqual([...heard].sort(), want)
  const listed: string[] = []
  for await (const d of cache.presentDigests()) listed.push(d.toString('hex'))
  assert.deepEqual(listed.sort(), want)
})
