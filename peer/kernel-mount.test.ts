import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, mkdir, writeFile, readFile, rm, symlink } from 'node:fs/promises'
import { execFileSync } from 'node:child_process'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { buildFromDirectory } from '../rafs/build.js'
import { kernelMount, kernelModeUnavailable, KernelMountError } from './kernel-mount.js'
import { snapshotTree, diffTrees } from '../test/helpers/tree.js'

const loops = (): string => execFileSync('losetup', ['-a'], { encoding: 'utf8' })

test('kernel mode mounts a built image, equals its source, and leaves no loop device after unmount', { skip: await kernelModeUnavailable() ?? false }, async () => {
  const work = await mkdtemp(join(tmpdir(), 'rafs-kmount-'))
  const before = loops()
  try {
    const src = join(work, 'src')
    await mkdir(join(src, 'd'), { recursive: true })
    await writeFile(join(src, 'd', 'f'), Buffer.alloc(200_000, 'rafs'))
    await symlink('d/f', join(src, 'l'))
    const res = await buildFromDirectory(src, { bootstrap: join(work, 'image.boot'), blobDir: join(work, 'blobs'), blobCacheDir: join(work, 'cache') })
    const mnt = join(work, 'mnt')
    await mkdir(mnt)
    const m = await kernelMount(res.bootstrap, res.blobs.map((b) => b.viewPath!), mnt)
    try {
      assert.deepEqual(await readFile(join(mnt, 'd', 'f')), Buffer.alloc(200_000, 'rafs'))
      assert.deepEqual(diffTrees(await snapshotTree(src), await snapshotTree(mnt), { ignore: ['mtimeSec', 'mtimeNsec'] }).filter((d) => !d.startsWith('"/":')), [])
    } finally {
      await m.unmount()
    }
    assert.equal(loops(), before, 'loop devices are released by the unmount itself')
    // wrong device count: a clear error, nothing left attached
    await assert.rejects(kernelMount(res.bootstrap, [], mnt), (err: Error) => err instanceof KernelMountError && /declares 1 blob device/.test(err.message))
    // a view that is not the image's (zeros): the mount may succeed, but a failing mount must not leak loops
    await writeFile(join(work, 'garbage.boot'), Buffer.alloc(8192))
    await assert.rejects(kernelMount(join(work, 'garbage.boot'), [], mnt))
    assert.equal(loops(), before)
  } finally {
    await rm(work, { recursive: true, force: true })
  }
})
