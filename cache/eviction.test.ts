/**
 * Size cap: least-recently-used ranges go first, holes are really punched (allocated blocks shrink), and a pinned
 * blob (a kernel mount) is never evicted.
 */
import assert from 'node:assert/strict'
import { stat } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'node:test'
import { BlobCache } from './index.js'
import { buildBlob, tempDir, type BuiltBlob } from './test-support.js'

const MiB = 1 << 20

test('LRU eviction under a cap punches holes and spares pinned blobs', async t => {
  const dir = await tempDir(t)
  // three blobs of 16 × 64 KiB chunks = 1 MiB of view each; each blob is one eviction range
  const [a, b, c] = await Promise.all(['a', 'b', 'c'].map(async n => await buildBlob(join(dir, n), [MiB])))
  const cache = await BlobCache.open(join(dir, 'cache'), { capBytes: 2.5 * MiB })
  t.after(async () => { await cache.close() })
  const fill = async (x: BuiltBlob): Promise<void> => {
    await cache.registerBlob(x.blob)
    for (const ch of x.chunks) await cache.putChunk(x.blob.blobId, ch, x.plain[ch.index]!)
    await sleep(5)
  }
  const blocks = async (x: BuiltBlob): Promise<number> => (await stat(cache.blobPath(x.blob.blobId))).blocks

  await fill(a!)
  await fill(b!)
  for (const ch of a!.chunks) await cache.readChunk(a!.blob.blobId, ch) // a is now more recent than b
  await sleep(5)
  const bBlocks = await blocks(b!)
  assert.ok(bBlocks >= MiB / 512, `b allocates its data (${bBlocks} blocks)`)
  await fill(c!)
  await cache.evict() // joins the pass the last put started
  assert.ok(cache.stats().diskBytes <= 2.5 * MiB)
  assert.equal(b!.chunks.some(ch => cache.has(b!.blob.blobId, ch.index)), false, 'b, the least recently used, is evicted')
  assert.equal(cache.isComplete(a!.blob.blobId), true)
  assert.equal(cache.isComplete(c!.blob.blobId), true)
  assert.ok(await blocks(b!) < bBlocks / 8, `holes punched: ${bBlocks} → ${await blocks(b!)} blocks`)
  assert.equal((await stat(cache.blobPath(b!.blob.blobId))).size, b!.blob.uncompressedSize, 'the file keeps its size')
  assert.equal(cache.stats().evictions, b!.chunks.length)

  // a is now the least recently used, but pinned: c goes instead
  for (const ch of c!.chunks) await cache.readChunk(c!.blob.blobId, ch)
  await sleep(5)
  cache.pin(a!.blob.blobId)
  await fill(b!)
  await cache.evict()
  assert.equal(cache.isComplete(a!.blob.blobId), true, 'a pinned blob stays complete')
  assert.equal(cache.isComplete(b!.blob.blobId), true)
  assert.equal(c!.chunks.some(ch => cache.has(c!.blob.blobId, ch.index)), false)
  for (const ch of a!.chunks) assert.deepEqual(await cache.readChunk(a!.blob.blobId, ch, { verify: true }), a!.plain[ch.index])
  // an evicted chunk comes back on the next put
  const ch0 = c!.chunks[0]!
  cache.unpin(a!.blob.blobId)
  assert.equal(await cache.putChunk(c!.blob.blobId, ch0, c!.plain[ch0.index]!), true)
  assert.deepEqual(await cache.readChunk(c!.blob.blobId, ch0, { verify: true }), c!.plain[ch0.index])
})

test('eviction granularity is a range of the view: the cold part of one large blob goes, the hot part stays', async t => {
  const dir = await tempDir(t)
  const big = await buildBlob(dir, [4 * MiB])
  const cache = await BlobCache.open(join(dir, 'cache'), { capBytes: 3 * MiB, evictionRangeBytes: MiB })
  t.after(async () => { await cache.close() })
  await cache.registerBlob(big.blob)
  const inRange = (r: number) => big.chunks.filter(ch => Math.floor(ch.uncompressedOffset / MiB) === r)
  // ranges 0..2 first, then read range 0 again: range 1 is the coldest
  for (const r of [0, 1, 2]) { for (const ch of inRange(r)) await cache.putChunk(big.blob.blobId, ch, big.plain[ch.index]!); await sleep(5) }
  for (const ch of inRange(0)) await cache.readChunk(big.blob.blobId, ch)
  await sleep(5)
  for (const ch of inRange(3)) await cache.putChunk(big.blob.blobId, ch, big.plain[ch.index]!)
  await cache.evict()
  const present = (r: number): boolean => inRange(r).every(ch => cache.has(big.blob.blobId, ch.index))
  assert.deepEqual([0, 1, 2, 3].map(present), [true, false, true, true])
})
