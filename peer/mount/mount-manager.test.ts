/**
 * The mount manager over a local image (bootstrap + blob dir): kernel mode pulls every chunk through the fetcher,
 * pins the blobs and serves the identical tree; auto picks kernel once the cache is complete and erofs-lazy (or
 * FUSE) before; erofs-lazy reads lazily through its blob files, serves what is cached without a miss, survives
 * eviction under it and never serves bytes it did not verify;
 * prefetch policies name the right chunks; bad requests are refused with codes; mounts and unmounts racing on one
 * mountpoint are refused as busy, never failed.
 */
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { release, tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { BlobCache } from '../../cache/index.js'
import { open } from 'node:fs/promises'
import { buildFromDirectory, RafsReader } from '../../rafs/index.js'
import { kernelSkipReason } from '../../test/helpers/kernel.js'
import { diffTrees, snapshotTree } from '../../test/helpers/tree.js'
import { FuseNativeBackend, mountsAt } from './fuse-backend.js'
import { MountManager, erofsLazyUnavailable } from './mount-manager.js'
import { orderedSlices, planPrefetch, type PrefetchPlan } from './prefetch.js'
import type { ChunkInfo } from '../../rafs/index.js'
import { captureLogs } from '../../test/helpers/logs.js'

/** the options /proc/mounts shows for the mount at `mnt` */
async function mountOptions (mnt: string): Promise<string[]> {
  const line = (await readFile('/proc/mounts', 'utf8')).split('\n').find(l => l.split(' ')[1] === mnt)
  return line?.split(' ')[3]?.split(',') ?? []
}
/** EROFS's `directio` option exists (Linux 6.14+) */
const hasDirectio = (): boolean => {
  const [major = 0, minor = 0] = release().split('.').map(n => parseInt(n, 10))
  return major > 6 || (major === 6 && minor >= 14)
}

const fuseSkip = (): string | undefined => process.getuid?.() !== 0 ? 'needs root' : undefined

let work: string
let src: string
let bootstrap: string
let blobDir: string

function bytes (n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n)
  let x = seed >>> 0 || 1
  for (let i = 0; i < n; i++) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; b[i] = x & 0xff }
  return b
}

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'rafspeer-mounts-'))
  src = join(work, 'src')
  await mkdir(join(src, 'bin'), { recursive: true })
  await mkdir(join(src, 'data/deep'), { recursive: true })
  await writeFile(join(src, 'bin/tool'), bytes(3 << 20, 1), { mode: 0o755 })
  await writeFile(join(src, 'data/small.txt'), 'hello from a lazily mounted image\n')
  await writeFile(join(src, 'data/deep/big.bin'), bytes(5 << 20, 2))
  await writeFile(join(src, 'empty'), '')
  await symlink('bin/tool', join(src, 'link'))
  for (let i = 0; i < 50; i++) await writeFile(join(src, 'data', `f${i}`), bytes(1000 + i * 300, 10 + i))
  bootstrap = join(work, 'image.boot')
  blobDir = join(work, 'blobs')
  await mkdir(blobDir)
  await buildFromDirectory(src, { bootstrap, blobDir, chunkSize: 1 << 20, prefetchFiles: ['/data/small.txt', '/bin'] })
})
after(async () => { if (work !== undefined) await rm(work, { recursive: true, force: true }) })

async function manager (t: { after: (fn: () => Promise<void>) => void }, name: string): Promise<{ mm: MountManager, cache: BlobCache, mnt: string }> {
  const cache = await BlobCache.open(join(work, `cache-${name}`))
  const mm = new MountManager({ cache, fuse: new FuseNativeBackend() }, { workDir: join(work, `wd-${name}`) })
  const mnt = join(work, `mnt-${name}`)
  t.after(async () => {
    await mm.stop()
    await cache.close()
    await rm(mnt, { recursive: true, force: true }).catch(() => {})
  })
  return { mm, cache, mnt }
}

describe('prefetch plans', () => {
  it('table, paths, all and none name the right chunks', async () => {
    const reader = await RafsReader.open(bootstrap)
    const count = (p: PrefetchPlan): number => p.reduce((n, s) => n + s.chunks.length, 0)
    const total = reader.blobs.reduce((n, b) => n + b.chunkCount, 0)
    assert.equal(count(await planPrefetch(reader, 'all')), total)
    assert.equal(count(await planPrefetch(reader, 'none')), 0)
    // the table holds /data/small.txt (1 chunk) and /bin (tool: 3 chunks)
    assert.equal(count(await planPrefetch(reader, 'table')), 4)
    const logs = captureLogs()
    const plan = await planPrefetch(reader, { paths: ['/data/deep', '/missing'] }, logs.logger.forComponent('test'))
    assert.equal(count(plan), 5)
    const skipped = logs.lines.filter(l => l.includes('prefetch: skipping'))
    assert.equal(skipped.length, 1, logs.lines.join('\n'))
    assert.match(skipped[0]!, /skipping \/missing:/)
    const list = join(work, 'list.txt')
    await writeFile(list, '# hot files\n/data/small.txt\n\n/link\n')
    assert.equal(count(await planPrefetch(reader, { file: list })), 1, 'a symlink has no data')
  })

  it('a list keeps its order from group to group, and the blob order inside a group', async () => {
    const reader = await RafsReader.open(bootstrap)
    const names = Array.from({ length: 50 }, (_v, i) => `/data/f${49 - i}`)
    const plan = await planPrefetch(reader, { paths: names })
    const firstOf = (p: string): number => reader.mapRange(reader.lookup(p), 0, 1)[0]!.chunk.index
    // 50 one-chunk files fit one group: one slice, by stored offset
    assert.equal(plan.length, 1)
    assert.deepEqual(plan[0]!.chunks.map(c => c.index), names.map(firstOf).sort((a, b) => a - b))
    // past a group, the list's order wins: the hottest group goes first even when it lies last in the blob
    const chunk = (i: number): ChunkInfo => ({ blobIndex: i % 2, index: i, compressedOffset: i * 4096, compressedSize: 4096 }) as unknown as ChunkInfo
    const listed = Array.from({ length: 130 }, (_v, i) => chunk(129 - i))
    const slices = orderedSlices(listed)
    assert.deepEqual(slices.map(s => s.chunks.length), [32, 32, 32, 32, 1, 1])
    assert.deepEqual(slices[0]!.chunks.map(c => c.index), Array.from({ length: 32 }, (_v, i) => 67 + 2 * i), 'the first 64 listed, blob 1 sorted')
    assert.equal(slices[0]!.blobIndex, 1)
    assert.equal(slices[4]!.chunks[0]!.index, 1)
    assert.equal(slices[5]!.chunks[0]!.index, 0)
  })
})

describe('kernel mode from a local image', { skip: kernelSkipReason() }, () => {
  it('pulls every chunk, pins the blobs, serves the identical tree; auto then picks kernel again', async t => {
    const { mm, cache, mnt } = await manager(t, 'kernel')
    const info = await mm.mount({ source: bootstrap, blobDir, mountpoint: mnt, mode: 'kernel' })
    assert.equal(info.mode, 'kernel')
    // 95% of the image's file bytes are in files of 1 MiB or more: auto reads them with direct I/O
    assert.equal(info.directRead, (await mountOptions(mnt)).includes('directio'))
    if (hasDirectio()) assert.equal(info.directRead, true)
    assert.ok(info.blobs.every(b => b.complete))
    assert.equal(cache.stats().pinnedBlobs, info.blobs.length)
    assert.deepEqual(diffTrees(await snapshotTree(src, { content: true }), await snapshotTree(mnt, { content: true })), [])
    await mm.unmount(mnt)
    assert.equal(cache.stats().pinnedBlobs, 0)
    assert.ok(!(await readFile('/proc/mounts', 'utf8')).includes(mnt))
    const again = await mm.mount({ source: bootstrap, blobDir, mountpoint: mnt })
    assert.equal(again.requestedMode, 'auto')
    assert.equal(again.mode, 'kernel')
    await assert.rejects(mm.mount({ source: bootstrap, blobDir, mountpoint: mnt }), { code: 'RAFSPEER_ERR_ALREADY_MOUNTED' })
    await mm.unmount(mnt)
    await assert.rejects(mm.unmount(mnt), { code: 'RAFSPEER_ERR_NOT_MOUNTED' })
  })

  it('directRead: auto reads an image of small files buffered; off and on are obeyed', async t => {
    const smallSrc = join(work, 'small-src')
    await mkdir(join(smallSrc, 'a'), { recursive: true })
    for (let i = 0; i < 40; i++) await writeFile(join(smallSrc, 'a', `f${i}`), bytes(20_000, 100 + i))
    await writeFile(join(smallSrc, 'one-big'), bytes(1 << 20, 99))
    const smallBoot = join(work, 'small.boot')
    const smallBlobs = join(work, 'small-blobs')
    await mkdir(smallBlobs)
    await buildFromDirectory(smallSrc, { bootstrap: smallBoot, blobDir: smallBlobs })
    const { mm, mnt } = await manager(t, 'direct-auto')
    const small = await mm.mount({ source: smallBoot, blobDir: smallBlobs, mountpoint: mnt, mode: 'kernel' })
    // 1 MiB of 1.8 MiB in a large file: 56%, below the 80% that reads directly
    assert.equal(small.directRead, false)
    assert.ok(!(await mountOptions(mnt)).includes('directio'))
    assert.deepEqual(diffTrees(await snapshotTree(smallSrc, { content: true }), await snapshotTree(mnt, { content: true })), [])
    await mm.unmount(mnt)
    for (const how of ['off', 'on'] as const) {
      const cache = await BlobCache.open(join(work, `cache-direct-${how}`))
      const forced = new MountManager({ cache, fuse: new FuseNativeBackend() }, { workDir: join(work, `wd-direct-${how}`), directRead: how })
      const dir = join(work, `mnt-direct-${how}`)
      t.after(async () => { await forced.stop(); await cache.close(); await rm(dir, { recursive: true, force: true }) })
      const target = how === 'on' ? { source: smallBoot, blobDir: smallBlobs, tree: smallSrc } : { source: bootstrap, blobDir, tree: src }
      const info = await forced.mount({ source: target.source, blobDir: target.blobDir, mountpoint: dir, mode: 'kernel' })
      assert.equal(info.directRead, how === 'on' && hasDirectio(), how)
      assert.equal((await mountOptions(dir)).includes('directio'), info.directRead)
      assert.deepEqual(diffTrees(await snapshotTree(target.tree, { content: true }), await snapshotTree(dir, { content: true })), [])
      await forced.unmount(dir)
    }
  })
})

describe('FUSE mode from a local image', { skip: fuseSkip() }, () => {
  it('fuse mode on a cold cache reads lazily, prefetches the table, equals the source; auto picks kernel once complete', async t => {
    const { mm, cache, mnt } = await manager(t, 'fuse')
    const info = await mm.mount({ source: bootstrap, blobDir, mountpoint: mnt, mode: 'fuse' })
    assert.equal(info.mode, 'fuse')
    const pre = await mm.prefetchSettled(mnt)
    assert.equal(pre.state, 'done')
    assert.equal(pre.chunksTotal, 4)
    // in-process FUSE: only async fs calls on the mount
    assert.equal(await readFile(join(mnt, 'data/small.txt'), 'utf8'), 'hello from a lazily mounted image\n')
    const before = cache.stats().chunksPresent
    assert.ok(before < info.blobs.reduce((n, b) => n + b.chunkCount, 0), 'nothing beyond the prefetch table and the reads was fetched')
    assert.deepEqual(diffTrees(await snapshotTree(src, { content: true }), await snapshotTree(mnt, { content: true }), { ignore: ['mtimeNsec'] }), [])
    const st = mm.stats()[0]!
    assert.ok(st.reads > 0)
    assert.ok(st.fetch.bytesBySource.registry > 0, 'the local blob source counts as the origin')
    await mm.unmount(mnt)
    // everything was read once: the cache is complete, and auto now mounts with the kernel
    if (kernelSkipReason() === undefined) {
      const again = await mm.mount({ source: bootstrap, blobDir, mountpoint: mnt })
      assert.equal(again.mode, 'kernel')
      await mm.unmount(mnt)
    }
  })
})

describe('mounts and unmounts racing on one mountpoint', { skip: fuseSkip() }, () => {
  const busy = (r: PromiseSettledResult<unknown>): boolean => r.status === 'rejected' && (r.reason as { code?: string }).code === 'RAFSPEER_ERR_MOUNT_BUSY'

  it('one unmount wins, the others and a racing mount are MOUNT_BUSY; an unmount racing a mount too', async t => {
    const { mm, mnt } = await manager(t, 'race')
    const req = { source: bootstrap, blobDir, mountpoint: mnt, mode: 'fuse' as const, prefetch: 'none' as const }
    await mm.mount(req)
    const [first, ...rest] = await Promise.allSettled([mm.unmount(mnt), mm.unmount(mnt), mm.unmount(`${mnt}/`), mm.mount(req)])
    assert.equal(first!.status, 'fulfilled')
    assert.ok(rest.every(busy), JSON.stringify(rest.map(r => r.status === 'rejected' ? (r.reason as Error).message : r.status)))
    assert.deepEqual(mm.list(), [])
    assert.deepEqual(await mountsAt(mnt), [])

    const [mounted, ...others] = await Promise.allSettled([mm.mount(req), mm.mount(req), mm.unmount(mnt)])
    assert.equal(mounted!.status, 'fulfilled')
    assert.ok(others.every(busy), JSON.stringify(others.map(r => r.status === 'rejected' ? (r.reason as Error).message : r.status)))
    await assert.rejects(mm.mount(req), { code: 'RAFSPEER_ERR_ALREADY_MOUNTED' })
    await mm.unmount(mnt)
    await assert.rejects(mm.unmount(mnt), { code: 'RAFSPEER_ERR_NOT_MOUNTED' })
  })
})

describe('erofs-lazy mode from a local image', { skip: await erofsLazyUnavailable() }, () => {
  it('auto picks it on a cold cache: the kernel answers metadata, misses fetch lazily, the tree equals the source', async t => {
    const { mm, cache, mnt } = await manager(t, 'lazy')
    const info = await mm.mount({ source: bootstrap, blobDir, mountpoint: mnt, prefetch: 'none' })
    assert.equal(info.mode, 'erofs-lazy')
    // a large-file image, but its blob files are served by the daemon: each direct read would be a READ
    assert.equal(info.directRead, false)
    // metadata costs nothing: the kernel reads it from the local bootstrap
    const tree = await snapshotTree(mnt, { content: false })
    assert.equal(tree.size, (await snapshotTree(src, { content: false })).size)
    assert.equal(cache.stats().chunksPresent, 0)
    assert.equal(mm.lazyKernelStats()!.misses, 0)
    // one small file: its chunk only
    assert.equal(await readFile(join(mnt, 'data/small.txt'), 'utf8'), 'hello from a lazily mounted image\n')
    const afterSmall = cache.stats().chunksPresent
    assert.ok(afterSmall >= 1 && afterSmall < info.blobs[0]!.chunkCount, `${afterSmall} chunks after one small file`)
    assert.deepEqual(diffTrees(await snapshotTree(src, { content: true }), await snapshotTree(mnt, { content: true })), [])
    const st = mm.lazyKernelStats()!
    assert.ok(st.misses > 0 && st.missErrors === 0, JSON.stringify(st))
    assert.ok(mm.stats()[0]!.fetch.bytesBySource.registry > 0)
    await mm.unmount(mnt)
    assert.deepEqual(await mountsAt(mnt), [])
    // complete now: auto mounts with the kernel straight over the cache files
    if (kernelSkipReason() === undefined) {
      const again = await mm.mount({ source: bootstrap, blobDir, mountpoint: mnt })
      assert.equal(again.mode, 'kernel')
      await mm.unmount(mnt)
    }
  })

  it('bytes flipped on disk are never served; verified blocks are answered without a miss', async t => {
    const cacheDir = join(work, 'cache-lazy-warm')
    const workDir = join(work, 'wd-lazy-warm')
    const mnt = join(work, 'mnt-lazy-warm')
    {
      const cache = await BlobCache.open(cacheDir)
      const mm = new MountManager({ cache, fuse: new FuseNativeBackend() }, { workDir })
      await mm.mount({ source: bootstrap, blobDir, mountpoint: mnt, mode: 'fuse', prefetch: 'all' })
      assert.equal((await mm.prefetchSettled(mnt)).state, 'done')
      await mm.stop()
      await cache.close()
    }
    // a byte of tool's first chunk flipped while no daemon ran
    const reader = await RafsReader.open(bootstrap)
    const first = reader.mapRange(reader.lookup('/bin/tool'), 0, 1)[0]!.chunk
    const fh = await open(join(cacheDir, `${reader.blobs[0]!.blobId}.blob.data`), 'r+')
    const b = Buffer.alloc(1)
    await fh.read(b, 0, 1, first.uncompressedOffset)
    b[0] = b[0]! ^ 0xff
    await fh.write(b, 0, 1, first.uncompressedOffset)
    await fh.close()

    const cache = await BlobCache.open(cacheDir)
    const mm = new MountManager({ cache, fuse: new FuseNativeBackend() }, { workDir })
    t.after(async () => { await mm.stop(); await cache.close() })
    const info = await mm.mount({ source: bootstrap, blobDir, mountpoint: mnt, mode: 'erofs-lazy', prefetch: 'none' })
    assert.equal(info.mode, 'erofs-lazy')
    assert.deepEqual(await readFile(join(mnt, 'bin/tool')), await readFile(join(src, 'bin/tool')), 'the flipped byte was refetched, not served')
    assert.ok(cache.stats().verifyFailures >= 1)
    // first read of big.bin in this process: misses (each chunk hashed once); after that, the fast path alone
    const want = await readFile(join(src, 'data/deep/big.bin'))
    assert.deepEqual(await readFile(join(mnt, 'data/deep/big.bin')), want)
    await writeFile('/proc/sys/vm/drop_caches', '3')
    const before = mm.lazyKernelStats()!
    assert.deepEqual(await readFile(join(mnt, 'data/deep/big.bin')), want)
    const after = mm.lazyKernelStats()!
    assert.equal(after.misses, before.misses, 'no miss for verified blocks')
    assert.ok(after.fastReads > before.fastReads, 'answered by the native fast path')
    await mm.unmount(mnt)
  })

  it('a blob complete when mounted is read from its cache file: no FUSE request, pinned until the unmount; overlayfs stacks on it', async t => {
    const { mm, cache, mnt } = await manager(t, 'lazy-direct')
    const cold = await mm.mount({ source: bootstrap, blobDir, mountpoint: mnt, mode: 'erofs-lazy', prefetch: 'all' })
    assert.equal(cold.blobs[0]!.readFromCache, false, 'served as a blob file while incomplete')
    assert.equal((await mm.prefetchSettled(mnt)).state, 'done')
    await mm.unmount(mnt)
    assert.equal(cache.stats().pinnedBlobs, 0)
    // complete and verified by this process: the next mount's device is the cache file
    const info = await mm.mount({ source: bootstrap, blobDir, mountpoint: mnt, mode: 'erofs-lazy', prefetch: 'none' })
    assert.equal(info.mode, 'erofs-lazy')
    assert.equal(info.blobs[0]!.readFromCache, true)
    assert.equal(cache.stats().pinnedBlobs, 1, 'pinned while the kernel reads the cache file')
    // every blob read from the cache, and the image is mostly large files: EROFS reads them with direct I/O
    assert.equal(info.directRead, hasDirectio())
    assert.equal((await mountOptions(mnt)).includes('directio'), info.directRead)
    await writeFile('/proc/sys/vm/drop_caches', '3')
    const before = mm.lazyKernelStats()!
    assert.deepEqual(diffTrees(await snapshotTree(src, { content: true }), await snapshotTree(mnt, { content: true })), [])
    assert.equal(mm.lazyKernelStats()!.requests, before.requests, 'no FUSE request for data')
    // a container's root is overlayfs over the image: the stack (overlay, EROFS, the cache's file system) must stay
    // within the kernel's depth
    const upper = join(work, 'direct-upper')
    const wd = join(work, 'direct-work')
    const merged = join(work, 'direct-merged')
    for (const d of [upper, wd, merged]) await mkdir(d)
    execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${mnt},upperdir=${upper},workdir=${wd}`, merged])
    try {
      assert.deepEqual(await readFile(join(merged, 'data/deep/big.bin')), await readFile(join(src, 'data/deep/big.bin')))
    } finally {
      execFileSync('umount', [merged])
    }
    await mm.unmount(mnt)
    assert.equal(cache.stats().pinnedBlobs, 0, 'unpinned at the unmount')
  })

  it('eviction under a mount: evicted blocks become misses again and read back right', async t => {
    const cache = await BlobCache.open(join(work, 'cache-evict'), { capBytes: 3 << 20, evictionRangeBytes: 1 << 20 })
    const mm = new MountManager({ cache, fuse: new FuseNativeBackend() }, { workDir: join(work, 'wd-evict'), readaheadBytes: 0 })
    const mnt = join(work, 'mnt-evict')
    t.after(async () => { await mm.stop(); await cache.close() })
    await mm.mount({ source: bootstrap, blobDir, mountpoint: mnt, mode: 'erofs-lazy', prefetch: 'none' })
    const want = await readFile(join(src, 'data/deep/big.bin'))
    assert.deepEqual(await readFile(join(mnt, 'data/deep/big.bin')), want)
    assert.deepEqual(await readFile(join(mnt, 'bin/tool')), await readFile(join(src, 'bin/tool')))
    await cache.evict()
    assert.ok(cache.stats().evictions > 0, 'the cap evicted something')
    // drop the kernel's copies, so the reads reach the blob files again
    await writeFile('/proc/sys/vm/drop_caches', '3')
    const missesBefore = mm.lazyKernelStats()!.misses
    assert.deepEqual(await readFile(join(mnt, 'data/deep/big.bin')), want)
    assert.ok(mm.lazyKernelStats()!.misses > missesBefore, 'evicted blocks were asked for again')
    await mm.unmount(mnt)
  })
})

const accessModes = [
  { mode: 'fuse' as const, skip: fuseSkip() },
  { mode: 'erofs-lazy' as const, skip: await erofsLazyUnavailable() }
]
describe('access lists', () => {
  for (const { mode, skip } of accessModes) {
    it(`${mode}: the files read, in first-read order, each once`, { skip }, async t => {
      const { mm, mnt } = await manager(t, `access-${mode}`)
      const info = await mm.mount({ source: bootstrap, blobDir, mountpoint: mnt, mode, prefetch: 'none' })
      assert.equal(info.mode, mode)
      assert.deepEqual(mm.accessList(mnt).files, [])
      const order = ['/data/f40', '/bin/tool', '/data/small.txt', '/data/f7']
      for (const p of [...order, '/data/f40']) await readFile(join(mnt, p))
      await readFile(join(mnt, 'link')) // a symlink to a file read already
      const list = mm.accessList(`${mnt}/`)
      assert.equal(list.tracked, true)
      assert.equal(list.mode, mode)
      if (mode === 'fuse') assert.deepEqual(list.files, order)
      else {
        // blob ranges: the kernel's readahead may name neighbours of a read file, after it
        assert.equal(list.files[0], order[0])
        const positions = order.map(p => list.files.indexOf(p))
        assert.ok(positions.every((p, i) => p >= 0 && (i === 0 || p > positions[i - 1]!)), JSON.stringify(list.files))
        assert.equal(new Set(list.files).size, list.files.length)
      }
      // a file far from every read one in the blob is never named (readahead reaches the next files only)
      assert.ok(!list.files.includes('/data/f20'), JSON.stringify(list.files))
      if (mode === 'fuse') assert.ok(!list.files.includes('/data/deep/big.bin'))
      await mm.unmount(mnt)
      assert.throws(() => mm.accessList(mnt), { code: 'RAFSPEER_ERR_NOT_MOUNTED' })
    })
  }
})
