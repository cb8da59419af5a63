/**
 * Peer to peer, end to end: the real `rafspeer scheduler` and several real `rafspeer daemon`s (child processes,
 * libp2p on loopback), the real CNCF distribution registry behind a counting proxy (the witness of registry
 * egress), and a converted image of more than 64 MiB. Every node reads its whole tree through its FUSE mount and
 * must see exactly the source.
 *
 * Covers: N nodes cost the registry about one copy; a second image sharing most chunks gets them from peers; a
 * hostile peer serving wrong bytes is banned and nothing wrong is returned or cached; a serving peer killed
 * mid-transfer; the scheduler down (registry only) and back (P2P again).
 */
import '../polyfill.js'
import assert from 'node:assert/strict'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { after, before, describe, it } from 'node:test'
import { BlobCache } from '../cache/index.js'
import { convertImage } from '../convert/index.js'
import { CHUNK_PROTOCOL, ChunkStatus, chunkFrameReader, readRequest, replyHeader } from '../peer/index.js'
import { announceAddrs, createHost } from '../p2p/index.js'
import { RegistryClient, isIndex } from '../registry/index.js'
import { SchedulerClient } from '../scheduler/index.js'
import { RafsReader } from '../rafs/index.js'
import { cliArgv, mountsUnder, startDaemon, type TestDaemon } from './helpers/daemon.js'
import { distributionSkipReason, startDistribution, type Distribution } from './helpers/distribution.js'
import { addLayer, buildSourceImage, ociToolsSkipReason, pseudoRandom, pushOciImage, umociUnpack, type OciImage } from './helpers/oci-image.js'
import { startRegistryProxy, type RegistryProxy } from './helpers/registry-proxy.js'
import { diffTrees, snapshotTree, type TreeEntry } from './helpers/tree.js'

const run = promisify(execFile)

function skipReason (): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (FUSE)'
  return ociToolsSkipReason() ?? distributionSkipReason()
}
const skip = skipReason()

/** FUSE carries mtimes in milliseconds only */
const FUSE_IGNORE: Array<keyof TreeEntry> = ['mtimeNsec']
const MiB = 1 << 20

interface Scheduler { address: string, listen: string, proc: ChildProcess, stop: () => Promise<void> }

/** The real `rafspeer scheduler` in a child process; `listen` may name port 0 the first time. */
async function startScheduler (dir: string, listen: string): Promise<Scheduler> {
  const proc = spawn(process.execPath, cliArgv(['scheduler', '--listen', listen, '--key-file', join(dir, 'scheduler.key')]), { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  const exited = new Promise<void>(resolve => proc.once('exit', () => resolve()))
  const address = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => { reject(new Error(`scheduler did not start:\n${out}`)) }, 30_000)
    const onData = (b: Buffer): void => {
      out += b.toString()
      const m = /^scheduler: (\S+)$/m.exec(out)
      if (m !== null) { clearTimeout(t); resolve(m[1]!) }
    }
    proc.stdout?.on('data', onData)
    proc.stderr?.on('data', (b: Buffer) => { out += b.toString() })
    proc.once('exit', code => { clearTimeout(t); reject(new Error(`scheduler exited with ${code}:\n${out}`)) })
  })
  return {
    address,
    listen: address.replace(/\/p2p\/.*$/, ''),
    proc,
    stop: async () => { if (proc.exitCode === null) proc.kill('SIGTERM'); await exited }
  }
}

describe('P2P: a scheduler and several daemons on loopback, the real distribution registry', { skip }, () => {
  let work: string
  let dist: Distribution
  let proxy: RegistryProxy
  let image: OciImage
  let reference1: Map<string, TreeEntry>
  let reference2: Map<string, TreeEntry>
  let REF1: string
  let REF2: string
  let blobBytes1 = 0
  let newBlobBytes2 = 0
  let sched: Scheduler
  const daemons: TestDaemon[] = []
  let seq = 0

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'rafspeer-p2p-'))
    image = await buildSourceImage(join(work, 'source'))
    await addLayer(image, join(work, 'source'), async r => {
      await mkdir(join(r, 'opt/model'), { recursive: true })
      for (let i = 0; i < 17; i++) await writeFile(join(r, `opt/model/part${i}.bin`), pseudoRandom(4 * MiB + i * 4099, 300 + i))
      await mkdir(join(r, 'usr/share/doc'), { recursive: true })
      for (let i = 0; i < 300; i++) await writeFile(join(r, `usr/share/doc/f${i}.txt`), `doc ${i}\n`.repeat(1 + (i % 40)))
    })
    reference1 = await snapshotTree(await umociUnpack(image, join(work, 'reference1')), { content: true })
    dist = await startDistribution()
    await pushOciImage(image, `${dist.host}/app:oci`)
    await convertImage(`${dist.host}/app:oci`, `${dist.host}/app:rafs`, { workDir: join(work, 'convert1') })
    // the second image: one more small layer over the first (most chunks shared)
    await addLayer(image, join(work, 'source'), async r => {
      await writeFile(join(r, 'etc/release'), 'v2\n')
      await writeFile(join(r, 'opt/model/extra.bin'), pseudoRandom(MiB + 17, 999))
    })
    reference2 = await snapshotTree(await umociUnpack(image, join(work, 'reference2')), { content: true })
    await pushOciImage(image, `${dist.host}/app2:oci`)
    await convertImage(`${dist.host}/app2:oci`, `${dist.host}/app2:rafs`, { workDir: join(work, 'convert2') })
    const client = new RegistryClient()
    const m1 = await client.getManifest(`${dist.host}/app:rafs`)
    const m2 = await client.getManifest(`${dist.host}/app2:rafs`)
    assert.ok(!isIndex(m1.json) && !isIndex(m2.json))
    const blobs1 = m1.json.layers.slice(0, -1)
    blobBytes1 = blobs1.reduce((n, l) => n + l.size, 0)
    const known = new Set(blobs1.map(l => l.digest))
    newBlobBytes2 = m2.json.layers.slice(0, -1).filter(l => !known.has(l.digest)).reduce((n, l) => n + l.size, 0)
    await client.close()
    assert.ok(blobBytes1 >= 64 * MiB, `the image has ${blobBytes1} blob bytes`)
    proxy = await startRegistryProxy(dist.host)
    REF1 = `${proxy.host}/app:rafs`
    REF2 = `${proxy.host}/app2:rafs`
    sched = await startScheduler(work, '/ip4/127.0.0.1/tcp/0')
  })

  after(async () => {
    for (const d of daemons) await d.kill().catch(() => {})
    await sched?.stop()
    if (work !== undefined) {
      for (const mp of await mountsUnder(work)) await run('umount', ['-l', mp]).catch(() => {})
    }
    await proxy?.close()
    await dist?.stop()
    if (work !== undefined) await rm(work, { recursive: true, force: true })
  })

  async function node (p2p: Record<string, unknown> = {}): Promise<TestDaemon & { name: string, dir: string }> {
    const name = `node${++seq}`
    const dir = join(work, name)
    await mkdir(dir, { recursive: true })
    const d = await startDaemon(dir, {
      log: { level: 'debug', format: 'text' },
      prefetch: { policy: 'none' },
      p2p: { listen: ['/ip4/127.0.0.1/tcp/0'], ...p2p },
      scheduler: { address: sched.address, heartbeatMs: 500 }
    })
    daemons.push(d)
    return Object.assign(d, { name, dir })
  }

  /** Mounts `ref` on `d` and reads the whole tree through FUSE; returns the node's bytes by source for it. */
  async function readAll (d: TestDaemon & { name: string }, ref: string, reference: Map<string, TreeEntry>): Promise<{ registry: number, peer: number, cache: number }> {
    const mnt = join(work, `mnt-${d.name}-${ref.includes('app2') ? 2 : 1}`)
    const t0 = performance.now()
    await d.client.mount({ source: ref, mountpoint: mnt, mode: 'fuse' })
    const t1 = performance.now()
    const tree = await snapshotTree(mnt, { content: true })
    if (process.env.RAFSPEER_TEST_TIMING !== undefined) {
      const m = await d.client.metricsJson()
      console.error(`${d.name}: mount ${(t1 - t0).toFixed(0)} ms, read ${(performance.now() - t1).toFixed(0)} ms`, JSON.stringify({ lat: m.fetchLatencyMs, img: m.images[0], p2p: m.p2p }))
    }
    const diffs = diffTrees(reference, tree, { ignore: FUSE_IGNORE })
    assert.deepEqual(diffs.slice(0, 20), [], `${d.name}: ${diffs.length} differences\n${d.log().slice(-4000)}`)
    const img = (await d.client.metricsJson()).images.find(i => i.mountpoint === mnt)!
    return img.bytesBySource
  }

  it('node 1 reads everything from the registry, nodes 2–4 from peers: registry bytes ≤ 1.1x the blobs', async () => {
    proxy.reset()
    const nodes = [await node(), await node(), await node(), await node()]
    const first = await readAll(nodes[0]!, REF1, reference1)
    assert.ok(first.registry > 0)
    const rest = []
    for (const n of nodes.slice(1)) rest.push(await readAll(n, REF1, reference1))
    const ratio = proxy.blobBytes / blobBytes1
    assert.ok(ratio <= 1.1, `registry sent ${proxy.blobBytes} bytes for ${blobBytes1} blob bytes (${ratio.toFixed(3)}x)`)
    for (const r of rest) assert.ok(r.peer >= 0.9 * (r.peer + r.registry), `mostly from peers: ${JSON.stringify(r)}`)
    const info = await nodes[0]!.client.daemon()
    assert.ok(info.p2p !== undefined && info.p2p.addrs.length > 0)
    const m = await nodes[0]!.client.metricsJson()
    assert.ok((m.p2p?.upload.bytesServed ?? 0) > 0, 'node 1 served its neighbours')
    assert.equal(m.p2p?.scheduler.connected, true)
    assert.match(await nodes[0]!.client.prometheus(), /rafspeer_p2p_upload_bytes_total [1-9]/)
    // a reader's requests to its neighbours share streams kept open between them
    const reader = (await nodes[1]!.client.metricsJson()).p2p!.download
    assert.ok(reader.streams.reused > 0 && reader.streams.opened < reader.requests, `streams: ${JSON.stringify(reader.streams)}, requests ${reader.requests}`)
    const text = await nodes[1]!.client.prometheus()
    assert.match(text, /rafspeer_p2p_download_streams_reused_total [1-9]/)
    // honest holders never keep a request on PENDING past the limit
    assert.equal(reader.pendingOverstays, 0)
    assert.match(text, /rafspeer_p2p_download_pending_overstays_total 0/)
    // two nodes are no crowd: nobody was kept for a turn
    assert.match(text, /rafspeer_p2p_upload_turns_total 0/)
    assert.match(text, /rafspeer_p2p_upload_turns_run_out_total 0/)
  })

  it('a second image sharing most chunks: a fresh node gets the shared chunks from peers, not the registry', async () => {
    proxy.reset()
    const fresh = await node()
    const got = await readAll(fresh, REF2, reference2)
    // the registry sends the new layer's blob (and the bootstrap layer), not the shared ones
    assert.ok(proxy.blobBytes <= newBlobBytes2 + 2 * MiB + 0.05 * blobBytes1,
      `registry sent ${proxy.blobBytes} bytes; the new blob has ${newBlobBytes2}`)
    assert.ok(got.peer >= 0.9 * blobBytes1, `from peers: ${got.peer} of ${blobBytes1}`)
  })

  it('a hostile peer serving wrong bytes is banned; nothing wrong is returned or cached; the reads complete', async () => {
    const liar = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    let asked = 0
    await liar.handle(CHUNK_PROTOCOL, async (stream) => {
      try {
        const names = await readRequest(chunkFrameReader(stream, 'liar', 10_000))
        if (names === undefined) return
        asked += names.length
        for (const n of names) {
          if (!stream.send(Buffer.concat([replyHeader(ChunkStatus.OK, n.size), Buffer.alloc(n.size, 0x5a)]))) await stream.onDrain()
        }
        await stream.close()
      } catch { stream.abort(new Error('liar done')) }
    })
    // it claims every chunk of the image, and looks idle (so it ranks well)
    const boot = await bootstrapDigests()
    const liarClient = new SchedulerClient({ libp2p: liar }, { scheduler: sched.address, selfAddrs: () => announceAddrs(liar), heartbeatMs: 500 })
    await liarClient.start()
    try {
      assert.ok(await liarClient.waitConnected(5000))
      liarClient.announce(boot)
      await new Promise(resolve => setTimeout(resolve, 500))
      // the liar announces chunks: a victim whose scheduler indexes chunks (at blob level a liar would also have to
      // claim them over /rafspeer/have; the neighbour source drops and bans a lying holder either way, its unit test)
      const victim = await node({ banThreshold: 1, directory: 'chunks' })
      await readAll(victim, REF1, reference1)
      assert.ok(asked > 0, 'the liar was asked')
      const m = await victim.client.metricsJson()
      assert.ok((m.p2p?.download.badChunks ?? 0) > 0, 'bad chunks were seen')
      assert.ok((m.p2p?.download.bannedPeers ?? 0) >= 1, 'the liar was banned')
      assert.equal(await victim.stop(), 0)
      // every chunk the victim cached verifies
      const cache = await BlobCache.open(join(victim.dir, 'cache'))
      try {
        const v = await cache.verifyAll()
        assert.equal(v.bad, 0)
        assert.ok(v.checked > 0)
      } finally { await cache.close() }
    } finally {
      await liarClient.stop()
      await liar.stop()
    }
  })

  it('a serving peer killed mid-transfer: the reader completes through the others or the registry', async () => {
    // slow uploaders, so that the transfer is still going when one of them dies
    const slow = [await node({ uploadBytesPerSecond: 16 * MiB }), await node({ uploadBytesPerSecond: 16 * MiB })]
    for (const s of slow) await readAll(s, REF1, reference1)
    const reader = await node()
    const reading = readAll(reader, REF1, reference1)
    await new Promise(resolve => setTimeout(resolve, 700))
    await slow[0]!.kill()
    const got = await reading
    assert.ok(got.peer > 0)
  })

  it('scheduler down: reads complete from the registry; scheduler back: P2P resumes', async () => {
    await sched.stop()
    proxy.reset()
    const alone = await node()
    const fromRegistry = await readAll(alone, REF1, reference1)
    assert.ok(fromRegistry.registry >= 0.9 * blobBytes1, `without a scheduler: ${JSON.stringify(fromRegistry)}`)
    // back on the same address and identity: the daemons reconnect and re-announce what they hold
    sched = await startScheduler(work, sched.listen)
    await waitFor(async () => (await alone.client.metricsJson()).p2p?.scheduler.connected === true, 15_000)
    await new Promise(resolve => setTimeout(resolve, 1000))
    proxy.reset()
    const late = await node()
    const got = await readAll(late, REF1, reference1)
    assert.ok(got.peer >= 0.9 * blobBytes1, `after the scheduler came back: ${JSON.stringify(got)}`)
    assert.ok(proxy.blobBytes < 0.1 * blobBytes1, `registry sent ${proxy.blobBytes}`)
  })

  /** Every chunk digest of image 1, from the bootstrap node 1 keeps in its work directory. */
  async function bootstrapDigests (): Promise<Buffer[]> {
    const dir = join(work, 'node1', 'work', 'bootstraps')
    const boots = (await readdir(dir)).filter(f => f.endsWith('.boot'))
    assert.equal(boots.length, 1)
    const reader = RafsReader.fromBuffer(await readFile(join(dir, boots[0]!)))
    const out = new Map<string, Buffer>()
    for (const e of reader.chunkTableEntries()) out.set(e.info.digest.toString('hex'), e.info.digest)
    return [...out.values()]
  }
})

async function waitFor (cond: () => Promise<boolean>, ms: number): Promise<void> {
  const deadline = Date.now() + ms
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms`)
    await new Promise(resolve => setTimeout(resolve, 200))
  }
}
