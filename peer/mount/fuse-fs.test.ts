/**
 * The FUSE layer: `rafsFuseOps` called directly, then real fuse-native mounts of a built image compared with the
 * source tree, read failures answered EIO in bounded time, read-only-ness, and mount/unmount edge cases.
 *
 * fuse-native serves the mount on this process's event loop, so the mount is only ever touched here with async fs
 * calls or from child processes (never a sync call, never a child spawned with its cwd inside the mount: the fork
 * would chdir into the mount while this loop is blocked in spawn).
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { once } from 'node:events'
import {
  chmod, lchown, link, mkdir, mkdtemp, open, readFile, readdir, readlink, rm, rmdir, stat, statfs, symlink, truncate, unlink, writeFile
} from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { setAttributeSync } from '@napi-rs/xattr'
import { buildFromDirectory, RafsReader, type BuildResult } from '../../rafs/index.js'
import { diffTrees, snapshotTree, type TreeEntry } from '../../test/helpers/tree.js'
import { captureLogs } from '../../test/helpers/logs.js'
import { FetchAbortedError, ReadTimeoutError } from '../fetch/index.js'
import { FuseNativeBackend, fuseOptionList } from './fuse-backend.js'
import { loadNative } from './native.js'
import { Errno, encodeRdev, inoOf, rafsFuseOps, type RafsFuseOps } from './fuse-fs.js'
import type { FuseMountHandle, ImageFiles } from './types.js'

const sh = promisify(execFile)
/** run from the sources (tsx) or from dist/: children load the sibling modules the same way */
const fromSources = import.meta.url.endsWith('.ts')
const moduleUrl = (path: string): string => JSON.stringify(new URL(`../../${path}${fromSources ? '.ts' : '.js'}`, import.meta.url).href)
/** node running an ES module given as a string, with access to the repository's modules */
const nodeEval = (code: string): string[] => [...(fromSources ? ['--import', 'tsx'] : []), '--input-type=module', '-e', code]
const REPO = fileURLToPath(new URL('../..', import.meta.url))
const KiB = 1024
const MiB = 1024 * KiB
const CHUNK = 64 * KiB

function fuseSkipReason (): string | undefined {
  if (process.platform !== 'linux') return 'FUSE tests need Linux'
  if (process.getuid?.() !== 0) return 'FUSE tests need root (mount, allow_other, device nodes)'
  if (!existsSync('/dev/fuse')) return 'FUSE tests need /dev/fuse'
  return undefined
}
const skip = fuseSkipReason()

/** Sets an mtime with nanoseconds (Node's utimes goes through a double); -h: the link itself. */
async function setMtime (path: string, sec: number, nsec: number): Promise<void> {
  await sh('touch', ['-h', '-m', '-d', `@${sec}.${String(nsec).padStart(9, '0')}`, path])
}

/** A tree of awkward cases. Device nodes, ownership and trusted.* xattrs need root. */
async function makeTree (root: string, opts: { root: boolean }): Promise<void> {
  const p = (...parts: string[]): string => join(root, ...parts)
  await mkdir(p('many'))
  for (let i = 0; i < 1500; i++) await writeFile(p('many', `entry-${String(i).padStart(4, '0')}`), i % 100 === 0 ? randomBytes(i) : '')
  await writeFile(p('with space'), 'spaced\n')
  await writeFile(p('ünïcödé 名前.txt'), 'unicode\n')
  await writeFile(p('😀'), 'emoji\n')
  await writeFile(p('empty'), '')
  await writeFile(p('text'), 'a line of text\n'.repeat(10_000))
  await writeFile(p('random'), randomBytes(3 * MiB + 5))
  await writeFile(p('sparse'), '')
  await truncate(p('sparse'), 64 * MiB)
  const fh = await open(p('sparse'), 'r+')
  for (const at of [0, 10 * MiB + 123, 64 * MiB - 3]) await fh.write(Buffer.from('xyz'), 0, 3, at)
  await fh.close()

  await mkdir(p('sub', 'deeper'), { recursive: true })
  await writeFile(p('hl-a'), randomBytes(777))
  await link(p('hl-a'), p('sub', 'hl-b'))
  await link(p('hl-a'), p('sub', 'deeper', 'hl-c'))
  await symlink('x', p('sym-dangling'))
  await symlink('sub/deeper', p('sym-dir'))
  await symlink('t/'.repeat(1000) + 'e', p('sym-long'))

  setAttributeSync(p('hl-a'), 'user.foo', 'bar')
  setAttributeSync(p('hl-a'), 'user.empty', '')
  setAttributeSync(p('sub'), 'user.long', Buffer.alloc(1000, 0x41))
  if (opts.root) {
    setAttributeSync(p('text'), 'security.test', Buffer.from([0, 1, 2, 255]))
    await sh('mknod', [p('fifo'), 'p'])
    await sh('mknod', [p('null'), 'c', '1', '3'])
    await sh('mknod', [p('big-minor'), 'c', '240', '70000'])
    await sh('mknod', [p('sda1'), 'b', '8', '1'])
    setAttributeSync(p('sub'), 'trusted.overlay.opaque', 'y')
    setAttributeSync(p('sym-dangling'), 'trusted.sym', 'link')
    await lchown(p('hl-a'), 1000, 1000)
    await lchown(p('sub'), 65534, 100)
    await lchown(p('sym-dangling'), 123456, 654321)
  }
  await chmod(p('hl-a'), 0o4755)
  await chmod(p('text'), 0o2711)
  await chmod(p('sub'), 0o3775)
  await chmod(p('empty'), 0o000)

  await setMtime(p('hl-a'), 1_600_000_000, 123_456_789)
  await setMtime(p('sym-dangling'), 1_500_000_000, 1)
  await setMtime(p('text'), 2_000_000_000, 999_999_999)
  await setMtime(p('sub', 'deeper'), 1_234_567_890, 987_654_321)
  await setMtime(p('sub'), 1_111_111_111, 111_111_111)
  await setMtime(p('many'), 1_300_000_000, 42)
  await chmod(root, 0o750)
  await setMtime(root, 1_700_000_000, 700_000_007)
}

async function build (src: string, dir: string): Promise<BuildResult> {
  return await buildFromDirectory(src, {
    bootstrap: join(dir, 'image.boot'), blobDir: join(dir, 'blobs'), blobCacheDir: join(dir, 'cache'), chunkSize: CHUNK
  })
}

type TestFiles = ImageFiles & { close: () => Promise<void> }

/** File data preads from the blobs' uncompressed views, as the cache's fast path does. */
async function viewFiles (built: BuildResult): Promise<TestFiles> {
  const reader = await RafsReader.open(built.bootstrap)
  const views = await Promise.all(built.blobs.map(async b => await open(b.viewPath!, 'r')))
  return {
    reader,
    read: async (nid, offset, length, buf) => {
      let n = 0
      for (const piece of reader.mapRange(nid, offset, length)) {
        const at = piece.chunk.uncompressedOffset + piece.chunkOffset
        const { bytesRead } = await views[piece.chunk.blobIndex]!.read(buf, piece.fileOffset - offset, piece.length, at)
        if (bytesRead !== piece.length) throw new Error(`short read of the blob view at ${at}`)
        n += bytesRead
      }
      return n
    },
    close: async () => { for (const v of views) await v.close() }
  }
}

/** snapshotTree in a child process: it reads xattrs with sync calls, which would deadlock this event loop. */
async function snapshotInChild (root: string): Promise<Map<string, TreeEntry>> {
  const code = `import { snapshotTree } from ${moduleUrl('test/helpers/tree')}
    process.stdout.write(JSON.stringify([...await snapshotTree(process.env.SNAPSHOT_ROOT)]))`
  const { stdout } = await sh(process.execPath, nodeEval(code), {
    cwd: REPO, env: { ...process.env, SNAPSHOT_ROOT: root }, maxBuffer: 256 * MiB, timeout: 120_000
  })
  return new Map(JSON.parse(stdout) as Array<[string, TreeEntry]>)
}

/** FUSE carries ms: what a mount can show of a source entry. */
function atMsPrecision (tree: Map<string, TreeEntry>): Map<string, TreeEntry> {
  return new Map([...tree].map(([k, e]) => [k, { ...e, mtimeNsec: e.mtimeNsec - (e.mtimeNsec % 1_000_000) }]))
}

const isMounted = async (path: string): Promise<boolean> =>
  (await readFile('/proc/mounts', 'utf8')).split('\n').some(l => l.split(' ')[1] === path.replace(/ /g, '\\040'))

/** Calls a callback-style op and resolves its callback's arguments. */
async function call<A extends unknown[]> (fn: (cb: (...args: A) => void) => void): Promise<A> {
  return await new Promise<A>(resolve => { fn((...args: A) => resolve(args)) })
}

describe('fuse mount options', () => {
  it('are read-only, long-cached, ino-preserving, named', () => {
    const o = fuseOptionList()
    for (const want of ['ro', 'default_permissions', 'allow_other', 'use_ino', 'kernel_cache', 'entry_timeout=86400', 'attr_timeout=86400',
      'negative_timeout=86400', 'fsname=rafspeer', 'subtype=rafs']) assert.ok(o.includes(want), `${want} in ${o.join(',')}`)
    assert.ok(!o.includes('debug'))
    const custom = fuseOptionList({ allowOther: false, kernelCache: false, entryTimeoutS: 5, attrTimeoutS: 7, fsName: 'a,b', debug: true })
    assert.ok(!custom.includes('allow_other') && !custom.includes('kernel_cache'))
    for (const want of ['entry_timeout=5', 'attr_timeout=7', 'negative_timeout=5', 'fsname=a\\,b', 'debug']) assert.ok(custom.includes(want), want)
    assert.throws(() => fuseOptionList({ attrTimeoutS: -1 }), { code: 'RAFSPEER_ERR_MOUNT' })
    assert.throws(() => fuseOptionList({ fsName: 'a b' }), { code: 'RAFSPEER_ERR_MOUNT' })
  })

  it('rdev is encoded as FUSE carries it (new_encode_dev)', () => {
    assert.equal(encodeRdev(1, 3), 0x103)
    assert.equal(encodeRdev(8, 1), 0x801)
    assert.equal(encodeRdev(240, 70000), 0x1110f070)
  })

  it('st_ino is the nid, but never 0 (readdir(3) hides a d_ino of 0)', () => {
    assert.equal(inoOf(128), 128)
    assert.equal(inoOf(0), 0xffffffff)
  })
})

describe('rafsFuseOps, called directly', () => {
  let work: string
  let files: TestFiles
  let ops: RafsFuseOps
  let reader: RafsReader
  const cap = captureLogs()
  const latin1 = Buffer.from([0x6c, 0x61, 0x74, 0x2d, 0xff, 0xfe])

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'rafs-fuse-ops-'))
    const src = join(work, 'src')
    await mkdir(src)
    await makeTree(src, { root: false })
    await writeFile(Buffer.concat([Buffer.from(src + '/'), latin1]), 'not utf-8')
    await symlink(latin1, Buffer.concat([Buffer.from(src + '/'), Buffer.from('sym-latin1')]))
    files = await viewFiles(await build(src, join(work, 'img')))
    reader = files.reader
    ops = rafsFuseOps(files, { logger: cap.logger })
  })
  after(async () => {
    await files?.close()
    await rm(work, { recursive: true, force: true })
  })

  it('getattr: mode, ids, size, nlink, ino = nid, mtime in ms; ENOENT, ENOTDIR', async () => {
    const [err, st] = await call<[number, Record<string, number>?]>(cb => { ops.getattr('/hl-a', cb as never) })
    assert.equal(err, 0)
    const nid = reader.lookup('/hl-a')
    assert.equal(st!.ino, nid)
    assert.equal(st!.mode, 0o104755)
    assert.equal(st!.size, 777)
    assert.equal(st!.nlink, 3)
    assert.equal(st!.mtime, 1_600_000_000_123)
    assert.equal(st!.blksize, 4096)
    assert.equal((await call<[number]>(cb => { ops.getattr('/sub/deeper/hl-c', cb as never) }))[0], 0)
    assert.equal((await call<[number]>(cb => { ops.getattr('/nope', cb as never) }))[0], Errno.ENOENT)
    assert.equal((await call<[number]>(cb => { ops.getattr('/many/nope', cb as never) }))[0], Errno.ENOENT)
    assert.equal((await call<[number]>(cb => { ops.getattr('/text/x', cb as never) }))[0], Errno.ENOTDIR)
    const [, root] = await call<[number, Record<string, number>?]>(cb => { ops.getattr('/', cb as never) })
    assert.equal(root!.ino, reader.rootNid)
    assert.equal(root!.mode, 0o40750)
  })

  it('readdir lists . and .. and every UTF-8 name; a name that is not UTF-8 is left out and logged', async () => {
    const [err, names] = await call<[number, string[]?]>(cb => { ops.readdir('/', cb as never) })
    assert.equal(err, 0)
    assert.deepEqual(names!.slice(0, 2), ['.', '..'])
    for (const n of ['many', 'with space', 'ünïcödé 名前.txt', '😀', 'sym-long']) assert.ok(names!.includes(n), n)
    assert.ok(!names!.some(n => n.startsWith('lat-')))
    assert.ok(cap.lines.some(l => l.includes('not UTF-8')), cap.lines.join('\n'))
    const [, many] = await call<[number, string[]?]>(cb => { ops.readdir('/many', cb as never) })
    assert.equal(many!.length, 1502)
    assert.equal((await call<[number]>(cb => { ops.readdir('/text', cb as never) }))[0], Errno.ENOTDIR)
  })

  it('readlink answers the target; EINVAL for a non-symlink; EIO for a target fuse-native cannot carry', async () => {
    assert.deepEqual(await call(cb => { ops.readlink('/sym-dir', cb as never) }), [0, 'sub/deeper'])
    assert.deepEqual(await call(cb => { ops.readlink('/sym-long', cb as never) }), [0, 't/'.repeat(1000) + 'e'])
    assert.equal((await call<[number]>(cb => { ops.readlink('/text', cb as never) }))[0], Errno.EINVAL)
    assert.equal((await call<[number]>(cb => { ops.readlink('/sym-latin1', cb as never) }))[0], Errno.EIO)
  })

  it('open: read-only opens get nid + 1, write access is EROFS', async () => {
    assert.deepEqual(await call(cb => { ops.open('/text', 0, cb as never) }), [0, reader.lookup('/text') + 1])
    assert.equal((await call<[number]>(cb => { ops.open('/text', 1, cb as never) }))[0], Errno.EROFS)
    assert.equal((await call<[number]>(cb => { ops.open('/text', 2, cb as never) }))[0], Errno.EROFS)
    assert.equal((await call<[number]>(cb => { ops.open('/nope', 0, cb as never) }))[0], Errno.ENOENT)
  })

  it('read fills the buffer by fd or by path, short at EOF, 0 past it', async () => {
    const want = await readFile(join(work, 'src', 'random'))
    const buf = Buffer.alloc(128 * KiB)
    const nid = reader.lookup('/random')
    const [n] = await call<[number]>(cb => { ops.read('/random', nid + 1, buf, buf.length, 100_000, cb) })
    assert.equal(n, buf.length)
    assert.ok(buf.equals(want.subarray(100_000, 100_000 + buf.length)))
    const [tail] = await call<[number]>(cb => { ops.read('/random', 0, buf, buf.length, want.length - 10, cb) })
    assert.equal(tail, 10)
    assert.ok(buf.subarray(0, 10).equals(want.subarray(want.length - 10)))
    assert.deepEqual(await call(cb => { ops.read('/random', 0, buf, buf.length, want.length, cb) }), [0])
    assert.deepEqual(await call(cb => { ops.read('/nope', 0, buf, buf.length, 0, cb) }), [Errno.ENOENT])
  })

  it('a read that fails is EIO, logged with its path; the session\'s signal reaches a pending read, which ends EIO', async () => {
    const nid = reader.lookup('/text')
    const session = new AbortController()
    const signals: Array<AbortSignal | undefined> = []
    const failing = rafsFuseOps({
      reader,
      read: async (n, _offset, _length, _buf, signal) => {
        signals.push(signal)
        if (n === nid) throw new ReadTimeoutError('chunk 0 of blob x', 200)
        // a read that waits on the network: it ends when its signal does
        return await new Promise<number>((_resolve, reject) => {
          signal?.addEventListener('abort', () => { reject(new FetchAbortedError(`read of nid ${n}`)) }, { once: true })
        })
      }
    }, { logger: cap.logger, signal: session.signal })
    const buf = Buffer.alloc(4096)
    assert.deepEqual(await call(cb => { failing.read('/text', 0, buf, buf.length, 0, cb) }), [Errno.EIO])
    assert.ok(cap.lines.some(l => l.includes('/text') && l.includes('RAFSPEER_ERR_READ_TIMEOUT')), cap.lines.join('\n'))
    const pending = call(cb => { failing.read('/random', 0, buf, buf.length, 0, cb) })
    setTimeout(() => { session.abort() }, 50)
    assert.deepEqual(await pending, [Errno.EIO])
    assert.ok(signals.every(s => s === session.signal), 'every read got the session signal')
    assert.ok(cap.lines.some(l => l.includes('/random') && l.includes('RAFSPEER_ERR_ABORTED')), cap.lines.join('\n'))
  })

  it('getxattr / listxattr from the inode; ENODATA when absent', async () => {
    assert.deepEqual(await call(cb => { ops.getxattr('/hl-a', 'user.foo', 0, cb as never) }), [0, Buffer.from('bar')])
    assert.deepEqual(await call(cb => { ops.getxattr('/hl-a', 'user.empty', 0, cb as never) }), [0, Buffer.alloc(0)])
    assert.deepEqual(await call(cb => { ops.getxattr('/hl-a', 'user.nope', 0, cb as never) }), [Errno.ENODATA])
    assert.deepEqual(await call(cb => { ops.getxattr('/empty', 'user.foo', 0, cb as never) }), [Errno.ENODATA])
    const [err, names] = await call<[number, string[]?]>(cb => { ops.listxattr('/hl-a', cb as never) })
    assert.equal(err, 0)
    assert.deepEqual([...names!].sort(), ['user.empty', 'user.foo'])
    assert.deepEqual(await call(cb => { ops.listxattr('/empty', cb as never) }), [0, []])
  })

  it('statfs: 4 KiB blocks of file bytes, the inode count, 255-byte names', async () => {
    const [err, s] = await call<[number, Record<string, number>?]>(cb => { ops.statfs('/', cb as never) })
    assert.equal(err, 0)
    assert.equal(s!.bsize, 4096)
    assert.equal(s!.namemax, 255)
    assert.equal(s!.bfree, 0)
    const image = reader.toImage()
    let files = 0
    let bytes = 0
    const seen = new Set<unknown>()
    const stack = [image.root]
    while (stack.length > 0) {
      const ino = stack.pop()!
      if (seen.has(ino)) continue
      seen.add(ino)
      files++
      if (ino.type === 'file') bytes += ino.size
      for (const c of ino.children?.values() ?? []) stack.push(c)
    }
    assert.equal(s!.files, files)
    assert.equal(s!.blocks, Math.ceil(bytes / 4096))
  })
})

describe('statfs of a big image', () => {
  it('answers at once from the superblock and blob sizes, then exact sizes once its sliced walk ends', async () => {
    const work = await mkdtemp(join(tmpdir(), 'rafs-fuse-statfs-'))
    try {
      const src = join(work, 'src')
      for (let i = 0; i < 300; i++) {
        await mkdir(join(src, `d${i}`), { recursive: true })
        await writeFile(join(src, `d${i}`, 'f'), `file ${String(i).padStart(5, '0')}\n`)
      }
      const files = await viewFiles(await build(src, join(work, 'img')))
      try {
        const ops = rafsFuseOps(files)
        const statfs = async (): Promise<Record<string, number>> => (await call<[number, Record<string, number>?]>(cb => { ops.statfs('/', cb as never) }))[1]!
        const first = await statfs()
        assert.equal(first.files, files.reader.superblock.inos)
        assert.equal(first.files, 601)
        let s = first
        for (let i = 0; i < 100 && s.blocks === first.blocks; i++) {
          await new Promise(resolve => setImmediate(resolve))
          s = await statfs()
        }
        assert.equal(s.blocks, Math.ceil(300 * 11 / 4096))
        assert.ok(first.blocks > s.blocks, 'the first answer is the blob-size estimate')
        assert.equal(s.files, 601)
      } finally {
        await files.close()
      }
    } finally {
      await rm(work, { recursive: true, force: true })
    }
  })
})

describe('FUSE mount of a built image', { skip }, () => {
  let work: string
  let src: string
  let files: TestFiles
  let mnt: string
  let handle: FuseMountHandle
  const handles: FuseMountHandle[] = []
  const cap = captureLogs()
  const backend = new FuseNativeBackend({ logger: cap.logger })

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'rafs-fuse-'))
    src = join(work, 'src')
    await mkdir(src)
    await makeTree(src, { root: true })
    files = await viewFiles(await build(src, join(work, 'img')))
    mnt = join(work, 'mnt point')
    await mkdir(mnt)
    handle = await backend.mount(mnt, files)
    handles.push(handle)
  })

  after(async () => {
    for (const h of handles) await h.unmount().catch((err: Error) => { console.error(`unmount ${h.mountpoint}: ${err.message}`) })
    await files?.close()
    for (const h of handles) await rmdir(h.mountpoint).catch(() => {})
    await rm(work, { recursive: true, force: true })
  })

  it('shows in /proc/mounts as a read-only fuse.rafs mount of "rafspeer"', async () => {
    const line = (await readFile('/proc/mounts', 'utf8')).split('\n').find(l => l.split(' ')[1] === mnt.replace(/ /g, '\\040'))
    assert.ok(line !== undefined)
    const [source, , type, options] = line.split(' ')
    assert.equal(source, 'rafspeer')
    assert.equal(type, 'fuse.rafs')
    assert.ok(options!.split(',').includes('ro'))
    assert.ok(options!.split(',').includes('allow_other'))
  })

  it('the mounted tree equals the source: metadata (mtime to the ms), xattrs, hard links, symlinks, specials, content', async () => {
    const expected = atMsPrecision(await snapshotTree(src))
    const actual = await snapshotInChild(mnt)
    assert.deepEqual(diffTrees(expected, actual), [])
    assert.equal(actual.get('/many')?.type, 'dir')
    assert.equal([...actual.keys()].filter(k => k.startsWith('/many/')).length, 1500)
    assert.equal(actual.get('/big-minor')?.rdev, expected.get('/big-minor')?.rdev)
    assert.deepEqual(actual.get('/sub')?.xattrs, { 'trusted.overlay.opaque': '79', 'user.long': '41'.repeat(1000) })
  })

  it('fuse-native\'s threads block every signal: libfuse cancels its workers at unmount, never inside a handler', { skip: loadNative() === undefined && 'no native addon' }, async () => {
    // libfuse's workers wait for requests in read(2) on /dev/fuse
    const fuseFds = new Set<string>()
    for (const fd of await readdir('/proc/self/fd')) {
      if (await readlink(`/proc/self/fd/${fd}`).catch(() => '') === '/dev/fuse') fuseFds.add(`0x${Number(fd).toString(16)}`)
    }
    const classic = ((1n << 31n) - 1n) & ~(1n << 8n) & ~(1n << 18n) // 1..31 but SIGKILL and SIGSTOP
    let workers = 0
    for (const tid of await readdir('/proc/self/task')) {
      const [nr, fd] = (await readFile(`/proc/self/task/${tid}/syscall`, 'utf8').catch(() => '')).split(' ')
      if (nr !== '0' || !fuseFds.has(fd!)) continue
      workers++
      const status = await readFile(`/proc/self/task/${tid}/status`, 'utf8')
      const blocked = BigInt('0x' + /SigBlk:\s*([0-9a-f]+)/.exec(status)![1]!)
      assert.equal((blocked & classic).toString(16), classic.toString(16), `thread ${tid} reading /dev/fuse`)
    }
    assert.ok(workers >= 1, 'a libfuse worker waits on /dev/fuse')
  })

  it('st_ino is the nid, shared by hard links', async () => {
    const a = await stat(join(mnt, 'hl-a'))
    const c = await stat(join(mnt, 'sub', 'deeper', 'hl-c'))
    assert.equal(a.ino, files.reader.lookup('/hl-a'))
    assert.equal(c.ino, a.ino)
    assert.equal(a.nlink, 3)
    assert.equal((await stat(mnt)).ino, files.reader.rootNid)
    assert.equal((await stat(join(mnt, 'many', 'entry-0042'))).ino, files.reader.lookup('/many/entry-0042'))
  })

  it('cat and cmp in a child process read the same bytes as the source', async () => {
    for (const name of ['random', 'text', 'sparse', 'hl-a', 'empty', 'many/entry-1400', 'ünïcödé 名前.txt', 'with space']) {
      await sh('cmp', [join(src, name), join(mnt, name)])
    }
    const { stdout } = await sh('cat', [join(mnt, 'random')], { encoding: 'buffer', maxBuffer: 16 * MiB })
    assert.ok(stdout.equals(await readFile(join(src, 'random'))))
    assert.deepEqual(await readFile(join(mnt, 'sub', 'hl-b')), await readFile(join(src, 'hl-a')))
    const { stdout: ls } = await sh('sh', ['-c', 'ls -f "$1" | wc -l', 'sh', join(mnt, 'many')])
    assert.equal(Number(ls.trim()), 1502)
    assert.equal((await readdir(join(mnt, 'many'))).length, 1500)
  })

  it('a tar of the mount equals a tar of the source', async () => {
    const tar = async (dir: string): Promise<string> => (await sh('sh', ['-c',
      'cd "$1" && tar --sort=name --numeric-owner --mtime=@0 --format=gnu -cf - . | sha256sum', 'sh', dir], { maxBuffer: 1 * MiB })).stdout
    assert.equal(await tar(mnt), await tar(src))
  })

  it('writes fail with EROFS', async () => {
    await assert.rejects(writeFile(join(mnt, 'new'), 'x'), { code: 'EROFS' })
    await assert.rejects(open(join(mnt, 'text'), 'r+'), { code: 'EROFS' })
    await assert.rejects(mkdir(join(mnt, 'd')), { code: 'EROFS' })
    await assert.rejects(unlink(join(mnt, 'text')), { code: 'EROFS' })
    await assert.rejects(chmod(join(mnt, 'text'), 0o600), { code: 'EROFS' })
    await assert.rejects(sh('touch', [join(mnt, 'text')]), (err: Error & { stderr?: string }) => /Read-only file system/.test(err.stderr ?? ''))
  })

  it('statfs reports 4 KiB blocks and the inode count', async () => {
    const s = await statfs(mnt)
    assert.equal(s.bsize, 4096)
    assert.ok(s.blocks >= Math.ceil((64 * MiB + 3 * MiB) / 4096))
    assert.ok(s.files > 1500)
  })

  for (const opens of ['libfuse', 'js'] as const) {
    it(`with opens answered by ${opens}: same bytes, writes still EROFS`, async () => {
      const dir = join(work, `opens-${opens}`)
      await mkdir(dir)
      const h = await new FuseNativeBackend({ logger: cap.logger }, { opens }).mount(dir, files)
      handles.push(h)
      for (const name of ['random', 'sparse', 'many/entry-0100']) await sh('cmp', [join(src, name), join(dir, name)])
      await assert.rejects(open(join(dir, 'text'), 'r+'), { code: 'EROFS' })
      await h.unmount()
    })
  }

  it('a read that fails is EIO, one that breaks its promise and never answers is cut off by fuse-native\'s guard, both in bounded time; the mount still serves others', async () => {
    const slowNid = files.reader.lookup('/random')
    const brokenNid = files.reader.lookup('/text')
    const failing: ImageFiles = {
      reader: files.reader,
      read: async (nid, offset, length, buf) => {
        if (nid === slowNid) return await new Promise<number>(() => {})
        if (nid === brokenNid) {
          await new Promise(resolve => setTimeout(resolve, 200))
          throw new ReadTimeoutError(`chunk of nid ${nid}`, 200)
        }
        return await files.read(nid, offset, length, buf)
      }
    }
    const dir = join(work, 'failing')
    await mkdir(dir)
    const h = await backend.mount(dir, failing, { opTimeoutMs: 1500 })
    handles.push(h)
    for (const [name, error] of [['random', /Connection timed out/], ['text', /Input\/output error/]] as const) {
      const t = performance.now()
      await assert.rejects(sh('cat', [join(dir, name)], { timeout: 30_000 }),
        (err: Error & { stderr?: string }) => error.test(err.stderr ?? ''))
      assert.ok(performance.now() - t < 10_000, `cat ${name} took ${performance.now() - t} ms`)
    }
    assert.ok(cap.lines.some(l => l.includes('/text') && l.includes('RAFSPEER_ERR_READ_TIMEOUT')), cap.lines.join('\n'))
    await assert.rejects(readFile(join(dir, 'text')), { code: 'EIO' })
    await sh('cmp', [join(src, 'hl-a'), join(dir, 'hl-a')])
    assert.deepEqual(await readFile(join(dir, 'with space'), 'utf8'), 'spaced\n')
    await h.unmount()
    assert.equal(await isMounted(dir), false)
  })

  it('unmount is idempotent and leaves nothing in /proc/mounts; a hand-made umount counts as unmounted', async () => {
    const dir = join(work, 'twice')
    await mkdir(dir)
    const h = await backend.mount(dir, files)
    handles.push(h)
    assert.equal(await isMounted(dir), true)
    await Promise.all([h.unmount(), h.unmount()])
    await h.unmount()
    assert.equal(await isMounted(dir), false)

    const again = await backend.mount(dir, files)
    handles.push(again)
    await sh('umount', [dir])
    assert.equal(await isMounted(dir), false)
    await again.unmount()
    await rmdir(dir)
  })

  it('the dead mount of a killed process is cleared and mounted over', async () => {
    const dir = join(work, 'dead')
    await mkdir(dir)
    const code = `import { RafsReader } from ${moduleUrl('rafs/index')}
      import { FuseNativeBackend } from ${moduleUrl('peer/index')}
      const reader = await RafsReader.open(process.env.BOOT)
      await new FuseNativeBackend().mount(process.env.MNT, { reader, read: async () => 0 })
      process.stdout.write('mounted\\n')
      setInterval(() => {}, 1000)`
    const child = spawn(process.execPath, nodeEval(code), {
      cwd: REPO, env: { ...process.env, BOOT: join(work, 'img', 'image.boot'), MNT: dir }, stdio: ['ignore', 'pipe', 'inherit']
    })
    try {
      await once(child.stdout, 'data')
      assert.equal(await isMounted(dir), true)
    } finally {
      child.kill('SIGKILL')
      await once(child, 'exit')
    }
    await assert.rejects(stat(dir), { code: 'ENOTCONN' })
    const h = await backend.mount(dir, files)
    handles.push(h)
    assert.deepEqual(await readFile(join(dir, 'with space'), 'utf8'), 'spaced\n')
    assert.ok(cap.lines.some(l => l.includes('dead FUSE mount')), cap.lines.join('\n'))
    await h.unmount()
    assert.equal(await isMounted(dir), false)
  })

  it('mounting on a missing path, a file or a mount point rejects with RAFSPEER_ERR_MOUNT', async () => {
    await assert.rejects(backend.mount(join(work, 'missing'), files), { code: 'RAFSPEER_ERR_MOUNT', message: /does not exist/ })
    await assert.rejects(backend.mount(join(src, 'text'), files), { code: 'RAFSPEER_ERR_MOUNT', message: /not a directory/ })
    await assert.rejects(backend.mount(mnt, files), { code: 'RAFSPEER_ERR_MOUNT', message: /already a mount point/ })
    await assert.rejects(backend.mount(join(work, 'x'), files, { opTimeoutMs: 0 }), { code: 'RAFSPEER_ERR_MOUNT' })
  })
})
