import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, mkdir, writeFile, readFile, readdir, rm, rmdir, symlink } from 'node:fs/promises'
import { execFileSync } from 'node:child_process'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { buildFromDirectory } from '../../rafs/index.js'
import { kernelMount, kernelModeUnavailable, KernelMountError } from './kernel-mount.js'
import { snapshotTree, diffTrees } from '../../test/helpers/tree.js'
import { captureLogs } from '../../test/helpers/logs.js'

const skip = await kernelModeUnavailable() ?? false

/**
 * The loop devices whose backing file lies under `dir`, with the kernel's own direct I/O flag, read from sysfs:
 * detached (autoclear) devices stay listed there while mounted. Other processes' devices are left out.
 */
async function loopsUnder (dir: string): Promise<Map<string, { device: string, dio: boolean }>> {
  const out = new Map<string, { device: string, dio: boolean }>()
  for (const name of await readdir('/sys/block')) {
    if (!name.startsWith('loop')) continue
    const backing = (await readFile(`/sys/block/${name}/loop/backing_file`, 'utf8').catch(() => '')).trim()
    if (!backing.startsWith(dir + '/')) continue
    out.set(backing, { device: `/dev/${name}`, dio: (await readFile(`/sys/block/${name}/loop/dio`, 'utf8')).trim() === '1' })
  }
  return out
}

async function buildSmall (dir: string): Promise<{ bootstrap: string, views: string[], data: Buffer }> {
  const src = join(dir, 'src')
  await mkdir(src, { recursive: true })
  const data = Buffer.alloc(3 << 20)
  for (let i = 0; i < data.length; i += 4) data.writeUInt32LE(i, i)
  await writeFile(join(src, 'f'), data)
  const res = await buildFromDirectory(src, { bootstrap: join(dir, 'image.boot'), blobDir: join(dir, 'blobs'), blobCacheDir: join(dir, 'cache') })
  return { bootstrap: res.bootstrap, views: res.blobs.map((b) => b.viewPath!), data }
}

test('kernel mode mounts a built image, equals its source, and leaves no loop device after unmount', { skip }, async () => {
  const work = await mkdtemp(join(tmpdir(), 'rafs-kmount-'))
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
    assert.equal((await loopsUnder(work)).size, 0, 'loop devices are released by the unmount itself')
    // wrong device count: a clear error, nothing left attached
    await assert.rejects(kernelMount(res.bootstrap, [], mnt), (err: Error) => err instanceof KernelMountError && /declares 1 blob device/.test(err.message))
    // a view that is not the image's (zeros): the mount may succeed, but a failing mount must not leak loops
    await writeFile(join(work, 'garbage.boot'), Buffer.alloc(8192))
    await assert.rejects(kernelMount(join(work, 'garbage.boot'), [], mnt))
    assert.equal((await loopsUnder(work)).size, 0)
  } finally {
    await rm(work, { recursive: true, force: true })
  }
})

test('blob devices read their files with direct I/O by default, the bootstrap device buffered; directIo: false is the old way', { skip }, async () => {
  const work = await mkdtemp(join(tmpdir(), 'rafs-kmount-dio-'))
  try {
    const { bootstrap, views, data } = await buildSmall(work)
    const mnt = join(work, 'mnt')
    await mkdir(mnt)
    for (const [opts, blobDio] of [[{}, true], [{ directIo: false }, false]] as const) {
      const m = await kernelMount(bootstrap, views, mnt, opts)
      try {
        const seen = await loopsUnder(work)
        assert.equal(seen.size, 1 + views.length, 'the detached devices stay visible while mounted')
        assert.equal(seen.get(bootstrap)?.dio, false)
        assert.equal(seen.get(views[0]!)?.dio, blobDio, `dio with ${JSON.stringify(opts)}`)
        assert.deepEqual(m.devices.map((d) => [d.file, d.device, d.directIo]), [bootstrap, ...views].map((f) => [f, seen.get(f)!.device, seen.get(f)!.dio]))
        assert.deepEqual(await readFile(join(mnt, 'f')), data)
      } finally {
        await m.unmount()
      }
      assert.equal((await loopsUnder(work)).size, 0)
    }
    const m = await kernelMount(bootstrap, views, mnt, { bootstrapDirectIo: true })
    try {
      assert.equal((await loopsUnder(work)).get(bootstrap)?.dio, true)
      assert.deepEqual(await readFile(join(mnt, 'f')), data)
    } finally {
      await m.unmount()
    }
  } finally {
    await rm(work, { recursive: true, force: true })
  }
})

test('an image on tmpfs or ramfs still mounts; where O_DIRECT is refused the device is buffered and the log says why', { skip }, async () => {
  const work = await mkdtemp(join(tmpdir(), 'rafs-kmount-memfs-'))
  try {
    // ramfs cannot open a file with O_DIRECT at all; tmpfs can since Linux 6.6 (before, it was the same case)
    for (const fs of ['tmpfs', 'ramfs']) {
      const dir = join(work, fs)
      await mkdir(dir)
      execFileSync('mount', ['-t', fs, fs, dir])
      try {
        const { bootstrap, views, data } = await buildSmall(dir)
        const mnt = join(dir, 'mnt')
        await mkdir(mnt)
        const { logger, lines: logged } = captureLogs()
        const m = await kernelMount(bootstrap, views, mnt, { bootstrapDirectIo: true, logger })
        try {
          assert.deepEqual(await readFile(join(mnt, 'f')), data, fs)
          const seen = await loopsUnder(dir)
          for (const d of m.devices) assert.equal(d.directIo, seen.get(d.file)?.dio, `${fs}: ${d.file} reported as the kernel runs it`)
          if (fs === 'ramfs') {
            assert.deepEqual(m.devices.map((d) => d.directIo), [false, false])
            assert.equal(logged.length, 2, logged.join('\n'))
            assert.match(logged[1]!, /no direct I\/O/)
          }
          // every device we asked direct I/O of either has it or has a logged reason
          assert.equal(m.devices.filter((d) => !d.directIo).length, logged.length, logged.join('\n'))
        } finally {
          await m.unmount()
        }
        assert.equal((await loopsUnder(dir)).size, 0)
      } finally {
        execFileSync('umount', [dir])
        await rmdir(dir)
      }
    }
  } finally {
    await rm(work, { recursive: true, force: true })
  }
})
