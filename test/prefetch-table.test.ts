/**
 * The prefetch loop Nydus users run, end to end with the real CLI and daemon against the embedded registry: a
 * two-layer OCI image is converted with `rafspeer convert --prefetch-files` (the table lands in the merged bootstrap,
 * resolved against the merged tree, in list order; a path not in the image is a warning, a relative one an error,
 * `-` reads stdin); then, per mode (erofs-lazy and fuse), a first daemon records a run (`rafspeer access-list`
 * returns the files read, in order), the image is re-converted with that list, and a second daemon's mount fetches
 * exactly the listed files' chunks before anything reads them (cache presence, prefetch metrics) — in FUSE mode
 * reading them then costs the registry nothing, while a file off the list still does.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { extractBootstrap } from '../image/index.js'
import { erofsLazyUnavailable, type MountInfo } from '../peer/index.js'
import { RafsReader } from '../rafs/index.js'
import { RegistryClient, isIndex, startRegistryServer, type RegistryServer } from '../registry/index.js'
import { runCli } from './helpers/cli.js'
import { mountsUnder, startDaemon, type TestDaemon } from './helpers/daemon.js'

const exec = promisify(execFile)
const KiB = 1024
const MiB = 1024 * KiB
const skip = process.getuid?.() !== 0 ? 'needs root (FUSE, EROFS mounts)' : undefined

let work: string
let reg: RegistryServer
let host: string
/** what the image holds, path → bytes (the upper layer's version where it replaced one) */
const files = new Map<string, Buffer>()
const daemons: TestDaemon[] = []

const sha256 = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`

/** `tree` as a gzip layer blob: [blob, diffId] */
async function layerOf (tree: string): Promise<{ blob: Buffer, diffId: string }> {
  const out = join(work, `${Math.random().toString(36).slice(2)}.tar`)
  await exec('tar', ['-C', tree, '--numeric-owner', '--owner=0', '--group=0', '--sort=name', '-cf', out, '.'])
  const tar = await readFile(out)
  await exec('gzip', ['-1', out])
  return { blob: await readFile(`${out}.gz`), diffId: sha256(tar) }
}

async function pushOci (ref: string): Promise<void> {
  const lower = join(work, 'lower')
  const upper = join(work, 'upper')
  await mkdir(join(lower, 'app'), { recursive: true })
  await mkdir(join(upper, 'app'), { recursive: true })
  for (let i = 0; i < 60; i++) {
    const p = `/app/mod-${String(i).padStart(2, '0')}.py`
    const b = randomBytes(20 * KiB + i * 512)
    files.set(p, b)
    await writeFile(join(lower, p), b)
  }
  files.set('/app/model.bin', randomBytes(6 * MiB))
  await writeFile(join(lower, 'app/model.bin'), files.get('/app/model.bin')!)
  // the upper layer replaces one module and adds one
  for (const p of ['/app/mod-05.py', '/app/extra.py']) {
    const b = randomBytes(30 * KiB)
    files.set(p, b)
    await writeFile(join(upper, p), b)
  }
  const layers = [await layerOf(lower), await layerOf(upper)]
  const config = Buffer.from(JSON.stringify({
    architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: layers.map(l => l.diffId) }
  }))
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
    layers: layers.map(l => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha256(l.blob), size: l.blob.length }))
  }))
  const client = new RegistryClient({ plainHttp: true })
  try {
    const repo = ref.slice(0, ref.lastIndexOf(':'))
    for (const b of [...layers.map(l => l.blob), config]) {
      const path = join(work, 'push.blob')
      await writeFile(path, b)
      await client.pushBlob(repo, sha256(b), b.length, path)
    }
    await client.putManifest(ref, 'application/vnd.oci.image.manifest.v1+json', manifest)
  } finally {
    await client.close()
  }
}

/** The converted image's bootstrap, read from the registry. */
async function bootstrapOf (ref: string, name: string): Promise<RafsReader> {
  const client = new RegistryClient({ plainHttp: true })
  try {
    const m = await client.getManifest(ref)
    assert.ok(!isIndex(m.json))
    const repo = ref.slice(0, ref.lastIndexOf(':'))
    const out = join(work, `${name}.boot`)
    await extractBootstrap(await client.getBlob(repo, m.json.layers.at(-1)!.digest), out, { gzip: true })
    return await RafsReader.open(out)
  } finally {
    await client.close()
  }
}

/** Distinct chunks of `paths` in `reader`. */
function chunksOf (reader: RafsReader, paths: string[]): number {
  const keys = new Set<string>()
  for (const p of paths) {
    const nid = reader.lookup(p)
    for (const piece of reader.mapRange(nid, 0, reader.inode(nid).size)) keys.add(`${piece.chunk.blobIndex}/${piece.chunk.index}`)
  }
  return keys.size
}

async function daemon (name: string): Promise<TestDaemon> {
  const dir = join(work, name)
  await mkdir(dir, { recursive: true })
  // the daemon's default prefetch policy: the image's table
  const d = await startDaemon(dir, { log: { level: 'debug', format: 'text' } })
  daemons.push(d)
  return d
}

async function convert (target: string, ...extra: string[]): Promise<{ code: number, stdout: string, stderr: string }> {
  return await runCli(['convert', `${host}/app:oci`, `${host}/app:${target}`, '--work-dir', join(work, 'convert'), ...extra], { timeoutMs: 300_000 })
}

async function settled (d: TestDaemon, mnt: string): Promise<MountInfo> {
  for (let i = 0; ; i++) {
    const m = (await d.client.mounts()).find(x => x.mountpoint === mnt)!
    if (m.prefetch.state !== 'running' && m.prefetch.state !== 'none') return m
    assert.ok(i < 300, `prefetch did not finish in 30 s: ${JSON.stringify(m.prefetch)}`)
    await new Promise(resolve => setTimeout(resolve, 100))
  }
}

before(async () => {
  if (skip !== undefined) return
  work = await mkdtemp(join(tmpdir(), 'rafspeer-prefetch-table-'))
  reg = await startRegistryServer({ root: join(work, 'registry') })
  host = reg.host
  await pushOci(`${host}/app:oci`)
})

after(async () => {
  for (const d of daemons) await d.stop().catch(() => {})
  if (work !== undefined) {
    for (const mp of (await mountsUnder(work)).reverse()) await exec('umount', ['-l', mp]).catch(() => {})
  }
  await reg?.stop()
  if (work !== undefined) await rm(work, { recursive: true, force: true })
})

describe('rafspeer convert --prefetch-files', { skip }, () => {
  it('writes the merged bootstrap\'s table in list order, warns about paths not in the image, refuses relative ones', async () => {
    const list = join(work, 'list.txt')
    await writeFile(list, '# hot first\n/app/mod-30.py\n/app/mod-05.py\n/app/nope.py\n/app/extra.py\n/app/mod-30.py\n')
    const res = await convert('listed', '--prefetch-files', list, '--json')
    assert.equal(res.code, 0, res.stderr)
    assert.match(res.stderr, /warning: prefetch path \/app\/nope\.py is not in the image: skipped/)
    const report = JSON.parse(res.stdout) as { prefetch: { listed: number, entries: number, missing: string[] } }
    assert.deepEqual(report.prefetch, { listed: 5, entries: 3, missing: ['/app/nope.py'] })
    const reader = await bootstrapOf(`${host}/app:listed`, 'listed')
    // /app/mod-05.py and /app/extra.py come from the upper layer: the table names the files the container sees
    assert.deepEqual(reader.prefetchNids, ['/app/mod-30.py', '/app/mod-05.py', '/app/extra.py'].map(p => reader.lookup(p)))

    const fromStdin = await runCli(['convert', `${host}/app:oci`, `${host}/app:stdin`, '--work-dir', join(work, 'convert'), '--prefetch-files', '-'],
      { input: '/app/extra.py\n', timeoutMs: 300_000 })
    assert.equal(fromStdin.code, 0, fromStdin.stderr)
    assert.match(fromStdin.stdout, /prefetch table 1 entries/)

    await writeFile(list, '/app/mod-01.py\napp/mod-02.py\n')
    const bad = await convert('bad', '--prefetch-files', list)
    assert.notEqual(bad.code, 0)
    assert.match(bad.stderr, /prefetch path "app\/mod-02\.py" is not absolute.*\[RAFSPEER_ERR_PREFETCH_LIST\]/)
    const missing = await convert('bad', '--prefetch-files', join(work, 'no-such-list'))
    assert.notEqual(missing.code, 0)
    assert.match(missing.stderr, /prefetch list .*no-such-list/)
    const client = new RegistryClient({ plainHttp: true })
    await assert.rejects(client.getManifest(`${host}/app:bad`), 'nothing pushed for a bad list')
    await client.close()
  })
})

const modes = [
  { mode: 'erofs-lazy' as const, skip: skip ?? await erofsLazyUnavailable() },
  { mode: 'fuse' as const, skip }
]
for (const { mode, skip: modeSkip } of modes) {
  describe(`record, re-convert, prefetch (${mode})`, { skip: modeSkip }, () => {
    it('access-list returns the files read in order; the re-converted image\'s mount fetches them before any read', async () => {
      // a first start on one node: nothing prefetched, the run recorded
      const first = await daemon(`${mode}-first`)
      const mnt1 = join(work, `${mode}-mnt1`)
      const plain = await convert(`plain-${mode}`)
      assert.equal(plain.code, 0, plain.stderr)
      const mounted = await runCli(['mount', `${host}/app:plain-${mode}`, mnt1, '--socket', first.socket, '--mode', mode, '--prefetch', 'none'])
      assert.equal(mounted.code, 0, `${mounted.stderr}\n${first.log()}`)
      const order = ['/app/mod-44.py', '/app/mod-03.py', '/app/mod-05.py', '/app/extra.py']
      for (const p of order) assert.ok((await readFile(join(mnt1, p))).equals(files.get(p)!), p)
      const listFile = join(work, `${mode}-hot.txt`)
      const listed = await runCli(['access-list', mnt1, '--socket', first.socket, '-o', listFile])
      assert.equal(listed.code, 0, listed.stderr)
      const recorded = (await readFile(listFile, 'utf8')).split('\n').filter(l => l !== '')
      if (mode === 'fuse') assert.deepEqual(recorded, order)
      else {
        // blob ranges: the kernel's readahead may add a read file's next neighbours, after it
        const at = order.map(p => recorded.indexOf(p))
        assert.ok(at.every((p, i) => p >= 0 && (i === 0 || p > at[i - 1]!)), recorded.join(' '))
        assert.ok(recorded.length < 20 && !recorded.includes('/app/model.bin'), recorded.join(' '))
      }
      const json = await runCli(['access-list', mnt1, '--socket', first.socket, '--json'])
      assert.equal(json.code, 0, json.stderr)
      assert.deepEqual((JSON.parse(json.stdout) as { files: string[], tracked: boolean, mode: string }),
        { mountpoint: mnt1, source: `${host}/app:plain-${mode}`, mode, tracked: true, files: recorded })
      const unknown = await runCli(['access-list', join(work, 'not-a-mount'), '--socket', first.socket])
      assert.notEqual(unknown.code, 0)
      assert.match(unknown.stderr, /RAFSPEER_ERR_NOT_MOUNTED/)
      assert.equal((await runCli(['umount', mnt1, '--socket', first.socket])).code, 0)

      // the list back into the image
      const hot = await convert(`hot-${mode}`, '--prefetch-files', listFile)
      assert.equal(hot.code, 0, hot.stderr)
      const reader = await bootstrapOf(`${host}/app:hot-${mode}`, `hot-${mode}`)
      assert.equal(reader.prefetchNids.length, recorded.length)
      const tableChunks = chunksOf(reader, recorded)

      // a cold start on another node: the table is prefetched by default, before anything reads
      const second = await daemon(`${mode}-second`)
      const mnt2 = join(work, `${mode}-mnt2`)
      const res = await runCli(['mount', `${host}/app:hot-${mode}`, mnt2, '--socket', second.socket, '--mode', mode])
      assert.equal(res.code, 0, res.stderr)
      const info = await settled(second, mnt2)
      assert.equal(info.prefetch.state, 'done', info.prefetch.error)
      assert.equal(info.prefetch.chunksTotal, tableChunks)
      assert.equal(info.prefetch.chunksDone, tableChunks)
      assert.equal(info.prefetch.bytesDone, info.prefetch.bytesTotal)
      const present = info.blobs.reduce((n, b) => n + b.chunksPresent, 0)
      const referenced = info.blobs.reduce((n, b) => n + b.chunksReferenced, 0)
      // the listed files' chunks, and small gaps between them (one request for neighbours), never model.bin's 6
      assert.ok(present >= tableChunks && present <= referenced - 6, `${present} chunks present, ${tableChunks} listed, ${referenced} in the image`)
      const img = (await second.client.metricsJson()).images.find(i => i.mountpoint === mnt2)!
      assert.equal(img.readCount, 0, 'nothing read them')
      const listedBytes = recorded.reduce((n, p) => n + files.get(p)!.length, 0)
      assert.ok(img.prefetchFetchedBytes >= listedBytes, `${img.prefetchFetchedBytes} prefetch bytes for ${listedBytes} listed`)
      assert.ok(img.bytesBySource.registry >= listedBytes)

      let blobFsBefore: { requests: number } | undefined
      if (mode === 'erofs-lazy') {
        // the listed files' chunks go on into the page cache of the blob files (in the background, just after)
        for (let i = 0; ; i++) {
          const k = (await second.client.metricsJson()).lazyKernel!
          if (k.pushBytes >= listedBytes) { blobFsBefore = k; break }
          assert.ok(i < 100, `pushed ${k.pushBytes} bytes of ${listedBytes} listed in 10 s`)
          await new Promise(resolve => setTimeout(resolve, 100))
        }
      }
      const before = reg.counters.bytesServed()
      for (const p of order) assert.ok((await readFile(join(mnt2, p))).equals(files.get(p)!), p)
      // with erofs-lazy, not even the kernel's readahead of the blob files reaches past them to the registry
      assert.equal(reg.counters.bytesServed() - before, 0, 'the listed files cost the registry nothing')
      if (blobFsBefore !== undefined) {
        assert.equal((await second.client.metricsJson()).lazyKernel!.requests, blobFsBefore.requests, 'the listed files read without a FUSE request')
      }
      const beforeModel = reg.counters.bytesServed()
      assert.equal((await stat(join(mnt2, 'app/model.bin'))).size, 6 * MiB)
      assert.ok((await readFile(join(mnt2, 'app/model.bin'))).equals(files.get('/app/model.bin')!))
      assert.ok(reg.counters.bytesServed() - beforeModel >= 6 * MiB, 'a file off the list still comes from the registry')
      assert.equal((await runCli(['umount', mnt2, '--socket', second.socket])).code, 0)
      assert.deepEqual([...await mountsUnder(mnt1), ...await mountsUnder(mnt2)], [])
    })
  })
}
