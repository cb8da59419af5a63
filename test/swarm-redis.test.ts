/**
 * Stateless schedulers in front of Redis, end to end: a real Redis Cluster (3 masters, a replica each), two real
 * `rafspeer scheduler --redis` processes over it, real `rafspeer daemon`s in blob-level mode (`p2p.directory:
 * blobs`) that know both schedulers, reading images lazily through FUSE from the embedded registry (its egress
 * capped, so a cold read lasts long enough to break things under it). Every byte read is checked against the source.
 *
 * - A Redis master is SIGKILLed while a daemon reads: the read completes with the right bytes, and once a replica
 *   took over, a later node finds the reader through the directory (bytes from peers).
 * - The scheduler a daemon uses is SIGKILLed mid-read: the read completes, the daemon moves to the other scheduler
 *   and announces again, a new node finds it through that one; the killed scheduler restarted (same key, same
 *   address) answers with what Redis kept.
 */
import '../polyfill.js'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { after, before, describe, it } from 'node:test'
import { publishDirectory } from '../convert/index.js'
import { announceAddrs, createHost, type Host } from '../p2p/index.js'
import { RegistryClient, startRegistryServer, type RegistryServer } from '../registry/index.js'
import { SchedulerClient } from '../scheduler/index.js'
import { contentMap, diffContent, generateTree, type ContentMap } from '../sim/source-tree.js'
import { mountsUnder, startDaemon, type TestDaemon } from './helpers/daemon.js'
import { redisClusterSkipReason, startRedisCluster, type RedisCluster } from './helpers/redis-cluster.js'
import { startSchedulerProcess, type SchedulerProcess } from './helpers/scheduler-process.js'

const MiB = 1 << 20
/** each image's file bytes, and the registry's egress: a cold read takes about two seconds */
const IMAGE_BYTES = 12 * MiB
const REGISTRY_BPS = 6 * MiB

function skipReason (): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (FUSE mounts)'
  return redisClusterSkipReason()
}
const skip = skipReason()
if (skip !== undefined) process.stderr.write(`swarm-redis: skipped: ${skip}\n`)

const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

/** Polls `check` until it holds (its failures count as "not yet"), or throws `what` after `ms`. */
async function until (what: string, check: () => Promise<boolean>, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await check().catch(() => false)) return
    await sleep(100)
  }
  throw new Error(`${what}: not within ${ms} ms`)
}

const fromSources = import.meta.url.endsWith('.ts')
const READER = fileURLToPath(new URL(fromSources ? '../sim/reader.ts' : '../sim/reader.js', import.meta.url))

/**
 * Reads the whole tree in a child process: a FUSE read from this process would hold one of libuv's few threads
 * while the daemon waits for the embedded registry, which lives here too (see sim/reader.ts).
 */
async function readTree (root: string): Promise<ContentMap> {
  const proc = spawn(process.execPath, fromSources ? ['--import', 'tsx', READER, root] : [READER, root], { stdio: ['ignore', 'pipe', 'pipe'] })
  const out: Buffer[] = []
  let err = ''
  proc.stdout?.on('data', (b: Buffer) => { out.push(b) })
  proc.stderr?.on('data', (b: Buffer) => { err = (err + b.toString()).slice(-4000) })
  const code = await new Promise<number | null>((resolve, reject) => { proc.once('error', reject); proc.once('close', resolve) })
  if (code !== 0) throw new Error(`reading ${root} failed (exit ${code}): ${err.trim()}`)
  return new Map(JSON.parse(Buffer.concat(out).toString('utf8')) as Array<[string, string]>)
}

interface Image { ref: string, blobIds: string[], expected: ContentMap }

describe('schedulers over Redis: a master and a scheduler killed under reading daemons', { skip: skip ?? false }, () => {
  let work: string
  let cluster: RedisCluster | undefined
  let registry: RegistryServer | undefined
  const schedulers: SchedulerProcess[] = []
  const daemons: Array<{ d: TestDaemon, mnt: string }> = []
  const hosts: Host[] = []
  const clients: SchedulerClient[] = []
  let s1: SchedulerProcess
  let s2: SchedulerProcess
  let image1: Image
  let image2: Image
  let seq = 0

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'rafspeer-swarm-redis-'))
    registry = await startRegistryServer({ root: join(work, 'registry'), bandwidthLimit: REGISTRY_BPS })
    const client = new RegistryClient({ plainHttp: true })
    const publish = async (name: string): Promise<Image> => {
      const source = join(work, `${name}-source`)
      await generateTree(source, IMAGE_BYTES)
      const ref = `${registry!.host}/swarm/${name}:latest`
      const published = await publishDirectory(source, ref, { client, workDir: join(work, `${name}-publish`) })
      return { ref, blobIds: published.blobs.map(b => b.blobId), expected: await contentMap(source) }
    }
    // the cluster forms (mostly waiting) while the images are built
    const forming = startRedisCluster({ masters: 3, replicas: 1, nodeTimeoutMs: 2000 })
    forming.catch(() => {})
    try {
      image1 = await publish('one')
      image2 = await publish('two')
    } finally {
      cluster = await forming
      await client.close()
    }
    s1 = await startSchedulerProcess({ keyFile: join(work, 's1.key'), redis: cluster.seeds })
    s2 = await startSchedulerProcess({ keyFile: join(work, 's2.key'), redis: cluster.seeds })
    schedulers.push(s1, s2)
  })

  after(async () => {
    for (const { d, mnt } of daemons) await d.client.unmount(mnt).catch(() => {})
    await Promise.all(daemons.map(async ({ d }) => { await d.stop() }))
    for (const c of clients) await c.stop().catch(() => {})
    for (const h of hosts) await Promise.resolve(h.stop()).catch(() => {})
    await Promise.all(schedulers.map(async s => { await s.stop() }))
    await cluster?.stop()
    await registry?.stop().catch(() => {})
    if (work !== undefined) {
      assert.deepEqual(await mountsUnder(work), [], 'no mount left behind')
      await rm(work, { recursive: true, force: true })
    }
  })

  /** A daemon in blob-level mode knowing `addresses`, with `image` mounted (FUSE, nothing prefetched). */
  async function daemon (addresses: string[], image: Image): Promise<{ d: TestDaemon, mnt: string }> {
    const dir = join(work, `node${++seq}`)
    const mnt = join(dir, 'mnt')
    await mkdir(mnt, { recursive: true })
    const d = await startDaemon(dir, {
      log: { level: 'info', format: 'text' },
      p2p: { listen: ['/ip4/127.0.0.1/tcp/0'], directory: 'blobs' },
      scheduler: { address: addresses, heartbeatMs: 500 },
      prefetch: { policy: 'none' }
    })
    const n = { d, mnt }
    daemons.push(n)
    await d.client.mount({ source: image.ref, mountpoint: mnt, mode: 'fuse', prefetch: 'none' })
    return n
  }

  const schedulerOf = async (d: TestDaemon): Promise<{ address?: string, connected: boolean } | undefined> => (await d.client.metricsJson()).p2p?.scheduler
  const bytesOf = async (n: { d: TestDaemon, mnt: string }): Promise<{ peer: number, registry: number, read: number }> => {
    const img = (await n.d.client.metricsJson()).images.find(i => i.mountpoint === n.mnt)
    return { peer: img?.bytesBySource.peer ?? 0, registry: img?.bytesBySource.registry ?? 0, read: img?.readBytes ?? 0 }
  }
  const assertSame = (image: Image, got: ContentMap, who: string): void => {
    assert.deepEqual(diffContent(image.expected, got), [], `${who} read exactly the published tree`)
  }

  it('a Redis master SIGKILLed while a daemon reads: every read completes, and later nodes find it after the failover', async (t) => {
    const c = cluster!
    const a = await daemon([s1.address, s2.address], image1)
    await until('daemon A connected to a scheduler', async () => (await schedulerOf(a.d))?.connected === true)
    const reading = readTree(a.mnt)
    await until('A started reading', async () => (await bytesOf(a)).read > 0)
    const victim = c.masters()[0]!
    await c.kill(victim, 'SIGKILL')
    const killedAt = Date.now()
    assertSame(image1, await reading, 'A (Redis master killed mid-read)')
    await until('a replica took over the killed master\'s slots', async () => {
      const roles = await c.roles()
      return !roles.masters.includes(victim.port) && roles.masters.length === 3
    }, 45_000)
    t.diagnostic(`failover done ${((Date.now() - killedAt) / 1000).toFixed(1)} s after the SIGKILL; A got ${JSON.stringify(await bytesOf(a))}`)

    // a later node, through the other scheduler first, finds A through the directory and reads from it
    const b = await daemon([s2.address, s1.address], image1)
    assertSame(image1, await readTree(b.mnt), 'B')
    const got = await bytesOf(b)
    t.diagnostic(`B after the failover: ${JSON.stringify(got)}`)
    assert.ok(got.peer > 0, `B found A through the directory after the failover: ${JSON.stringify(got)}\n${b.d.log().slice(-3000)}`)
    // the schedulers count the blob's swarm on Redis (SCARD) and tell it with the group: A and B at least
    const swarm = (await b.d.client.metricsJson()).p2p?.largestSwarm ?? 0
    assert.ok(swarm >= 2, `B was told a swarm of ${swarm}`)
    assert.match(await b.d.client.prometheus(), /rafspeer_swarm_largest_peers [2-9]/)
  })

  it('the scheduler a daemon uses SIGKILLed mid-read: reads go on, it moves to the other, which finds it; restarted, the first serves again', async (t) => {
    const c = await daemon([s1.address, s2.address], image2)
    await until('daemon C connected to the first scheduler', async () => {
      const s = await schedulerOf(c.d)
      return s?.connected === true && s.address === s1.address
    })
    const reading = readTree(c.mnt)
    await until('C started reading', async () => (await bytesOf(c)).read > 0)
    await s1.kill('SIGKILL')
    assertSame(image2, await reading, 'C (its scheduler killed mid-read)')
    await until('C moved to the second scheduler', async () => {
      const s = await schedulerOf(c.d)
      return s?.connected === true && s.address === s2.address
    })
    t.diagnostic(`C: ${JSON.stringify(await bytesOf(c))}`)

    // a new node knowing only the second scheduler finds C there
    const d = await daemon([s2.address], image2)
    assertSame(image2, await readTree(d.mnt), 'D')
    const got = await bytesOf(d)
    t.diagnostic(`D through the second scheduler: ${JSON.stringify(got)}`)
    assert.ok(got.peer > 0, `D found C through the second scheduler: ${JSON.stringify(got)}\n${d.d.log().slice(-3000)}`)

    // the first scheduler again, same key and address: it keeps no state, Redis does
    const again = await startSchedulerProcess({ keyFile: join(work, 's1.key'), listen: s1.listen, redis: cluster!.seeds })
    schedulers.push(again)
    assert.equal(again.address, s1.address)
    const host = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    hosts.push(host)
    const asker = new SchedulerClient({ libp2p: host }, { scheduler: again.address, selfAddrs: () => announceAddrs(host), resolveTimeoutMs: 2000 })
    clients.push(asker)
    await asker.start()
    assert.equal(await asker.waitConnected(10_000), true)
    const blob = Buffer.from(image2.blobIds[0]!, 'hex')
    const cId = (await c.d.client.daemon()).p2p!.peerId
    const dId = (await d.d.client.daemon()).p2p!.peerId
    await until('the restarted scheduler answers with the holders Redis kept', async () => {
      const holders = ((await asker.resolve([blob])).get(blob.toString('hex')) ?? []).map(h => h.peerId)
      return holders.includes(cId) && holders.includes(dId)
    }, 10_000)
  })
})
