/**
 * Images that Nydus itself wrote: our reader and `rafspeer unpack` give byte for byte what the kernel's EROFS
 * driver shows when it mounts the same fixture (bootstrap + uncompressed view).
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { RafsReader } from '../rafs/reader.js'
import { unpackImage } from '../rafs/unpack.js'
import { withKernelMount, kernelSkipReason } from './helpers/kernel.js'
import { snapshotTree, diffTrees } from './helpers/tree.js'
import { NYDUS_FIXTURES } from './helpers/fixtures.js'

const cases = [
  { name: 'nydus-image 2.2 bootstrap with its blob', boot: 'rafs-v6-2.2.boot', view: 'be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef.blob.data', blobDir: true },
  { name: 'bootstrap inlined in a --blob-inline-meta blob', boot: '2fa78cad-inline-image.boot', view: '2fa78cad-inline-image.boot.blob.data', blobDir: false }
]

for (const c of cases) {
  test(`${c.name}: unpack equals the kernel mount`, { skip: kernelSkipReason() ?? false }, async () => {
    const work = await mkdtemp(join(tmpdir(), 'rafs-interop-'))
    try {
      const boot = join(NYDUS_FIXTURES, c.boot)
      const reader = await RafsReader.open(boot)
      assert.equal(reader.blobs.length, 1)
      // the view is the kernel's device; unpack finds it by blob id
      await mkdir(join(work, 'views'))
      const view = join(work, 'views', `${reader.blobs[0]!.blobId}.blob.data`)
      await copyFile(join(NYDUS_FIXTURES, c.view), view)
      const kernel = await withKernelMount(boot, [view], async (mnt) => await snapshotTree(mnt))
      assert.ok(kernel.size >= 3, 'the fixture has files')

      await unpackImage(boot, join(work, 'from-view'), { blobCacheDir: join(work, 'views') })
      assert.deepEqual(diffTrees(kernel, await snapshotTree(join(work, 'from-view'))), [])
      if (c.blobDir) {
        // the compressed blob: chunks decompressed and digest-verified on the way
        await unpackImage(boot, join(work, 'from-blob'), { blobDir: NYDUS_FIXTURES })
        assert.deepEqual(diffTrees(kernel, await snapshotTree(join(work, 'from-blob'))), [])
      }
    } finally {
      await rm(work, { recursive: true, force: true })
    }
  })
}
