/**
 * The native addon: raw mount/umount errors, and the blob file system over /dev/fuse: fast reads answered in C,
 * misses answered from JS (late, failed, clamped at EOF) without holding a worker, clearReady, EROFS mounted over
 * the blob files (all ready, and nothing ready with every byte coming through onMiss), and a server process killed
 * under blocked readers.
 *
 * The servers live in this process, so their files are only touched with async fs calls (a sync call would block
 * the loop that answers misses); onMiss handlers read their bytes with readSync from ordinary files, never through
 * the thread pool that the blocked readers occupy.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, existsSync, openSync, readFileSync, readSync } from 'node:fs'
import { mkdir, mkdtemp, open, readdir, readFile, rm, stat, symlink, truncate, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { buildFromDirectory } from '../../rafs/index.js'
import { diffTrees, snapshotTree } from '../../test/helpers/tree.js'
import { loadNative, nativeUnavailable, type BlobServer, type BlobServerOptions, type NativeAddon } from './native.js'

const native = loadNative()
const skip = nativeUnavailable() ??
  (!existsSync('/dev/fuse') ? 'no /dev/fuse' : process.getuid?.() !== 0 ? 'mount(2) needs root' : false)
if (skip !== false) console.log(`# native addon tests skipped: ${skip}`)

const KiB = 1024
const MiB = 1024 * KiB
const roundUp = (n: number): number => Math.ceil(n / 4096) * 4096
const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

/** bytes [offset, offset + length) of a plain file, synchronously: safe inside onMiss */
function readRange (path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r')
  try {
    const buf = Buffer.alloc(length)
    const n = readSync(fd, buf, 0, length, offset)
    return buf.subarray(0, n)
  } finally {
    closeSync(fd)
  }
}

/** reads a file front to back with a `bufSize` buffer */
async function readSequential (path: string, bufSize: number): Promise<Buffer> {
  const fh = await open(path)
  try {
    const parts: Buffer[] = []
    for (let pos = 0; ; ) {
      const buf = Buffer.alloc(bufSize)
      const { bytesRead } = await fh.read(buf, 0, bufSize, pos)
      if (bytesRead === 0) break
      parts.push(buf.subarray(0, bytesRead))
      pos += bytesRead
    }
    return Buffer.concat(parts)
  } finally {
    await fh.close()
  }
}

async function readAt (path: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(path)
  try {
    const buf = Buffer.alloc(length)
    const { bytesRead } = await fh.read(buf, 0, length, offset)
    return buf.subarray(0, bytesRead)
  } finally {
    await fh.close()
  }
}

async function withTimeout<T> (p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([p, new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms) })])
  } finally {
    clearTimeout(timer)
  }
}

/** resolves once `child` has printed `line` on its stdout */
async function lineFrom (child: ChildProcess, line: string, ms = 10_000): Promise<void> {
  let seen = ''
  await withTimeout(new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer): void => {
      seen += chunk.toString()
      if (seen.split('\n').includes(line)) { child.stdout!.off('data', onData); resolve() }
    }
    child.stdout!.on('data', onData)
    child.once('exit', (code, signal) => reject(new Error(`child exited (${code ?? signal}) before printing ${line}`)))
  }), ms, `child line ${line}`)
}

function mountedUnder (dir: string): string[] {
  return readFileSyncMounts().filter((l) => l.split(' ')[1]?.startsWith(dir))
}

function readFileSyncMounts (): string[] {
  const fd = openSync('/proc/self/mounts', 'r')
  try {
    const chunks: Buffer[] = []
    for (;;) {
      const buf = Buffer.alloc(65536)
      const n = readSync(fd, buf, 0, buf.length, null)
      if (n === 0) break
      chunks.push(buf.subarray(0, n))
    }
    return Buffer.concat(chunks).toString().split('\n').filter((l) => l !== '')
  } finally {
    closeSync(fd)
  }
}

describe('native addon', { skip }, () => {
  const addon = native as NativeAddon
  let work: string
  /** undone last first, each on its own, whatever failed before */
  const cleanups: Array<() => void> = []

  const newServer = async (name: string, opts: Omit<BlobServerOptions, 'mountpoint'>): Promise<{ server: BlobServer, mp: string }> => {
    const mp = join(work, name)
    await mkdir(mp)
    const server = new addon.BlobServer({ mountpoint: mp, ...opts })
    server.start()
    cleanups.push(() => server.stop())
    return { server, mp }
  }

  const mountErofs = (bootstrap: string, mnt: string, devices: string[]): void => {
    addon.mount(bootstrap, mnt, 'erofs', addon.MS_RDONLY, devices.map((d) => `device=${d}`).join(','))
    cleanups.push(() => { try { addon.umount(mnt, addon.MNT_DETACH) } catch {} })
  }

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'rafspeer-native-'))
  })

  after(async () => {
    for (const undo of cleanups.reverse()) {
      try { undo() } catch (err) { console.log(`# cleanup: ${(err as Error).message}`) }
    }
    // anything still mounted under the work dir (a test that died half way), innermost first
    for (const line of mountedUnder(work).reverse()) {
      try { addon.umount(line.split(' ')[1]!, addon.MNT_DETACH) } catch {}
    }
    assert.deepEqual(mountedUnder(work), [], 'nothing left mounted')
    await rm(work, { recursive: true, force: true })
  })

  it('mount and umount throw errno-coded errors', async () => {
    const missing = join(work, 'no-such-dir')
    assert.throws(() => addon.mount('none', missing, 'tmpfs', 0, ''), (err: NodeJS.ErrnoException) => {
      assert.equal(err.code, 'ENOENT')
      assert.equal(err.errno, 2)
      assert.equal(err.message, `mount(${missing}): No such file or directory`)
      return true
    })
    const file = join(work, 'plain-file')
    const dir = join(work, 'mount-errors')
    await writeFile(file, Buffer.alloc(8192))
    await mkdir(dir)
    // a regular file where a block device is wanted: util-linux would have made a loop device
    assert.throws(() => addon.mount(file, dir, 'ext4', addon.MS_RDONLY, ''), { code: 'ENOTBLK', errno: 15 })
    assert.throws(() => addon.mount('none', dir, 'no-such-fs-type', 0, ''), { code: 'ENODEV' })
    assert.throws(() => addon.umount(dir, 0), { code: 'EINVAL', message: `umount(${dir}): Invalid argument` })
    assert.throws(() => addon.umount(missing, addon.MNT_DETACH), { code: 'ENOENT' })
    // and a successful round trip
    addon.mount('rafspeer-test', dir, 'tmpfs', addon.MS_NOSUID | addon.MS_NODEV, 'size=1m')
    try {
      assert.ok(mountedUnder(dir).some((l) => l.startsWith('rafspeer-test ')))
    } finally {
      addon.umount(dir, 0)
    }
    assert.deepEqual(mountedUnder(dir), [])
    assert.deepEqual([addon.MS_RDONLY, addon.MS_NOSUID, addon.MS_NODEV, addon.MNT_FORCE, addon.MNT_DETACH], [1, 2, 4, 1, 2])
  })

  it('withSignalsBlocked calls fn with every signal blocked on this thread, then restores the mask', () => {
    const sigBlk = (): bigint => BigInt('0x' + /SigBlk:\s*([0-9a-f]+)/.exec(readFileSync('/proc/thread-self/status', 'utf8'))![1]!)
    const before = sigBlk()
    const inside = addon.withSignalsBlocked(() => sigBlk())
    // signals 1..31 but SIGKILL (9) and SIGSTOP (19), which no mask holds
    const classic = ((1n << 31n) - 1n) & ~(1n << 8n) & ~(1n << 18n)
    assert.equal(inside & classic, classic)
    assert.equal(sigBlk(), before)
    assert.throws(() => addon.withSignalsBlocked(() => { throw new RangeError('from fn') }), { name: 'RangeError', message: 'from fn' })
    assert.equal(sigBlk(), before, 'restored after an exception too')
    assert.throws(() => (addon.withSignalsBlocked as (fn: unknown) => unknown)(42), { name: 'TypeError' })
  })

  it('BlobServer rejects bad options and arguments', async () => {
    const onMiss = (): void => {}
    assert.throws(() => new addon.BlobServer({ onMiss } as unknown as BlobServerOptions), TypeError)
    assert.throws(() => new addon.BlobServer({ mountpoint: work } as unknown as BlobServerOptions), TypeError)
    assert.throws(() => new addon.BlobServer({ mountpoint: work, onMiss, maxReadBytes: 5000 }), RangeError)
    assert.throws(() => new addon.BlobServer({ mountpoint: work, onMiss, threads: 0 }), RangeError)
    assert.throws(() => new addon.BlobServer({ mountpoint: work, onMiss, onAccess: 3 } as unknown as BlobServerOptions), TypeError)
    const server = new addon.BlobServer({ mountpoint: join(work, 'never-made'), onMiss })
    assert.throws(() => server.start(), { code: 'ENOENT' })
    assert.deepEqual(mountedUnder(work), [])
    server.stop()
    server.stop()
  })

  it('serves ready files from the cache file entirely in C, in READs up to maxReadBytes', async () => {
    const size = 8 * MiB + 1234
    const data = randomBytes(size)
    const cache = join(work, 'fast.cache')
    await writeFile(cache, data)
    // a sparse cache file: only the ends hold data
    const bigSize = 24 * MiB
    const big = randomBytes(bigSize)
    const bigCache = join(work, 'big.cache')
    await writeFile(bigCache, big)
    const sparse = join(work, 'sparse.cache')
    await writeFile(sparse, big.subarray(0, MiB))
    await truncate(sparse, 4 * MiB)
    const missed: number[] = []
    const { server, mp } = await newServer('fast', { onMiss: (id, file) => { missed.push(file); server.reply(id, null, 5) } })
    const names = ['a'.repeat(64) + '.blob.data', 'b'.repeat(64) + '.blob.data', 'sparse.blob.data']
    assert.equal(server.addFile(names[0]!, cache, size), 0)
    assert.equal(server.addFile(names[1]!, bigCache, bigSize), 1)
    assert.equal(server.addFile(names[2]!, sparse, 4 * MiB), 2)
    assert.throws(() => server.addFile(names[0]!, cache, size), { code: 'EEXIST' })
    assert.throws(() => server.addFile('x/y', cache, size), RangeError)
    assert.throws(() => server.setReady(0, 1, 4096), RangeError)
    assert.throws(() => server.setReady(0, 0, roundUp(size) + 4096), RangeError)
    assert.throws(() => server.setReady(9, 0, 4096), RangeError)
    assert.equal(server.isReady(0, 0, size), false)
    server.setReady(0, 0, roundUp(size))
    server.setReady(1, 0, bigSize)
    server.setReady(2, 0, MiB)
    assert.equal(server.isReady(0, 0, size), true)
    assert.equal(server.isReady(0, size - 1, 100), true, 'a range past EOF stops at EOF')
    assert.equal(server.isReady(2, MiB - 4096, 8192), false)

    assert.deepEqual((await readdir(mp)).sort(), [...names].sort())
    const st = await stat(join(mp, names[0]!))
    assert.equal(st.size, size)
    assert.equal(st.mode & 0o777, 0o444)
    assert.ok(st.isFile())
    await assert.rejects(open(join(mp, names[0]!), 'r+'), { code: 'EROFS' })
    await assert.rejects(stat(join(mp, 'nope')), { code: 'ENOENT' })

    assert.ok((await readFile(join(mp, names[0]!))).equals(data), 'a ready file reads back identical')
    let s = server.stats()
    assert.ok(s.fastReads > 0)
    assert.equal(s.fastBytes >= size, true)
    assert.equal(s.misses, 0)
    // readahead past the ready front is a miss (answered EIO here), which the reader never sees
    assert.ok((await readAt(join(mp, names[2]!), 0, MiB)).equals(big.subarray(0, MiB)), 'the ready front of the sparse file')
    assert.deepEqual(missed.filter((f) => f !== 2), [])

    const before = s.readSizes
    assert.ok((await readSequential(join(mp, names[1]!), MiB)).equals(big))
    s = server.stats()
    const grown = s.readSizes.map((n, i) => n - before[i]!)
    assert.equal(s.readSizes.length, 9)
    assert.ok(grown.slice(6).reduce((a, b) => a + b, 0) > 0, `READs > 128 KiB through the page cache: ${JSON.stringify(grown)}`)
    assert.deepEqual(missed.filter((f) => f !== 2), [])
  })

  it('push() puts ready blocks into the page cache: reading them, readahead included, sends no READ', async () => {
    const size = 4 * MiB
    const data = randomBytes(size)
    const cache = join(work, 'push.cache')
    await writeFile(cache, data)
    const missed: Array<{ file: number, offset: number, length: number }> = []
    const { server, mp } = await newServer('push', {
      onMiss: (id, file, offset, length) => {
        missed.push({ file, offset, length })
        server.reply(id, readRange(cache, offset, length), 0)
      }
    })
    for (const name of ['warm', 'cold', 'unseen']) server.addFile(name, cache, size)
    // the front MiB is fetched (ready) in each; the rest is not, as after a prefetch of the files a start reads
    for (const f of [0, 1, 2]) server.setReady(f, 0, MiB)
    const settled = async (n: number): Promise<void> => {
      for (let i = 0; i < 500 && server.stats().pushes + server.stats().pushSkipped < n; i++) await sleep(10)
      assert.equal(server.stats().pushes + server.stats().pushSkipped, n, 'every piece pushed or skipped')
    }
    // a file the kernel has not looked up yet has no page cache to fill: skipped, harmlessly
    server.push(2, 0, MiB)
    await settled(1)
    assert.deepEqual([server.stats().pushes, server.stats().pushSkipped], [0, 1])

    await stat(join(mp, 'warm'))
    await stat(join(mp, 'cold'))
    server.push(0, 0, MiB)
    // a piece with blocks that are not ready is not pushed: their READs still come to onMiss
    server.push(0, MiB, MiB)
    assert.throws(() => server.push(0, 1, 4096), RangeError)
    await settled(3)
    let s = server.stats()
    assert.deepEqual([s.pushes, s.pushBytes, s.pushSkipped], [1, MiB, 2])

    const reads = s.reads
    // a reader going through the fetched front in order, as a start reads a prefetched file
    const front = async (name: string): Promise<Buffer> => {
      const fh = await open(join(mp, name))
      try {
        const parts: Buffer[] = []
        for (let pos = 0; pos < MiB; pos += 64 * KiB) {
          const buf = Buffer.alloc(64 * KiB)
          const { bytesRead } = await fh.read(buf, 0, buf.length, pos)
          parts.push(buf.subarray(0, bytesRead))
        }
        return Buffer.concat(parts)
      } finally {
        await fh.close()
      }
    }
    assert.ok((await front('warm')).equals(data.subarray(0, MiB)))
    s = server.stats()
    assert.equal(s.reads, reads, 'the pushed front of the file reads without any READ')
    assert.equal(missed.length, 0)
    // the same reads of a file not pushed: READs, and readahead reaching past the fetched front waits on onMiss
    assert.ok((await front('cold')).equals(data.subarray(0, MiB)))
    assert.ok(server.stats().reads > reads)
    assert.ok(missed.length > 0 && missed.every(m => m.file === 1), JSON.stringify(missed))
    // past the pushed range, the warm file reads as before, every byte right
    assert.ok((await readFile(join(mp, 'warm'))).equals(data))

    // a stop with pushes still queued ends the pusher too; pushes after it are ignored
    server.setReady(1, 0, size)
    for (let i = 0; i < 64; i++) server.push(1, 0, size)
    server.stop()
    server.push(1, 0, size)
    assert.deepEqual(mountedUnder(mp), [])
  })

  it('with directIo every read is a READ of the reader\'s own size, up to maxReadBytes', async () => {
    const size = 6 * MiB
    const data = randomBytes(size)
    const cache = join(work, 'dio.cache')
    await writeFile(cache, data)
    const { server, mp } = await newServer('dio', { directIo: true, maxReadBytes: 512 * KiB, onMiss: () => {} })
    server.addFile('f', cache, size)
    server.setReady(0, 0, size)
    assert.ok((await readSequential(join(mp, 'f'), MiB)).equals(data))
    const s = server.stats()
    // a 1 MiB read(2) is split at 512 KiB (less the buffer's offset in its first page); nothing bigger
    assert.ok(s.readSizes[7]! >= 12, JSON.stringify(s.readSizes))
    assert.equal(s.readSizes[8], 0)
    assert.equal(s.fastBytes, size)
    // and again: direct I/O keeps nothing cached
    await readSequential(join(mp, 'f'), MiB)
    assert.equal(server.stats().fastBytes, 2 * size)
  })

  it('onAccess tells the first READ of blocks, ready or not, before its miss; forgetAccess starts over', async () => {
    const size = 64 * KiB + 100
    const data = randomBytes(size)
    const cache = join(work, 'access.cache')
    await writeFile(cache, data)
    const events: string[] = []
    const { server, mp } = await newServer('access', {
      directIo: true,
      onMiss: (id, _file, offset, length) => { events.push(`miss ${offset}+${length}`); server.reply(id, data.subarray(offset, offset + length), 0) },
      onAccess: (file, offset, length) => { events.push(`access ${file} ${offset}+${length}`) }
    })
    server.addFile('f', cache, size)
    const path = join(mp, 'f')
    const settle = async (n: number): Promise<void> => {
      for (let i = 0; i < 200 && events.length < n; i++) await sleep(10)
      await sleep(50) // nothing more should come
    }
    server.setReady(0, 0, 32 * KiB)
    assert.ok((await readAt(path, 0, 8 * KiB)).equals(data.subarray(0, 8 * KiB)))
    await settle(1)
    assert.deepEqual(events, ['access 0 0+8192'], 'a ready block is told too (its READ never reaches onMiss)')
    await readAt(path, 0, 8 * KiB)
    await settle(1)
    assert.equal(events.length, 1, 'a block is told once')
    // past the ready part: the access comes before the miss
    assert.ok((await readAt(path, 40 * KiB, 8 * KiB)).equals(data.subarray(40 * KiB, 48 * KiB)))
    await settle(3)
    assert.deepEqual(events.slice(1), ['access 0 40960+8192', 'miss 40960+8192'])
    // a READ partly seen is told whole
    await readAt(path, 4 * KiB, 8 * KiB)
    await settle(4)
    assert.deepEqual(events.slice(3), ['access 0 4096+8192'])
    server.forgetAccess(0)
    await readAt(path, 0, 4 * KiB)
    await settle(5)
    assert.deepEqual(events.slice(4), ['access 0 0+4096'])
    assert.throws(() => server.forgetAccess(7), RangeError)
  })

  it('hands reads of blocks not ready to onMiss, without holding a worker thread', async () => {
    const size = MiB + 100
    const data = randomBytes(size)
    const cache = join(work, 'miss.cache')
    await writeFile(cache, data)
    const other = randomBytes(256 * KiB)
    const otherCache = join(work, 'other.cache')
    await writeFile(otherCache, other)
    const calls: Array<[number, number, number]> = []
    let answer: (id: number, offset: number, length: number) => void = () => {}
    // one worker thread: a miss that held it would block every other read
    const { server, mp } = await newServer('miss', {
      directIo: true,
      threads: 1,
      onMiss: (id, file, offset, length) => { calls.push([file, offset, length]); answer(id, offset, length) }
    })
    server.addFile('m', cache, size)
    server.addFile('o', otherCache, other.length)
    server.setReady(1, 0, other.length)
    const m = join(mp, 'm')

    answer = (id, offset, length) => { assert.equal(server.reply(id, readRange(cache, offset, length), 0), true) }
    assert.ok((await readAt(m, 5000, 10_000)).equals(data.subarray(5000, 15_000)))
    assert.deepEqual(calls, [[0, 5000, 10_000]])
    // clamped at EOF
    assert.ok((await readAt(m, size - 100, 8192)).equals(data.subarray(size - 100)))
    assert.deepEqual(calls[1], [0, size - 100, 100])
    // a short answer is EOF for the reader
    answer = (id) => { server.reply(id, Buffer.from('abc'), 0) }
    assert.deepEqual(await readAt(m, 0, 4096), Buffer.from('abc'))
    // an error answer
    answer = (id) => { assert.equal(server.reply(id, null, 5), true) }
    await assert.rejects(readAt(m, 0, 4096), { code: 'EIO' })

    // a late answer, with a ready read of another file served meanwhile, and double answers refused
    let lateId = -1
    answer = (id, offset, length) => {
      lateId = id
      setTimeout(() => {
        assert.equal(server.reply(id, readRange(cache, offset, length), 0), true)
        assert.equal(server.reply(id, readRange(cache, offset, length), 0), false, 'a second answer')
      }, 200)
    }
    const t0 = Date.now()
    let lateDone = 0
    const late = readAt(m, 64 * KiB, 64 * KiB).then((b) => { lateDone = Date.now(); return b })
    await sleep(20)
    const otherRead = await withTimeout(readAt(join(mp, 'o'), 0, other.length), 150, 'a ready read while a miss waits')
    const otherDone = Date.now()
    assert.ok(otherRead.equals(other))
    assert.ok((await late).equals(data.subarray(64 * KiB, 128 * KiB)))
    assert.ok(otherDone < lateDone, 'the ready read finished first')
    assert.ok(lateDone - t0 >= 190)
    assert.equal(server.reply(lateId, null, 5), false)
    assert.equal(server.reply(123456789, null, 5), false, 'an unknown id')

    const s = server.stats()
    assert.equal(s.misses, 5)
    assert.equal(s.replies, 5)
    assert.equal(s.missBytes, 10_000 + 100 + 4096 + 4096 + 64 * KiB)
    assert.equal(s.errors, 1)
    assert.equal(s.fastReads, 1)
  })

  it('clearReady sends reads back to onMiss', async () => {
    const size = 64 * KiB
    const data = randomBytes(size)
    const cache = join(work, 'clear.cache')
    await writeFile(cache, data)
    const calls: Array<[number, number]> = []
    const { server, mp } = await newServer('clear', {
      directIo: true,
      onMiss: (id, _file, offset, length) => { calls.push([offset, length]); server.reply(id, readRange(cache, offset, length), 0) }
    })
    server.addFile('f', cache, size)
    server.setReady(0, 0, size)
    const f = join(mp, 'f')
    // readers racing clearReady: whatever they get is right
    const racing = Array.from({ length: 16 }, async (_v, i) => await readAt(f, (i % 16) * 4096, 4096))
    server.clearReady(0, 8192, 16 * KiB)
    for (const [i, b] of (await Promise.all(racing)).entries()) assert.ok(b.equals(data.subarray(i * 4096, (i + 1) * 4096)))
    assert.equal(server.isReady(0, 8192, 4096), false)
    assert.equal(server.isReady(0, 0, 8192), true)
    calls.length = 0
    assert.ok((await readAt(f, 0, size)).equals(data))
    assert.deepEqual(calls, [[0, size]])
    assert.ok((await readAt(f, 0, 8192)).equals(data.subarray(0, 8192)))
    assert.equal(calls.length, 1, 'the blocks still ready are read in C')
    server.setReady(0, 8192, 16 * KiB)
    assert.ok((await readAt(f, 0, size)).equals(data))
    assert.equal(calls.length, 1)
  })

  describe('EROFS over the blob files', () => {
    let src: string
    let bootstrap: string
    let view: string
    let viewSize: number

    before(async () => {
      src = join(work, 'src')
      await mkdir(join(src, 'd', 'e'), { recursive: true })
      await writeFile(join(src, 'd', 'big'), randomBytes(3 * MiB + 777))
      await writeFile(join(src, 'd', 'e', 'small'), 'hello rafspeer\n')
      await writeFile(join(src, 'empty'), '')
      for (let i = 0; i < 40; i++) await writeFile(join(src, 'd', `f${i}`), randomBytes(1000 + i * 3001))
      await symlink('d/big', join(src, 'link'))
      const res = await buildFromDirectory(src, { bootstrap: join(work, 'image.boot'), blobDir: join(work, 'blobs'), blobCacheDir: join(work, 'blob-cache') })
      assert.equal(res.blobs.length, 1)
      bootstrap = res.bootstrap
      view = res.blobs[0]!.viewPath!
      viewSize = (await stat(view)).size
    })

    const sameTree = async (mnt: string): Promise<void> => {
      const diff = diffTrees(await snapshotTree(src), await snapshotTree(mnt), { ignore: ['mtimeSec', 'mtimeNsec'] })
      assert.deepEqual(diff.filter((d) => !d.startsWith('"/":')), [])
    }

    it('mounts with every block ready: all reads answered in C', async () => {
      const { server, mp } = await newServer('erofs-ready', { onMiss: (id) => { server.reply(id, null, 5) } })
      const name = basename(view)
      assert.match(name, /^[0-9a-f]{64}\.blob\.data$/)
      server.addFile(name, view, viewSize)
      server.setReady(0, 0, roundUp(viewSize))
      const mnt = join(work, 'erofs-ready-mnt')
      await mkdir(mnt)
      mountErofs(bootstrap, mnt, [join(mp, name)])
      await sameTree(mnt)
      addon.umount(mnt, 0)
      const s = server.stats()
      assert.equal(s.misses, 0)
      assert.ok(s.fastReads > 0 && s.fastBytes > 0)
    })

    it('mounts with nothing ready: every byte comes through onMiss', async () => {
      const { server, mp } = await newServer('erofs-lazy', {
        onMiss: (id, _file, offset, length) => { server.reply(id, readRange(view, offset, length), 0) }
      })
      const name = basename(view)
      server.addFile(name, view, viewSize)
      const mnt = join(work, 'erofs-lazy-mnt')
      await mkdir(mnt)
      mountErofs(bootstrap, mnt, [join(mp, name)])
      await sameTree(mnt)
      addon.umount(mnt, 0)
      const s = server.stats()
      assert.equal(s.fastReads, 0)
      assert.ok(s.misses > 0)
      assert.equal(s.replies, s.misses)
    })

    it('with directIo, EROFS\'s reads of a blob file reach the server as READs in flight together (async direct I/O)', async () => {
      // EROFS reads its devices with an async kiocb; without FUSE_ASYNC_DIO the kernel sends a direct read's READs one
      // after the other and waits for each, so misses never overlap. Hold every miss until a second one arrives.
      const pending: Array<[number, number, number]> = []
      let most = 0
      let timer: NodeJS.Timeout | undefined
      const flush = (): void => {
        clearTimeout(timer)
        timer = undefined
        for (const [id, offset, length] of pending.splice(0)) server.reply(id, readRange(view, offset, length), 0)
      }
      const { server, mp } = await newServer('erofs-adio', {
        directIo: true,
        maxReadBytes: 16 * KiB,
        onMiss: (id, _file, offset, length) => {
          pending.push([id, offset, length])
          most = Math.max(most, pending.length)
          if (pending.length >= 2) flush()
          else timer ??= setTimeout(flush, 50)
        }
      })
      cleanups.push(() => { clearTimeout(timer) })
      const name = basename(view)
      server.addFile(name, view, viewSize)
      const mnt = join(work, 'erofs-adio-mnt')
      await mkdir(mnt)
      mountErofs(bootstrap, mnt, [join(mp, name)])
      const big = await withTimeout(readSequential(join(mnt, 'd', 'big'), MiB), 30_000, 'read of d/big')
      assert.ok(big.equals(await readFile(join(src, 'd', 'big'))))
      addon.umount(mnt, 0)
      assert.ok(most >= 2, `misses in flight at once: ${most}`)
    })

    it('readers of a killed server\'s files, and of EROFS over them, get errors instead of hanging', async () => {
      const mp = join(work, 'killed')
      const mnt = join(work, 'killed-mnt')
      await mkdir(mp)
      await mkdir(mnt)
      const script = join(work, 'server-child.mjs')
      await writeFile(script, [
        "import { createRequire } from 'node:module'",
        'const [addonPath, mp, name, cache, size] = process.argv.slice(2)',
        'const addon = createRequire(import.meta.url)(addonPath)',
        "const server = new addon.BlobServer({ mountpoint: mp, onMiss: () => { process.stdout.write('miss\\n') } })",
        'server.start()',
        'server.addFile(name, cache, Number(size))',
        "process.stdout.write('ready\\n')",
        'setInterval(() => {}, 60_000)'
      ].join('\n'))
      const addonPath = fileURLToPath(new URL('../../native/rafspeer.node', import.meta.url))
      const name = basename(view)
      const child = spawn(process.execPath, [script, addonPath, mp, name, view, String(viewSize)], { stdio: ['ignore', 'pipe', 'inherit'] })
      const exited = new Promise((resolve) => child.once('exit', resolve))
      cleanups.push(() => { child.kill('SIGKILL'); try { addon.umount(mp, addon.MNT_DETACH) } catch {} })
      await lineFrom(child, 'ready')
      // the mount reads only the bootstrap, so it does not wait for the child
      mountErofs(bootstrap, mnt, [join(mp, name)])
      // settled into codes right away: the rejections come before anyone awaits them
      const codeOf = async (p: Promise<Buffer>): Promise<string | undefined> => await p.then(() => 'no error', (err: NodeJS.ErrnoException) => err.code)
      const direct = codeOf(readAt(join(mp, name), 0, 4096))
      const viaErofs = codeOf(readAt(join(mnt, 'd', 'big'), 0, 4096))
      await lineFrom(child, 'miss')
      await sleep(100)
      child.kill('SIGKILL')
      await exited
      const t0 = Date.now()
      const errors = await withTimeout(Promise.all([direct, viaErofs]), 5000, 'readers after the kill')
      assert.ok(Date.now() - t0 < 5000)
      for (const code of errors) assert.ok(['ENOTCONN', 'EIO', 'ECONNABORTED'].includes(code ?? ''), `read failed with ${code}`)
      addon.umount(mnt, 0)
      addon.umount(mp, addon.MNT_DETACH)
      assert.deepEqual(mountedUnder(mp), [])
    })
  })

  it('stop() is idempotent, unmounts, and even ends a connection whose files are still open', async () => {
    const cache = join(work, 'stop.cache')
    await writeFile(cache, randomBytes(8192))
    const { server, mp } = await newServer('stop', { onMiss: () => {} })
    server.addFile('f', cache, 8192)
    const fh = await open(join(mp, 'f'))
    // a miss nobody answers: stop() must still come back, and the reader get an error
    const pending = fh.read(Buffer.alloc(4096), 0, 4096, 0)
    await sleep(50)
    const t0 = Date.now()
    server.stop()
    assert.ok(Date.now() - t0 < 4000, 'stop() aborted the connection')
    server.stop()
    await assert.rejects(pending, (err: NodeJS.ErrnoException) => ['ENOTCONN', 'ECONNABORTED', 'EIO'].includes(err.code ?? ''))
    await fh.close().catch(() => {})
    assert.deepEqual(mountedUnder(mp), [])
    assert.equal(server.reply(1, null, 5), false)
    assert.throws(() => server.addFile('g', cache, 8192))
    assert.throws(() => server.start())
  })
})
