/**
 * A full disk: putChunk fails with RAFSPEER_ERR_CACHE_FULL, nothing is marked, and the cache keeps working for
 * chunks that fit. Runs on a 1 MiB tmpfs (needs root; skipped with the reason otherwise).
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdir, rmdir } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { test } from 'node:test'
import { BlobCache } from './index.js'
import { buildBlob, tempDir } from './test-support.js'

const run = promisify(execFile)

test('ENOSPC on a tiny tmpfs: clear error, chunk not marked, small puts still work', async t => {
  const dir = await tempDir(t)
  const b = await buildBlob(dir, [2 << 20, 6000, 9000], { chunkSize: 1 << 20 })
  const mnt = join(dir, 'mnt')
  await mkdir(mnt)
  try {
    await run('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt])
  } catch (err) {
    t.skip(`cannot mount a tmpfs here (${(err as Error).message.split('\n')[0]})`)
    await rmdir(mnt)
    return
  }
  try {
    const cache = await BlobCache.open(join(mnt, 'cache'))
    try {
      await cache.registerBlob(b.blob)
      const big = b.chunks.filter(c => c.uncompressedSize === 1 << 20)
      assert.ok(big.length >= 2)
      await assert.rejects(async () => {
        for (const c of big) await cache.putChunk(b.blob.blobId, c, b.plain[c.index]!)
      }, (err: Error & { code?: string }) => {
        assert.equal(err.code, 'RAFSPEER_ERR_CACHE_FULL')
        assert.match(err.message, /full \((ENOSPC|EDQUOT|EIO)\)/)
        return true
      })
      const marked = big.filter(c => cache.has(b.blob.blobId, c.index))
      assert.ok(marked.length < big.length, 'the chunk that failed is not marked')
      assert.equal(cache.stats().writeFailures, 1)
      // evict what fit, like a cap would; then small chunks fit again
      for (const c of marked) assert.deepEqual(await cache.readChunk(b.blob.blobId, c, { verify: true }), b.plain[c.index])
      const small = b.chunks.filter(c => c.uncompressedSize < 1 << 20)
      if (marked.length > 0) await cache.removeBlob(b.blob.blobId).then(async () => await cache.registerBlob(b.blob))
      for (const c of small) assert.equal(await cache.putChunk(b.blob.blobId, c, b.plain[c.index]!), true)
      for (const c of small) assert.deepEqual(await cache.readChunk(b.blob.blobId, c, { verify: true }), b.plain[c.index])
      assert.equal(cache.stats().chunksPresent, small.length)
    } finally {
      await cache.close()
    }
    // the index still says the truth after a reopen
    const again = await BlobCache.open(join(mnt, 'cache'))
    try {
      assert.equal(again.stats().chunksPresent, b.chunks.filter(c => c.uncompressedSize < 1 << 20).length)
      assert.equal(again.stats().recoveryChecked, 0)
    } finally {
      await again.close()
    }
  } finally {
    await run('umount', [mnt])
    await rmdir(mnt)
  }
})
