/**
 * Four OCI layer tars (whiteouts, opaque dirs, type changes, hard links, xattrs, a gzip layer) → one image per
 * layer → merged bootstrap → mounted by the kernel; it must equal what `tar -x` of the layers in order gives,
 * with the whiteouts applied by a small routine here that knows nothing of merge.ts.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { createReadStream } from 'node:fs'
import { lstat, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, posix } from 'node:path'
import { promisify } from 'node:util'
import { gzipSync } from 'node:zlib'
import tar from 'tar-stream'
import { buildImage } from '../rafs/build.js'
import { mergeBootstraps } from '../rafs/merge.js'
import { tarSource, type TarStats } from '../rafs/source-tar.js'
import { fsckErofs, kernelSkipReason, withKernelMount } from './helpers/kernel.js'
import { diffTrees, snapshotTree } from './helpers/tree.js'

const run = promisify(execFile)

interface Spec {
  name: string
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'fifo'
  mode?: number
  uid?: number
  gid?: number
  body?: string | Buffer
  linkname?: string
  devmajor?: number
  devminor?: number
  pax?: Record<string, string>
}

const T = new Date(1_700_000_000_000)
const pattern = (n: number, seed: number): Buffer => {
  const b = Buffer.alloc(n)
  let x = seed
  for (let i = 0; i < n; i++) { x = (x * 1103515245 + 12345) >>> 0; b[i] = x >>> 24 }
  return b
}
const dir = (name: string, mode = 0o755, extra: Partial<Spec> = {}): Spec => ({ name, type: 'directory', mode, ...extra })
const file = (name: string, body: string | Buffer, extra: Partial<Spec> = {}): Spec => ({ name, type: 'file', mode: 0o644, body, ...extra })

const LAYERS: Spec[][] = [
  [
    dir('./'),
    dir('etc/'),
    file('etc/passwd', 'root:x:0:0:root:/root:/bin/sh\n'),
    file('etc/hosts', '127.0.0.1 localhost\n'),
    dir('bin/'),
    file('bin/busybox', pattern(2_600_000, 1), { mode: 0o4755 }),
    { name: 'bin/sh', type: 'symlink', linkname: 'busybox' },
    { name: 'bin/ls', type: 'link', linkname: 'bin/busybox' },
    { name: 'bin/cat', type: 'link', linkname: 'bin/busybox' },
    dir('opt/'), dir('opt/app/', 0o750, { uid: 1000, gid: 1000 }),
    file('opt/app/old1', 'old one'), file('opt/app/old2', pattern(5000, 2)),
    dir('opt/app/sub/'), file('opt/app/sub/deep', 'deep'),
    dir('var/'), dir('var/log/'), file('var/log/a.log', 'log'),
    file('x', 'x is a file first'),
    dir('y/'), file('y/child', 'y is a dir first'),
    dir('tmp/', 0o1777),
    dir('dev/'),
    { name: 'dev/null', type: 'character-device', mode: 0o666, devmajor: 1, devminor: 3 },
    { name: 'dev/pipe', type: 'fifo', mode: 0o600 },
    file('attrs', 'with xattrs', { pax: { 'SCHILY.xattr.user.color': 'blue', mtime: '1700000123.456789' } }),
    file('.wh.bottom-marker', '')
  ],
  [
    dir('./'),
    dir('etc/'), file('etc/passwd', 'root:x:0:0:root:/root:/bin/ash\nuser:x:1000:1000::/home/user:/bin/sh\n'),
    file('etc/.wh.hosts', ''),
    dir('bin/'), file('bin/.wh.ls', ''),
    dir('opt/'), dir('opt/app/', 0o755, { uid: 1000, gid: 1000 }),
    file('opt/app/.wh..wh..opq', ''),
    file('opt/app/new1', 'new one'),
    dir('opt/app/sub/'), file('opt/app/sub/fresh', 'fresh'),
    dir('x/'), file('x/inner', 'x is a dir now'),
    file('y', 'y is a file now'),
    dir('var/'), file('var/.wh.log', ''),
    dir('newdir/'), file('newdir/.wh.ghost', ''), file('newdir/file', 'in a new dir'),
    { name: 'newdir/file-link', type: 'link', linkname: './newdir/file' },
    dir('data/'), file('data/h1', pattern(70_000, 3)), { name: 'data/h2', type: 'link', linkname: 'data/h1' },
    file('.wh.nothing-here', ''),
    file('attrs', 'new attrs', { pax: { 'SCHILY.xattr.user.shape': 'round' } })
  ],
  [
    dir('./', 0o755),
    dir('opt/'), dir('opt/app/', 0o700, { uid: 1000, gid: 1000 }),
    file('opt/app/top', 'top'),
    dir('opt/app/sub/'), file('opt/app/sub/.wh..wh..opq', ''), file('opt/app/sub/late', 'late'),
    dir('x/'), file('x/.wh.inner', ''), file('x/second', 'second', { pax: { mtime: '1700000456.987654321' } }),
    dir('etc/'), { name: 'etc/passwd', type: 'symlink', linkname: '../opt/app/top' },
    dir('data/'), file('data/.wh.h2', ''),
    dir('bin/'), file('bin/busybox', pattern(1_200_000, 4), { mode: 0o755 })
  ],
  // no file data at all, so no blob: only a whiteout and an empty directory
  [dir('./'), dir('dev/'), file('dev/.wh.pipe', ''), dir('empty/', 0o700)]
]

async function packLayer (specs: Spec[], gzip: boolean): Promise<Buffer> {
  const p = tar.pack()
  for (const s of specs) {
    const { body, ...header } = s
    p.entry({ uid: 0, gid: 0, mtime: T, ...header }, body ?? '')
  }
  p.finalize()
  const parts: Buffer[] = []
  for await (const b of p as unknown as AsyncIterable<Buffer>) parts.push(b)
  const raw = Buffer.concat(parts)
  return gzip ? gzipSync(raw) : raw
}

const exists = async (p: string): Promise<boolean> => await lstat(p).then(() => true, () => false)

/**
 * What a container runtime does with a layer: first the layer's whiteouts act on what is already there (and a
 * name whose type changes is removed), then `tar -x` writes the layer, which also restores directory times.
 */
async function applyLayer (root: string, specs: Spec[], layerTar: string): Promise<void> {
  for (const s of specs) {
    const path = posix.normalize(s.name).replace(/\/$/, '')
    const base = posix.basename(path)
    const target = join(root, path)
    if (base === '.wh..wh..opq') {
      const d = join(root, posix.dirname(path))
      if (await exists(d)) for (const n of await readdir(d)) await rm(join(d, n), { recursive: true })
    } else if (base.startsWith('.wh.')) {
      await rm(join(root, posix.dirname(path), base.slice(4)), { recursive: true, force: true })
    } else if (path !== '.' && await exists(target)) {
      const isDir = (await lstat(target)).isDirectory()
      if (isDir !== (s.type === 'directory')) await rm(target, { recursive: true })
    }
  }
  await run('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-xpf', layerTar, '-C', root, '--exclude=.wh.*'])
}

test('merged layers mount as the overlay of their tars', { skip: kernelSkipReason() }, async () => {
  const work = await mkdtemp(join(tmpdir(), 'rafs-layers-'))
  try {
    const blobDir = join(work, 'blobs')
    const blobCacheDir = join(work, 'cache')
    const expected = join(work, 'expected')
    await Promise.all([mkdir(blobDir), mkdir(blobCacheDir), mkdir(expected)])

    const bootstraps: string[] = []
    for (const [i, specs] of LAYERS.entries()) {
      const layerTar = join(work, `layer${i}.tar${i === 2 ? '.gz' : ''}`)
      await writeFile(layerTar, await packLayer(specs, i === 2))
      const stats: TarStats = { entries: 0, files: 0, fileBytes: 0, hardLinks: 0, whiteouts: 0, opaques: 0 }
      const bootstrap = join(work, `layer${i}.boot`)
      await buildImage(tarSource(createReadStream(layerTar), { stats }), { bootstrap, blobDir, blobCacheDir })
      assert.equal(stats.entries, specs.length)
      bootstraps.push(bootstrap)
      await applyLayer(expected, specs, layerTar)
    }

    const merged = join(work, 'merged.boot')
    const { image, blobs } = await mergeBootstraps(bootstraps, merged)
    assert.deepEqual(blobs, image.blobs.map(b => b.blobId))
    assert.equal(blobs.length, 3)
    const devices = blobs.map(id => join(blobCacheDir, `${id}.blob.data`))

    const fsck = await fsckErofs(merged, devices)
    assert.ok(fsck.ok, fsck.output)
    const want = await snapshotTree(expected)
    const got = await withKernelMount(merged, devices, async (mnt) => await snapshotTree(mnt))
    assert.deepEqual(diffTrees(want, got), [])
    // the scenario really exercised what it claims to
    assert.equal(got.has('/opt/app/old1'), false)
    assert.equal(got.get('/newdir/file')!.nlink, 2)
    assert.equal(got.get('/bin/busybox')!.nlink, 1)
    assert.notEqual(got.get('/bin/busybox')!.sha256, got.get('/bin/cat')!.sha256)
    assert.equal(got.get('/x/second')!.mtimeNsec, 987654321)
    assert.equal(got.get('/y')!.type, 'file')
    assert.deepEqual([...got.keys()].filter(k => k.includes('.wh.')), [])
  } finally {
    await rm(work, { recursive: true, force: true })
  }
})
