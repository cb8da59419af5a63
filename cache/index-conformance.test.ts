/**
 * One conformance suite for every `CacheIndex` implementation (abstract-level style): the LevelDB index and the
 * in-memory one must behave the same.
 */
import { randomBytes } from 'node:crypto'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { describe, test } from 'node:test'
import { LevelCacheIndex, MemoryCacheIndex, type BlobRecord, type CacheIndex, type ChunkRecord } from './index.js'
import { tempDir } from './test-support.js'

const blobA = 'a'.repeat(64)
const blobB = 'b'.repeat(64)
const rec = (blobId: string, chunkCount = 100): BlobRecord => ({
  blobId, uncompressedSize: chunkCount * 4096, chunkCount, digester: 'blake3', complete: false, bytesPresent: 0, lastAccess: 1000
})
const chunk = (index: number, digest = randomBytes(32), generation = 1): ChunkRecord => ({
  index, digest, uncompressedOffset: index * 4096 + (index > 3 ? 2 ** 33 : 0), uncompressedSize: 4000, generation
})
const collect = async <T>(it: AsyncIterable<T>): Promise<T[]> => { const out: T[] = []; for await (const x of it) out.push(x); return out }

function conformance (name: string, make: (t: { after: (fn: () => Promise<void>) => void }) => Promise<{ index: CacheIndex, reopen?: () => CacheIndex }>): void {
  describe(`CacheIndex conformance: ${name}`, () => {
    test('a fresh index is empty; meta put, delete, read', async t => {
      const { index } = await make(t)
      await index.open()
      assert.equal(await index.isEmpty(), true)
      assert.equal(await index.getMeta('version'), undefined)
      await index.putMeta({ version: '1', clean: '3' }, { sync: true })
      assert.equal(await index.isEmpty(), false)
      await index.putMeta({ clean: undefined, generation: '4' })
      assert.equal(await index.getMeta('version'), '1')
      assert.equal(await index.getMeta('clean'), undefined)
      assert.equal(await index.getMeta('generation'), '4')
      await index.close()
    })

    test('blob records: put, get, list in id order, remove', async t => {
      const { index } = await make(t)
      await index.open()
      await index.putBlobs([rec(blobB), rec(blobA)])
      assert.deepEqual(await index.getBlob(blobA), rec(blobA))
      assert.deepEqual((await index.listBlobs()).map(b => b.blobId), [blobA, blobB])
      await index.putBlobs([{ ...rec(blobA), complete: true, bytesPresent: 5 }])
      assert.equal((await index.getBlob(blobA))?.complete, true)
      await index.removeBlob(blobA)
      assert.equal(await index.getBlob(blobA), undefined)
      assert.equal(await index.getBlob('c'.repeat(64)), undefined)
      await index.close()
    })

    test('chunks: mark, read back exactly (offsets past 4 GiB), iterate in ci order with ranges and generations', async t => {
      const { index } = await make(t)
      await index.open()
      const cs = [chunk(20, undefined, 2), chunk(3), chunk(17, undefined, 3), chunk(0)]
      await index.markChunks(cs.map(c => ({ blobId: blobA, chunk: c })), [{ ...rec(blobA), bytesPresent: 16000 }])
      await index.markChunks([{ blobId: blobB, chunk: chunk(1) }])
      assert.equal((await index.getBlob(blobA))?.bytesPresent, 16000)
      assert.deepEqual(await index.getChunk(blobA, 17), cs[2])
      assert.equal(await index.getChunk(blobA, 1), undefined)
      assert.deepEqual((await collect(index.chunks(blobA))).map(c => c.index), [0, 3, 17, 20])
      assert.deepEqual((await collect(index.chunks(blobA, { from: 3, to: 17 }))).map(c => c.index), [3, 17])
      assert.deepEqual((await collect(index.chunks(blobA, { afterGeneration: 1 }))).map(c => c.index), [17, 20])
      assert.deepEqual((await collect(index.chunks(blobB))).map(c => c.index), [1])
      assert.deepEqual(await collect(index.chunks('c'.repeat(64))), [])
      await index.close()
    })

    test('digest lookup across blobs follows marks and unmarks', async t => {
      const { index } = await make(t)
      await index.open()
      const d = randomBytes(32)
      await index.markChunks([{ blobId: blobB, chunk: chunk(300, d) }, { blobId: blobA, chunk: chunk(7, d) }, { blobId: blobA, chunk: chunk(8) }])
      assert.deepEqual(await index.findByDigest(d), [{ blobId: blobA, index: 7 }, { blobId: blobB, index: 300 }])
      await index.unmarkChunks([{ blobId: blobA, index: 7 }, { blobId: blobA, index: 99 }], [rec(blobA)])
      assert.deepEqual(await index.findByDigest(d), [{ blobId: blobB, index: 300 }])
      assert.equal(await index.getChunk(blobA, 7), undefined)
      // re-marking a ci index with another digest replaces its digest record
      const d2 = randomBytes(32)
      await index.markChunks([{ blobId: blobB, chunk: chunk(300, d2) }])
      assert.deepEqual(await index.findByDigest(d), [])
      assert.deepEqual(await index.findByDigest(d2), [{ blobId: blobB, index: 300 }])
      await index.removeBlob(blobB)
      assert.deepEqual(await index.findByDigest(d2), [])
      assert.deepEqual(await collect(index.chunks(blobB)), [])
      assert.equal((await collect(index.chunks(blobA))).length, 1)
      await index.close()
    })

    test('100k chunks of one blob: marked in batches, scanned, removed', async t => {
      const { index } = await make(t)
      await index.open()
      const n = 100_000
      for (let i = 0; i < n; i += 10_000) {
        await index.markChunks(Array.from({ length: 10_000 }, (_, j) => ({ blobId: blobA, chunk: chunk(i + j) })))
      }
      let count = 0
      let last = -1
      for await (const c of index.chunks(blobA)) { assert.ok(c.index > last); last = c.index; count++ }
      assert.equal(count, n)
      await index.removeBlob(blobA)
      assert.deepEqual(await collect(index.chunks(blobA)), [])
      await index.close()
    })

    test('images: put, get, list by ref, remove', async t => {
      const { index } = await make(t)
      await index.open()
      const img = { ref: 'localhost:5000/app:v1', manifestDigest: 'sha256:' + '1'.repeat(64), bootstrapPath: '/c/boot', bootstrapDigest: 'sha256:' + '2'.repeat(64), blobIds: [blobB, blobA], lastAccess: 5 }
      await index.putImage(img)
      await index.putImage({ ...img, ref: 'localhost:5000/app:v0' })
      assert.deepEqual(await index.getImage(img.ref), img)
      assert.deepEqual((await index.listImages()).map(i => i.ref), ['localhost:5000/app:v0', 'localhost:5000/app:v1'])
      assert.equal(await index.removeImage(img.ref), true)
      assert.equal(await index.removeImage(img.ref), false)
      assert.equal(await index.getImage(img.ref), undefined)
      await index.close()
    })

    test('records survive close and reopen (persistent implementations)', async t => {
      const { index, reopen } = await make(t)
      if (reopen === undefined) { t.skip('in-memory index: nothing to persist'); return }
      await index.open()
      const c = chunk(5)
      await index.putMeta({ version: '1' })
      await index.markChunks([{ blobId: blobA, chunk: c }], [rec(blobA)])
      await index.close()
      const again = reopen()
      await again.open()
      assert.equal(await again.getMeta('version'), '1')
      assert.deepEqual(await again.getChunk(blobA, 5), c)
      assert.deepEqual(await again.findByDigest(c.digest), [{ blobId: blobA, index: 5 }])
      await again.close()
    })
  })
}

conformance('MemoryCacheIndex', async () => ({ index: new MemoryCacheIndex() }))
conformance('LevelCacheIndex', async t => {
  const dir = join(await tempDir(t), 'index')
  return { index: new LevelCacheIndex(dir), reopen: () => new LevelCacheIndex(dir) }
})
