/**
 * Swarm directory benchmark: the in-memory directory against the Redis Cluster one on this machine, with the same
 * swarm — 10 000 peers each announcing 50 blobs drawn from 10 000 (about 50 holders per blob, so ~500 000
 * (blob, holder) records, none dropped by the per-blob bound) — then lookups of random blobs by random peers, `max`
 * 4. Prints announces/s and lookups/s (64 calls in flight), lookup latency one at a time, and memory per record:
 * V8 heap growth after gc for the memory directory, `INFO memory` used_memory growth summed over the masters for
 * Redis. The Redis Cluster (3 masters, no replicas) runs on this machine, sharing its cores with the benchmark.
 *
 * Run alone: `node --expose-gc dist/bench/directory.js` (Redis is skipped, with the reason, when redis-server is
 * not installed).
 */
import '../polyfill.js'
import { pathToFileURL } from 'node:url'
import { mulberry32 } from '../base/index.js'
import { createDirectory, MemoryDirectory, type RedisDirectory, type SwarmDirectory } from '../scheduler/index.js'
import { redisClusterSkipReason, startRedisCluster, type RedisCluster } from '../test/helpers/redis-cluster.js'
import { findGc, heapAfterGc, percentile } from './scheduler.js'

export interface DirectoryBenchOptions {
  /** default 10 000 */
  peers?: number
  /** blobs each peer announces (default 50) */
  blobsPerPeer?: number
  /** distinct blobs the announces draw from (default 10 000) */
  blobPool?: number
  /** seconds of each lookup measurement (default 3) */
  seconds?: number
  /** calls in flight (default 64) */
  concurrency?: number
  /** Redis Cluster masters (default 3) */
  masters?: number
}

export interface DirectoryRun {
  kind: 'memory' | 'redis'
  peers: number
  blobs: number
  entries: number
  announceMs: number
  announcesPerSec: number
  entriesPerSec: number
  lookupsPerSec: number
  /** holders per answer, on average */
  meanAnswer: number
  /** one lookup at a time */
  lookupP50Ms: number
  lookupP99Ms: number
  memoryBytes: number
  bytesPerEntry: number
}

export interface DirectoryBenchResult {
  gc: ReturnType<typeof findGc>['how']
  concurrency: number
  memory: DirectoryRun
  redis?: DirectoryRun & { masters: number }
  redisSkipped?: string
}

// mulberry32 (base/): a deterministic generator, so both directories get the very same swarm

const B58 = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz'
/** Strings are made at each call, as a decoded message would hand them over: the directory is their only keeper. */
const peerIdOf = (i: number): string => {
  let s = '12D3KooW'
  // four base58 digits of the index keep ids distinct; the rest only gives them a real id's length
  let x = i
  for (let k = 0; k < 4; k++) { s += B58[x % 58]; x = Math.floor(x / 58) }
  let h = Math.imul(i + 1, 2654435761) >>> 0
  for (let k = 0; k < 40; k++) { h = Math.imul(h ^ (h >>> 13), 1597334677) >>> 0; s += B58[h % 58] }
  return s
}
const blobIdOf = (n: number): string => (n * 2654435761 >>> 0).toString(16).padStart(8, '0').repeat(8)

interface Swarm { holdings: Uint32Array, blobsPerPeer: number, peers: number, pool: number }

function makeSwarm (peers: number, blobsPerPeer: number, pool: number): Swarm {
  const rnd = mulberry32(13)
  const holdings = new Uint32Array(peers * blobsPerPeer)
  for (let p = 0; p < peers; p++) {
    const mine = new Set<number>()
    while (mine.size < Math.min(blobsPerPeer, pool)) mine.add(Math.floor(rnd() * pool))
    holdings.set([...mine], p * blobsPerPeer)
  }
  return { holdings, blobsPerPeer, peers, pool }
}

const entryOf = (p: number): Parameters<SwarmDirectory['announce']>[0] => ({
  id: peerIdOf(p),
  addrs: [`/ip4/10.${(p >> 16) & 255}.${(p >> 8) & 255}.${p & 255}/tcp/4001`, `/ip6/fd00::${p.toString(16)}/tcp/4001`],
  zone: `eu|fra|rack-${p % 40}`,
  uploadSlots: 8,
  uploadBps: 125e6
})

/** Runs `n` calls with `concurrency` in flight. */
async function inFlight (n: number, concurrency: number, call: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0
  await Promise.all(Array.from({ length: Math.min(n, concurrency) }, async () => {
    while (next < n) await call(next++)
  }))
}

async function measure (dir: SwarmDirectory, swarm: Swarm, opts: Required<Pick<DirectoryBenchOptions, 'seconds' | 'concurrency'>>,
  memory: () => Promise<number>): Promise<DirectoryRun> {
  const before = await memory()
  const t0 = performance.now()
  await inFlight(swarm.peers, opts.concurrency, async (p) => {
    const ids: string[] = []
    for (let i = 0; i < swarm.blobsPerPeer; i++) ids.push(blobIdOf(swarm.holdings[p * swarm.blobsPerPeer + i]))
    const r = await dir.announce(entryOf(p), ids, { ttlMs: 120_000 })
    if (r.refused > 0) throw new Error(`${r.refused} blobs refused`)
  })
  const announceMs = performance.now() - t0
  const memoryBytes = await memory() - before
  const st = await dir.stats()

  const rnd = mulberry32(7)
  const ask = (): Promise<unknown> => dir.lookup(blobIdOf(Math.floor(rnd() * swarm.pool)), { asker: peerIdOf(Math.floor(rnd() * swarm.peers)), max: 4 })
  for (let i = 0; i < 200; i++) await ask() // warm up
  let lookups = 0
  let answered = 0
  const start = performance.now()
  await Promise.all(Array.from({ length: opts.concurrency }, async () => {
    while (performance.now() - start < opts.seconds * 1000) {
      const hs = await ask() as unknown[]
      lookups++
      answered += hs.length
    }
  }))
  const lookupsPerSec = lookups / ((performance.now() - start) / 1000)
  const lat: number[] = []
  const seqStart = performance.now()
  while (performance.now() - seqStart < Math.min(2, opts.seconds) * 1000) {
    const t = performance.now()
    await ask()
    lat.push(performance.now() - t)
  }
  return {
    kind: dir.kind,
    peers: st.peers,
    blobs: st.blobs,
    entries: st.entries,
    announceMs,
    announcesPerSec: swarm.peers / (announceMs / 1000),
    entriesPerSec: st.entries / (announceMs / 1000),
    lookupsPerSec,
    meanAnswer: answered / lookups,
    lookupP50Ms: percentile(lat, 0.5),
    lookupP99Ms: percentile(lat, 0.99),
    memoryBytes,
    bytesPerEntry: memoryBytes / st.entries
  }
}

export async function benchDirectory (opts: DirectoryBenchOptions = {}): Promise<DirectoryBenchResult> {
  const { gc, how } = findGc()
  const peers = opts.peers ?? 10_000
  const swarm = makeSwarm(peers, opts.blobsPerPeer ?? 50, opts.blobPool ?? 10_000)
  const run = { seconds: opts.seconds ?? 3, concurrency: opts.concurrency ?? 64 }

  let memDir: MemoryDirectory | undefined = new MemoryDirectory({}, {})
  const memory = await measure(memDir, swarm, run, async () => heapAfterGc(gc))
  await memDir.close()
  memDir = undefined

  const result: DirectoryBenchResult = { gc: how, concurrency: run.concurrency, memory }
  const skip = redisClusterSkipReason()
  if (skip !== undefined) return { ...result, redisSkipped: skip }
  const masters = opts.masters ?? 3
  let cluster: RedisCluster | undefined
  let dir: RedisDirectory | undefined
  try {
    cluster = await startRedisCluster({ masters })
    dir = await createDirectory({ redis: cluster.seeds, timeoutMs: 10_000 }) as RedisDirectory
    const d = dir
    const redis = await measure(d, swarm, run, async () => await d.memoryUsed())
    return { ...result, redis: { ...redis, masters } }
  } finally {
    await dir?.close()
    await cluster?.stop()
  }
}

const f0 = (n: number): string => Math.round(n).toLocaleString('en-US')

export function formatDirectoryBench (r: DirectoryBenchResult): string {
  const line = (name: string, x: DirectoryRun): string[] => [
    `  ${name}: ${f0(x.peers)} peers × ${f0(x.entries / x.peers)} blobs = ${f0(x.entries)} records over ${f0(x.blobs)} blobs`,
    `    announce: ${f0(x.announcesPerSec)} announces/s (${f0(x.entriesPerSec)} records/s, all in ${(x.announceMs / 1000).toFixed(2)} s)`,
    `    lookup (max 4, ${x.meanAnswer.toFixed(1)} holders answered): ${f0(x.lookupsPerSec)} lookups/s with ${r.concurrency} in flight; ` +
      `one at a time p50 ${x.lookupP50Ms.toFixed(3)} ms, p99 ${x.lookupP99Ms.toFixed(3)} ms`,
    `    memory: ${(x.memoryBytes / 2 ** 20).toFixed(1)} MiB, ${x.bytesPerEntry.toFixed(0)} B/record`
  ]
  const lines = ['swarm directory (' + (r.gc === 'unavailable' ? 'gc UNAVAILABLE: heap figures include garbage' : `heap after gc via ${r.gc}`) + '):']
  lines.push(...line('memory', r.memory))
  if (r.redis !== undefined) {
    const x = r.redis
    lines.push(...line(`Redis Cluster (${x.masters} masters on this machine, used_memory summed)`, x))
    lines.push(`  Redis / memory: announces ${(x.announcesPerSec / r.memory.announcesPerSec).toFixed(3)}x, lookups ${(x.lookupsPerSec / r.memory.lookupsPerSec).toFixed(3)}x, ` +
      `bytes per record ${(x.bytesPerEntry / r.memory.bytesPerEntry).toFixed(2)}x`)
  } else {
    lines.push(`  Redis Cluster: skipped (${r.redisSkipped ?? 'unknown reason'})`)
  }
  return lines.join('\n')
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const r = await benchDirectory()
  process.stdout.write(formatDirectoryBench(r) + '\n')
  process.stdout.write(JSON.stringify({ bench: 'directory', ...r }) + '\n')
}
