/**
 * End to end against the real EROFS driver: build an image from a directory full of awkward cases, mount it with
 * the blobs' uncompressed views as extra devices, and require the mounted tree to equal the source tree
 * (metadata, xattrs, hard links, content). fsck.erofs must accept the same files.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmod, link, lchown, mkdir, mkdtemp, open, rm, symlink, truncate, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { setAttributeSync } from '@napi-rs/xattr'
import { buildFromDirectory } from '../rafs/build.js'
import type { Compressor, Digester } from '../rafs/index.js'
import { fsckErofs, kernelSkipReason, withKernelMount } from './helpers/kernel.js'
import { diffTrees, snapshotTree } from './helpers/tree.js'

const sh = promisify(execFile)
const skip = kernelSkipReason()
const MiB = 1 << 20

/** Sets an mtime with nanoseconds (Node's utimes goes through a double and loses them); -h: the link itself. */
async function setMtime (path: string, sec: number, nsec: number): Promise<void> {
  await sh('touch', ['-h', '-m', '-d', `@${sec}.${String(nsec).padStart(9, '0')}`, path])
}

interface TreeOptions {
  chunkSize: number
  /** add the 4.5 GiB sparse file */
  sparse: boolean
  /** no regular file gets any bytes */
  noData: boolean
}

async function makeTree (root: string, o: TreeOptions): Promise<void> {
  const p = (...parts: string[]): string => join(root, ...parts)
  const data = (n: number): Buffer => o.noData ? Buffer.alloc(0) : randomBytes(n)

  // one directory spanning many dirent blocks, with 255-byte names and names sorting before "."
  await mkdir(p('many'))
  for (let i = 0; i < 1100; i++) {
    await writeFile(p('many', `entry-${String(i).padStart(5, '0')}-${'n'.repeat(i % 50)}`), i % 7 === 0 ? data(i) : '')
  }
  await writeFile(p('many', 'L'.repeat(255)), data(300))
  await mkdir(p('many', 'D'.repeat(255)))
  for (const name of ['!bang', '-x', '+plus', ' space', '#hash', '..dots', '.hidden']) await writeFile(p(name), data(5))
  // a name that is not UTF-8: only raw bytes survive
  await writeFile(Buffer.concat([Buffer.from(p('latin-')), Buffer.from([0xff, 0xfe])]), data(11))

  await writeFile(p('empty'), '')
  const cs = o.chunkSize
  await writeFile(p('chunk-exact'), data(cs))
  await writeFile(p('chunk-minus-1'), data(cs - 1))
  await writeFile(p('chunk-plus-1'), data(cs + 1))
  await writeFile(p('three-chunks-and-a-bit'), data(3 * cs + 5))
  await writeFile(p('text'), o.noData ? '' : 'compressible line of text\n'.repeat(Math.ceil(2.5 * cs / 26)))
  await writeFile(p('text-copy'), o.noData ? '' : 'compressible line of text\n'.repeat(Math.ceil(2.5 * cs / 26)))
  if (o.sparse && !o.noData) {
    await writeFile(p('sparse'), '')
    await truncate(p('sparse'), 4.5 * 1024 * MiB)
    const fh = await open(p('sparse'), 'r+')
    for (const at of [0, 1024 * MiB + 123, 4096 * MiB - 2, 4096 * MiB + 7, 4.5 * 1024 * MiB - 3]) {
      await fh.write(Buffer.from('xyz'), 0, 3, at)
    }
    await fh.close()
  }

  await mkdir(p('sub', 'deeper'), { recursive: true })
  await writeFile(p('hl-a'), data(777))
  await link(p('hl-a'), p('sub', 'hl-b'))
  await link(p('hl-a'), p('sub', 'deeper', 'hl-c'))
  await writeFile(p('hl-empty'), '')
  await link(p('hl-empty'), p('sub', 'hl-empty-2'))

  await symlink('x', p('sym-1'))
  await symlink('t/'.repeat(2047) + 'e', p('sym-4095'))
  await symlink('sub/deeper', p('sym-dir'))
  await sh('mknod', [p('fifo'), 'p'])
  await sh('mknod', [p('null'), 'c', '1', '3'])
  await sh('mknod', [p('tty300'), 'c', '4', '300'])
  await sh('mknod', [p('big-minor'), 'c', '240', '70000'])
  await sh('mknod', [p('sda1'), 'b', '8', '1'])

  setAttributeSync(p('hl-a'), 'user.foo', 'bar')
  setAttributeSync(p('hl-a'), 'user.empty', '')
  setAttributeSync(p('sub'), 'trusted.overlay.opaque', 'y')
  setAttributeSync(p('sub'), 'user.long', Buffer.alloc(1000, 0x41))
  setAttributeSync(p('text'), 'security.test', Buffer.from([0, 1, 2, 255]))
  setAttributeSync(p('many'), 'user.a', '1')
  setAttributeSync(p('sym-1'), 'trusted.sym', 'link') // lsetxattr: the link itself

  await lchown(p('hl-a'), 1000, 1000)
  await lchown(p('sub'), 65534, 100)
  await lchown(p('sym-1'), 123456, 654321)
  await lchown(p('null'), 7, 8)
  await chmod(p('hl-a'), 0o4755) // after chown, which clears setuid
  await chmod(p('text'), 0o2711)
  await chmod(p('sub'), 0o3775)
  await chmod(p('many'), 0o1777)
  await chmod(p('empty'), 0o000)

  // mtimes last, innermost first: creating entries touched the directories
  await setMtime(p('hl-a'), 1_600_000_000, 123_456_789)
  await setMtime(p('sym-1'), 1_500_000_000, 1)
  await setMtime(p('fifo'), 0, 999_999_999)
  await setMtime(p('text'), 2_000_000_000, 500_000_000)
  await setMtime(p('sub', 'deeper'), 1_234_567_890, 987_654_321)
  await setMtime(p('sub'), 1_111_111_111, 111_111_111)
  await setMtime(p('many'), 1_300_000_000, 42)
  await chmod(root, 0o750)
  await setMtime(root, 1_700_000_000, 700_000_007)
}

interface Variant {
  name: string
  compressor?: Compressor
  digester?: Digester
  chunkSize?: number
  sparse: boolean
  noData: boolean
}

const VARIANTS: Variant[] = [
  { name: 'zstd + blake3, 1 MiB chunks (defaults), 4.5 GiB sparse file', sparse: true, noData: false },
  { name: 'none + sha256, 64 KiB chunks', compressor: 'none', digester: 'sha256', chunkSize: 0x10000, sparse: false, noData: false },
  { name: 'lz4_block, 64 KiB chunks', compressor: 'lz4_block', chunkSize: 0x10000, sparse: false, noData: false },
  { name: 'no regular-file data (zero blobs)', sparse: false, noData: true }
]

describe('kernel mount of built images', { skip }, () => {
  let work: string
  before(async () => { work = await mkdtemp(join(tmpdir(), 'rafs-kernel-')) })
  after(async () => { await rm(work, { recursive: true, force: true }) })

  for (const v of VARIANTS) {
    it(v.name, async () => {
      const dir = await mkdtemp(join(work, 'case-'))
      try {
        const src = join(dir, 'src')
        await mkdir(src)
        await makeTree(src, { chunkSize: v.chunkSize ?? MiB, sparse: v.sparse, noData: v.noData })
        const blobDir = join(dir, 'blobs')
        const blobCacheDir = join(dir, 'cache')
        await mkdir(blobDir)
        await mkdir(blobCacheDir)
        const built = await buildFromDirectory(src, {
          bootstrap: join(dir, 'image.boot'),
          blobDir,
          blobCacheDir,
          ...(v.compressor !== undefined ? { compressor: v.compressor } : {}),
          ...(v.digester !== undefined ? { digester: v.digester } : {}),
          ...(v.chunkSize !== undefined ? { chunkSize: v.chunkSize } : {})
        })
        assert.equal(built.blobs.length, v.noData ? 0 : 1)
        const views = built.blobs.map(b => b.viewPath ?? join(blobCacheDir, `${b.blobId}.blob.data`))

        const expected = await snapshotTree(src)
        const actual = await withKernelMount(built.bootstrap, views, async mnt => await snapshotTree(mnt))
        assert.deepEqual(diffTrees(expected, actual), [])
        assert.equal(actual.get('/')?.mode, 0o40750)
        assert.equal(actual.get('/')?.mtimeNsec, 700_000_007)

        const fsck = await fsckErofs(built.bootstrap, views)
        assert.ok(fsck.ok, fsck.output)
      } finally {
        await rm(dir, { recursive: true, force: true })
      }
    })
  }
})

describe('tree snapshots (no kernel needed)', () => {
  it('diffTrees names every difference, and nothing for equal trees', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'rafs-tree-'))
    try {
      await writeFile(join(dir, 'a'), 'one')
      await link(join(dir, 'a'), join(dir, 'b'))
      await symlink('a', join(dir, 'l'))
      const before = await snapshotTree(dir)
      assert.deepEqual(diffTrees(before, await snapshotTree(dir)), [])
      assert.equal(before.get('/b')?.linkGroup, '/a')
      assert.equal(before.get('/l')?.target, Buffer.from('a').toString('hex'))
      await writeFile(join(dir, 'a'), 'two')
      await chmod(join(dir, 'a'), 0o600)
      await writeFile(join(dir, 'c'), '')
      await rm(join(dir, 'l'))
      const diff = diffTrees(before, await snapshotTree(dir), { ignore: ['mtimeSec', 'mtimeNsec'] })
      for (const want of ['"/a": mode', '"/a": sha256', '"/b": sha256', '"/l": missing', '"/c": unexpected']) {
        assert.ok(diff.some(d => d.startsWith(want)), `${want} not in ${diff.join('\n')}`)
      }
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
