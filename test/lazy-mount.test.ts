/**
 * One node, lazily, end to end: a source image built with umoci, pushed with skopeo into the real CNCF
 * distribution registry, converted to RAFS; the real `rafspeer daemon` (child process) mounts it with FUSE through
 * `rafspeer mount`, with a counting proxy in front of the registry as an independent witness of what was fetched.
 * Covers: laziness, full-tree equality with `umoci unpack`, restart without refetch, flipped cache bytes,
 * SIGKILL mid-read, offline reads after a full prefetch, kernel mode, and a stalling registry; each in both lazy
 * modes: per-file FUSE and erofs-lazy (the kernel's EROFS over the daemon's lazily filled blob files), plus, for
 * erofs-lazy, a daemon killed under a reader (an error within the deadline, never a hang; a restart recovers).
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, open, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { after, before, describe, it } from 'node:test'
import { BlobCache } from '../cache/index.js'
import { erofsLazyUnavailable } from '../peer/index.js'
import { convertImage } from '../convert/index.js'
import { RegistryClient, isIndex } from '../registry/index.js'
import { runCli } from './helpers/cli.js'
import { mountsUnder, startDaemon, type TestDaemon } from './helpers/daemon.js'
import { distributionSkipReason, startDistribution, type Distribution } from './helpers/distribution.js'
import { addLayer, buildSourceImage, ociToolsSkipReason, pseudoRandom, pushOciImage, umociUnpack, type OciImage } from './helpers/oci-image.js'
import { startRegistryProxy, type RegistryProxy } from './helpers/registry-proxy.js'
import { diffTrees, snapshotTree, type TreeEntry } from './helpers/tree.js'

const run = promisify(execFile)

function skipReason (): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (FUSE, kernel mounts)'
  return ociToolsSkipReason() ?? distributionSkipReason()
}
const skip = skipReason()

let work: string
let dist: Distribution
let proxy: RegistryProxy
let image: OciImage
let reference: Map<string, TreeEntry>
let REF: string
let blobTotal = 0
const daemons: TestDaemon[] = []

/** FUSE carries mtimes in milliseconds only */
const FUSE_IGNORE: Array<keyof TreeEntry> = ['mtimeNsec']
const LAZY_MODES = ['fuse', 'erofs-lazy'] as const
type LazyMode = typeof LAZY_MODES[number]

before(async () => {
  if (skip !== undefined) return
  work = await mkdtemp(join(tmpdir(), 'rafspeer-lazy-'))
  image = await buildSourceImage(join(work, 'source'))
  // a layer of bulk data, so that one small file is a small fraction of the image
  await addLayer(image, join(work, 'source'), async r => {
    await mkdir(join(r, 'opt/model'), { recursive: true })
    for (let i = 0; i < 6; i++) await writeFile(join(r, `opt/model/part${i}.bin`), pseudoRandom((4 << 20) + i * 1000, 100 + i))
    await mkdir(join(r, 'usr/share/doc'), { recursive: true })
    for (let i = 0; i < 200; i++) await writeFile(join(r, `usr/share/doc/f${i}.txt`), `doc ${i}\n`.repeat(1 + (i % 50)))
  })
  reference = await snapshotTree(await umociUnpack(image, join(work, 'reference')), { content: true })
  dist = await startDistribution()
  await pushOciImage(image, `${dist.host}/app:oci`)
  await convertImage(`${dist.host}/app:oci`, `${dist.host}/app:rafs`, { workDir: work })
  const client = new RegistryClient()
  const m = await client.getManifest(`${dist.host}/app:rafs`)
  assert.ok(!isIndex(m.json))
  blobTotal = m.json.layers.slice(0, -1).reduce((n, l) => n + l.size, 0)
  await client.close()
  proxy = await startRegistryProxy(dist.host)
  REF = `${proxy.host}/app:rafs`
})

after(async () => {
  for (const d of daemons) await d.kill().catch(() => {})
  if (work !== undefined) {
    for (const mp of await mountsUnder(work)) await run('umount', ['-l', mp]).catch(() => {})
  }
  await proxy?.close()
  await dist?.stop()
  if (work !== undefined) await rm(work, { recursive: true, force: true })
})

async function daemonOf (name: string, config: Record<string, unknown> = {}, mode?: LazyMode): Promise<TestDaemon> {
  const dir = join(work, name)
  await mkdir(dir, { recursive: true })
  const d = await startDaemon(dir, { log: { level: 'debug', format: 'text' }, prefetch: { policy: 'none' }, ...(mode !== undefined ? { mount: { defaultMode: mode } } : {}), ...config })
  daemons.push(d)
  return d
}

async function mountCli (d: TestDaemon, mnt: string, ...extra: string[]): Promise<{ mode: string }> {
  const res = await runCli(['mount', REF, mnt, '--socket', d.socket, '--json', ...extra])
  assert.equal(res.code, 0, `mount failed: ${res.stderr}\ndaemon log:\n${d.log()}`)
  return JSON.parse(res.stdout) as { mode: string }
}

async function umountCli (d: TestDaemon, mnt: string): Promise<void> {
  const res = await runCli(['umount', mnt, '--socket', d.socket])
  assert.equal(res.code, 0, res.stderr)
  assert.deepEqual(await mountsUnder(mnt), [])
}

async function assertTreeEqual (mnt: string, ignore: Array<keyof TreeEntry>): Promise<void> {
  const diffs = diffTrees(reference, await snapshotTree(mnt, { content: true }), { ignore })
  assert.deepEqual(diffs.slice(0, 20), [], `${diffs.length} differences`)
}

for (const mode of LAZY_MODES) {
// one tree per mode: what a mode reads equals the source exactly (erofs-lazy is the kernel's: nanosecond mtimes)
const IGNORE: Array<keyof TreeEntry> = mode === 'fuse' ? FUSE_IGNORE : []
const lazySkip = skip ?? (mode === 'erofs-lazy' ? await erofsLazyUnavailable() : undefined)
describe(`rafspeer daemon + mount, lazily (${mode}), against the real distribution registry`, { skip: lazySkip }, () => {
  const daemon = async (name: string, config: Record<string, unknown> = {}): Promise<TestDaemon> => await daemonOf(`${mode}-${name}`, config, mode)
  const work_ = (name: string): string => join(work, `${mode}-${name}`)
  it('a small read fetches a small fraction; the whole tree equals umoci unpack; metrics account for it', async () => {
    const d = await daemon('lazy')
    const mnt = work_('mnt-lazy')
    proxy.reset()
    const info = await mountCli(d, mnt)
    assert.equal(info.mode, mode)
    const afterMount = proxy.blobBytes // the bootstrap layer
    assert.equal(await readFile(join(mnt, 'etc/hostname'), 'utf8'), 'changed\n')
    const small = proxy.blobBytes - afterMount
    assert.ok(small > 0, 'the read went to the registry')
    assert.ok(small < blobTotal * 0.15, `one small file cost ${small} of ${blobTotal} blob bytes`)
    await assertTreeEqual(mnt, IGNORE)
    const metrics = await d.client.metricsJson()
    const img = metrics.images.find(i => i.mountpoint === mnt)!
    assert.ok(img.readBytes > 0 && img.readCount > 0)
    assert.ok(img.bytesBySource.registry > 0)
    const prom = await d.client.prometheus()
    assert.match(prom, /rafspeer_read_bytes_total\{[^}]*\} [1-9]/)
    if (mode === 'erofs-lazy') {
      // the kernel asked the blob files: misses went through the fetch pipeline, the rest natively
      assert.ok(metrics.lazyKernel !== undefined && metrics.lazyKernel.misses > 0 && metrics.lazyKernel.missErrors === 0, JSON.stringify(metrics.lazyKernel))
      assert.match(prom, /rafspeer_blobfs_misses_total [1-9]/)
      assert.match(prom, /rafspeer_mounts\{mode="erofs-lazy"\} 1/)
    }
    assert.equal(await d.stop(), 0, d.log())
    assert.deepEqual(await mountsUnder(mnt), [], 'SIGTERM unmounts')
  })

  it('after a restart nothing is fetched again', async () => {
    const d = await daemon('lazy')
    const mnt = work_('mnt-lazy')
    proxy.reset()
    await mountCli(d, mnt)
    await assertTreeEqual(mnt, IGNORE)
    assert.equal(proxy.blobBytes, 0, `refetched ${proxy.blobBytes} bytes (${proxy.blobRequests} blob requests)`)
    assert.equal(await d.stop(), 0)
  })

  it('bytes flipped in a cache file are detected and refetched, never served', async () => {
    const cacheDir = join(work_('lazy'), 'cache')
    const files = (await readdir(cacheDir)).filter(f => f.endsWith('.blob.data'))
    assert.ok(files.length > 0)
    for (const f of files) {
      const fh = await open(join(cacheDir, f), 'r+')
      // offset 0 is inside the blob's first chunk (later offsets may be zero padding after a short chunk)
      const b = Buffer.alloc(1)
      await fh.read(b, 0, 1, 0)
      b[0] = b[0]! ^ 0x5a
      await fh.write(b, 0, 1, 0)
      await fh.close()
    }
    const d = await daemon('lazy')
    const mnt = work_('mnt-lazy')
    proxy.reset()
    await mountCli(d, mnt)
    await assertTreeEqual(mnt, IGNORE)
    assert.ok(proxy.blobBytes > 0, 'the bad chunks were refetched')
    const m = await d.client.metricsJson()
    assert.ok(m.cache.verifyFailures >= files.length, `verify failures ${m.cache.verifyFailures}`)
    assert.equal(await d.stop(), 0)
  })

  it('SIGKILL in the middle of reads: after a restart every chunk the index calls present verifies', async () => {
    const d = await daemon('killed')
    const mnt = work_('mnt-killed')
    await mountCli(d, mnt)
    proxy.reset()
    proxy.delayMs = 20
    const reader = run('bash', ['-c', `tar -cf - -C ${mnt} . | cat >/dev/null`]).catch(() => {})
    // kill once some chunks are cached and more are on the way
    for (let i = 0; ; i++) {
      const m = await d.client.metricsJson()
      if (m.cache.chunksPresent >= 3) break
      assert.ok(i < 1000, 'no chunk was cached in 20 s')
      await new Promise(resolve => setTimeout(resolve, 20))
    }
    // the index marks land in LevelDB in group commits just after the data: give the first ones time to land
    // (reads go on meanwhile, so the kill still falls among writes in flight)
    await new Promise(resolve => setTimeout(resolve, 300))
    await d.kill()
    proxy.delayMs = 0
    await run('fusermount', ['-uz', mnt]).catch(async () => await run('umount', ['-l', mnt]))
    for (const mp of await mountsUnder(work_('killed'))) await run('umount', ['-l', mp]).catch(() => {})
    await reader
    const again = await daemon('killed')
    assert.equal(await again.stop(), 0, again.log())
    const cache = await BlobCache.open(join(work_('killed'), 'cache'))
    try {
      const st = cache.stats()
      assert.ok(st.chunksPresent > 0, 'some chunks made it before the kill')
      const v = await cache.verifyAll()
      assert.equal(v.bad, 0, `${v.bad} of ${v.checked} present chunks fail their digest`)
    } finally {
      await cache.close()
    }
  })

  it('after a full prefetch the registry can go away: every file reads; kernel mode gives the identical tree', async () => {
    const d = await daemon('offline')
    const mnt = work_('mnt-offline')
    await mountCli(d, mnt, '--prefetch', 'all')
    for (let i = 0; ; i++) {
      const [m] = await d.client.mounts()
      if (m!.prefetch.state === 'done') break
      assert.notEqual(m!.prefetch.state, 'failed', m!.prefetch.error)
      assert.ok(i < 600, 'prefetch did not finish in 60 s')
      await new Promise(resolve => setTimeout(resolve, 100))
    }
    proxy.mode = 'down'
    try {
      await assertTreeEqual(mnt, IGNORE)
      await umountCli(d, mnt)
      // the registry is still down: the daemon mounts from the cache's record of the image
      const info = await mountCli(d, mnt, '--mode', 'kernel')
      assert.equal(info.mode, 'kernel')
      await assertTreeEqual(mnt, [])
      await umountCli(d, mnt)
    } finally {
      proxy.mode = 'pass'
    }
    assert.equal(await d.stop(), 0)
  })

  it('the daemon killed under a reader: the read fails within the deadline, nothing hangs; a restart mounts there again', { skip: mode !== 'erofs-lazy' && 'the per-file FUSE mount ends with its daemon (see the SIGKILL test)' }, async () => {
    // a long deadline: what ends the read below is the kill, not the fetcher giving up
    const d = await daemon('sigkill', { fetch: { deadlineMs: 60_000, timeoutMs: 60_000 } })
    const mnt = work_('mnt-sigkill')
    await mountCli(d, mnt)
    assert.equal(await readFile(join(mnt, 'etc/hostname'), 'utf8'), 'changed\n')
    proxy.mode = 'stall'
    let settled = false
    const outcome = readFile(join(mnt, 'opt/model/part4.bin')).then(() => 'read', (err: NodeJS.ErrnoException) => err.code)
      .finally(() => { settled = true })
    try {
      await new Promise(resolve => setTimeout(resolve, 500))
      assert.equal(settled, false, 'the read waits on the stalled registry')
      const t0 = Date.now()
      await d.kill()
      const code = await outcome
      const took = Date.now() - t0
      assert.ok(code === 'EIO' || code === 'ENOTCONN' || code === 'ECONNABORTED', `the reader got ${code}`)
      assert.ok(took < 5000, `the reader waited ${took} ms after the kill`)
      // the kernel still answers metadata from the bootstrap; data it does not hold fails at once
      assert.ok((await readdir(join(mnt, 'opt/model'))).length === 6)
      await assert.rejects(readFile(join(mnt, 'opt/model/part5.bin')))
    } finally {
      proxy.mode = 'pass'
    }
    const again = await daemon('sigkill')
    assert.equal((await mountCli(again, mnt)).mode, 'erofs-lazy')
    assert.equal((await readFile(join(mnt, 'opt/model/part4.bin'))).length, (4 << 20) + 4000)
    await umountCli(again, mnt)
    assert.equal(await again.stop(), 0, again.log())
    assert.deepEqual(await mountsUnder(work_('sigkill')), [], 'the daemon took its blob files with it')
  })

  it('a stalling registry: the read fails with EIO within its deadline (+20%), not once per kernel retry; the daemon stays healthy', async () => {
    // a second attempt runs past the deadline: only the read's one deadline can end the read in time
    const deadlineMs = 2000
    const d = await daemon('stall', { fetch: { deadlineMs, timeoutMs: 1500, retries: 1 } })
    const mnt = work_('mnt-stall')
    await mountCli(d, mnt)
    assert.equal(await readFile(join(mnt, 'etc/hostname'), 'utf8'), 'changed\n')
    proxy.mode = 'stall'
    try {
      const t0 = Date.now()
      await assert.rejects(readFile(join(mnt, 'opt/model/part3.bin')), { code: 'EIO' })
      const took = Date.now() - t0
      console.log(`# stalled registry: EIO after ${took} ms (deadline ${deadlineMs} ms)`)
      assert.ok(took < deadlineMs * 1.2, `EIO after ${took} ms (deadline ${deadlineMs} ms)`)
      assert.equal((await d.client.daemon()).state, 'RUNNING')
      assert.equal(await readFile(join(mnt, 'etc/hostname'), 'utf8'), 'changed\n', 'cached files still read')
      const m = await d.client.metricsJson()
      assert.ok(m.images[0]!.readErrors >= 1)
    } finally {
      proxy.mode = 'pass'
    }
    // once the registry answers again, so does the file (a second after the stalled chunk's deadline: the
    // kernel's immediate retries failed at once, a later read tries afresh)
    // kernel's immediate retries failed at once, a later read tries afresh once the stalled attempts ended)
    await new Promise(resolve => setTimeout(resolve, 1500))
    assert.equal((await readFile(join(mnt, 'opt/model/part3.bin'))).length, (4 << 20) + 3000)
    assert.equal(await d.stop(), 0)
  })
})
}
