import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, mkdir, writeFile, readFile, readdir, rm, rmdir, symlink } from 'node:fs/promises'
import { execFileSync } from 'node:child_process'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { buildFromDirectory } from '../../rafs/index.js'
import { clearStaleMount, fileBackedUnavailable, kernelMount, kernelModeUnavailable, KernelMountError } from './kernel-mount.js'
import { mountsAt } from './fuse-backend.js'
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
    const m = await kernelMount(res.bootstrap, res.blobs.map((b) => b.viewPath!), mnt, { backing: 'loop' })
    try {
      assert.equal(m.backing, 'loop')
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
      const m = await kernelMount(bootstrap, views, mnt, { ...opts, backing: 'loop' })
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
    const m = await kernelMount(bootstrap, views, mnt, { bootstrapDirectIo: true, backing: 'loop' })
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
        const m = await kernelMount(bootstrap, views, mnt, { bootstrapDirectIo: true, logger, backing: 'loop' })
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

const fileSkip = skip === false ? (await fileBackedUnavailable() ?? false) : skip

test('file-backed: mount(2) of the bootstrap file itself with the views as devices, no loop device at all', { skip: fileSkip }, async () => {
  const work = await mkdtemp(join(tmpdir(), 'rafs-kmount-file-'))
  try {
    const { bootstrap, views, data } = await buildSmall(work)
    const mnt = join(work, 'mnt')
    await mkdir(mnt)
    const m = await kernelMount(bootstrap, views, mnt)
    try {
      assert.equal(m.backing, 'file', 'auto picks file-backed where the kernel can')
      assert.deepEqual(m.devices, [])
      assert.equal((await loopsUnder(work)).size, 0)
      const line = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').find(l => l.split(' ')[4] === mnt)
      assert.match(line ?? '', / - erofs /)
      assert.ok(line!.includes(bootstrap), 'the bootstrap file is the source')
      assert.deepEqual(await readFile(join(mnt, 'f')), data)
    } finally {
      await m.unmount()
    }
    // a device that is not absolute, or a wrong device count: clear errors, nothing mounted
    await assert.rejects(kernelMount(bootstrap, ['rel/view'], mnt, { backing: 'file' }), /must be absolute/)
    await assert.rejects(kernelMount(bootstrap, [], mnt, { backing: 'file' }), /declares 1 blob device/)
    await writeFile(join(work, 'garbage.boot'), Buffer.alloc(8192))
    await assert.rejects(kernelMount(join(work, 'garbage.boot'), [], mnt, { backing: 'file' }), /not an EROFS\/RAFS v6 bootstrap/)
    assert.equal((await readFile('/proc/self/mountinfo', 'utf8')).includes(mnt), false)
  } finally {
    await rm(work, { recursive: true, force: true })
  }
})

test('clearStaleMount: an EROFS mount of one of our bootstraps goes, anything else mounted there is refused', { skip: fileSkip }, async () => {
  const work = await mkdtemp(join(tmpdir(), 'rafs-kmount-stale-'))
  try {
    const { bootstrap, views } = await buildSmall(work)
    const mnt = join(work, 'mnt')
    await mkdir(mnt)
    await kernelMount(bootstrap, views, mnt)
    await assert.rejects(clearStaleMount(mnt, join(work, 'elsewhere')), /already a mount point \(erofs from /)
    await clearStaleMount(mnt, work)
    assert.deepEqual(await mountsAt(mnt), [])
    await clearStaleMount(mnt, work) // nothing there: nothing to do
  } finally {
    for (const _ of await mountsAt(join(work, 'mnt'))) execFileSync('umount', ['-l', join(work, 'mnt')])
    await rm(work, { recursive: true, force: true })
  }
})
