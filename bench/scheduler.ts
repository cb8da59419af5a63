/**
 * Scheduler benchmark: heap per million (digest, holder) entries of the holder index, against a naive
 * `Map<hex digest, Set<peer id>>` baseline built in the same run, and resolve throughput, in process and over a
 * real libp2p connection on loopback (batches of 1000 digests, one at a time and 8 in flight).
 *
 * Run alone: `node --expose-gc --import tsx bench/scheduler.ts` (without `--expose-gc` it enables gc itself
 * through V8 flags, and says so if even that fails).
 */
import '../polyfill.js'
import { randomBytes } from 'node:crypto'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { pathToFileURL } from 'node:url'
import { createHost, type Host } from '../p2p/index.js'
import {
  DIGEST_BYTES, HolderIndex, MAX_DIGESTS_PER_FRAME, SchedulerClient, startSchedulerNode, type PeerInfo, type SchedulerNode
} from '../scheduler/index.js'

export interface SchedulerBenchOptions {
  /** (digests, holders per digest) layouts whose heap is measured (default 1M×1, 250k×4, 100k×10) */
  layouts?: Array<{ digests: number, holders: number }>
  /** digests per resolve (default 1000) */
  batch?: number
  /** seconds per throughput measurement (default 1) */
  seconds?: number
  /** digests announced for the loopback measurement (default 100 000) */
  networkDigests?: number
}

export interface MemoryResult {
  digests: number
  holders: number
  entries: number
  heapBytes: number
  bytesPerEntry: number
  /** MiB of heap per million (digest, holder) entries */
  mibPerMillionEntries: number
}

export interface SchedulerBenchResult {
  /** how gc was had: `--expose-gc`, V8 flags, or not at all (heap figures then include garbage) */
  gc: 'expose-gc' | 'v8-flags' | 'unavailable'
  memory: MemoryResult[]
  /** the same layouts in a naive `Map<hex digest, Set<peer id>>` */
  naive: MemoryResult[]
  inProcess: { batch: number, digestsPerSec: number, usPerBatch: number }
  loopback: {
    batch: number
    announceDigests: number
    announceMs: number
    sequentialDigestsPerSec: number
    p50Ms: number
    p99Ms: number
    pipelined: number
    pipelinedDigestsPerSec: number
  }
}

export function findGc (): { gc: () => void, how: SchedulerBenchResult['gc'] } {
  const g = (globalThis as { gc?: () => void }).gc
  if (typeof g === 'function') return { gc: g, how: 'expose-gc' }
  try {
    setFlagsFromString('--expose-gc')
    const viaVm = runInNewContext('gc') as (() => void) | undefined
    if (typeof viaVm === 'function') return { gc: viaVm, how: 'v8-flags' }
  } catch { /* fall through */ }
  return { gc: () => {}, how: 'unavailable' }
}

const info = (i: number): PeerInfo => ({ addrs: [`/ip4/10.0.${i >> 8}.${i & 255}/tcp/4001`], zone: 'bench|z', uploadSlots: 8, uploadBps: 0 })

export function heapAfterGc (gc: () => void): number {
  for (let i = 0; i < 3; i++) gc()
  return process.memoryUsage().heapUsed
}

function measureIndex (gc: () => void, digests: Buffer, holders: number): { result: MemoryResult, index: HolderIndex } {
  const count = digests.length / DIGEST_BYTES
  const before = heapAfterGc(gc)
  const index = new HolderIndex({ maxPeers: Math.max(16, holders + 1), maxHoldersPerDigest: Math.max(32, holders) })
  for (let p = 0; p < holders; p++) {
    for (let off = 0; off < digests.length; off += MAX_DIGESTS_PER_FRAME * DIGEST_BYTES) {
      index.announce(`peer-${p}`, digests.subarray(off, Math.min(digests.length, off + MAX_DIGESTS_PER_FRAME * DIGEST_BYTES)), { info: info(p) })
    }
  }
  const heapBytes = heapAfterGc(gc) - before
  const entries = index.stats().entries
  return { index, result: { digests: count, holders, entries, heapBytes, bytesPerEntry: heapBytes / entries, mibPerMillionEntries: heapBytes / entries * 1e6 / 2 ** 20 } }
}

/** what a straightforward implementation would keep: hex keys and a Set of peer id strings per digest */
function measureNaive (gc: () => void, digests: Buffer, holders: number): MemoryResult {
  const count = digests.length / DIGEST_BYTES
  const peerIds = Array.from({ length: holders }, (_, p) => `12D3KooWBenchPeer${String(p).padStart(35, '0')}`)
  const before = heapAfterGc(gc)
  const map = new Map<string, Set<string>>()
  for (const id of peerIds) {
    for (let i = 0; i < count; i++) {
      const k = digests.toString('hex', i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES)
      let s = map.get(k)
      if (s === undefined) map.set(k, (s = new Set()))
      s.add(id)
    }
  }
  const heapBytes = heapAfterGc(gc) - before
  const entries = count * holders
  if (map.size !== count) throw new Error('naive baseline lost digests')
  return { digests: count, holders, entries, heapBytes, bytesPerEntry: heapBytes / entries, mibPerMillionEntries: heapBytes / entries * 1e6 / 2 ** 20 }
}

function randomBatches (digests: Buffer, batch: number, n: number): Buffer[] {
  const count = digests.length / DIGEST_BYTES
  return Array.from({ length: n }, () => {
    const b = Buffer.allocUnsafe(batch * DIGEST_BYTES)
    for (let i = 0; i < batch; i++) {
      const at = Math.floor(Math.random() * count) * DIGEST_BYTES
      digests.copy(b, i * DIGEST_BYTES, at, at + DIGEST_BYTES)
    }
    return b
  })
}

export const percentile = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor(p * s.length))]
}

const unpack = (packed: Buffer): Buffer[] =>
  Array.from({ length: packed.length / DIGEST_BYTES }, (_, i) => packed.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES))

async function peerNode (): Promise<Host> {
  return await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
}

async function benchLoopback (batch: number, seconds: number, networkDigests: number): Promise<SchedulerBenchResult['loopback']> {
  let sched: SchedulerNode | undefined
  const nodes: Host[] = []
  const clients: SchedulerClient[] = []
  try {
    sched = await startSchedulerNode()
    for (let i = 0; i < 2; i++) nodes.push(await peerNode())
    for (const n of nodes) {
      clients.push(new SchedulerClient({ libp2p: n }, {
        scheduler: sched.multiaddrs[0], selfAddrs: () => n.getMultiaddrs().map(String), resolveTimeoutMs: 10_000
      }))
    }
    const [holder, asker] = clients
    for (const c of clients) {
      await c.start()
      if (!(await c.waitConnected(5000))) throw new Error('bench client could not reach the scheduler')
    }
    const all = randomBytes(networkDigests * DIGEST_BYTES)
    const digests = unpack(all)
    const t0 = performance.now()
    holder.announce(digests)
    const last = digests[digests.length - 1]
    while (!(await asker.resolve([last])).has(last.toString('hex'))) await new Promise((resolve) => setTimeout(resolve, 2))
    const announceMs = performance.now() - t0

    const batches = randomBatches(all, batch, 64).map(unpack)
    for (const b of batches.slice(0, 32)) await asker.resolve(b) // warm up
    const lat: number[] = []
    let answered = 0
    let n = 0
    const start = performance.now()
    while (performance.now() - start < seconds * 1000) {
      const t = performance.now()
      const got = await asker.resolve(batches[n++ % batches.length])
      answered += got.size
      lat.push(performance.now() - t)
    }
    const seqSec = (performance.now() - start) / 1000
    if (answered < n * batch * 0.99) throw new Error(`only ${answered} of ${n * batch} digests answered`)

    const pipelined = 8
    let pDone = 0
    const pStart = performance.now()
    await Promise.all(Array.from({ length: pipelined }, async (_, w) => {
      let i = w
      while (performance.now() - pStart < seconds * 1000) {
        const got = await asker.resolve(batches[i++ % batches.length])
        pDone += got.size
      }
    }))
    const pSec = (performance.now() - pStart) / 1000
    return {
      batch,
      announceDigests: networkDigests,
      announceMs,
      sequentialDigestsPerSec: (n * batch) / seqSec,
      p50Ms: percentile(lat, 0.5),
      p99Ms: percentile(lat, 0.99),
      pipelined,
      pipelinedDigestsPerSec: pDone / pSec
    }
  } finally {
    for (const c of clients) await c.stop().catch(() => {})
    for (const n of nodes) await Promise.resolve(n.stop()).catch(() => {})
    await sched?.stop().catch(() => {})
  }
}

export async function benchScheduler (opts: SchedulerBenchOptions = {}): Promise<SchedulerBenchResult> {
  const { gc, how } = findGc()
  const layouts = opts.layouts ?? [{ digests: 1_000_000, holders: 1 }, { digests: 250_000, holders: 4 }, { digests: 100_000, holders: 10 }]
  const batch = opts.batch ?? 1000
  const seconds = opts.seconds ?? 1

  const memory: MemoryResult[] = []
  let probe: { index: HolderIndex, digests: Buffer } | undefined
  for (const l of layouts) {
    const digests = randomBytes(l.digests * DIGEST_BYTES)
    const { result, index } = measureIndex(gc, digests, l.holders)
    memory.push(result)
    if (l.holders === 4 || probe === undefined) probe = { index, digests }
  }
  const naive = layouts.map((l) => measureNaive(gc, randomBytes(l.digests * DIGEST_BYTES), l.holders))

  // in process: resolve random batches against the 4-holder index
  const { index, digests } = probe as { index: HolderIndex, digests: Buffer }
  const batches = randomBatches(digests, batch, 64)
  for (const b of batches.slice(0, 16)) index.resolveRaw('asker', b)
  let n = 0
  const start = performance.now()
  while (performance.now() - start < seconds * 1000) index.resolveRaw(`asker-${n % 16}`, batches[n++ % batches.length])
  const sec = (performance.now() - start) / 1000
  const inProcess = { batch, digestsPerSec: (n * batch) / sec, usPerBatch: (sec * 1e6) / n }
  probe = undefined

  const loopback = await benchLoopback(batch, seconds, opts.networkDigests ?? 100_000)
  return { gc: how, memory, naive, inProcess, loopback }
}

const f0 = (n: number): string => Math.round(n).toLocaleString('en-US')

export function formatSchedulerBench (r: SchedulerBenchResult): string {
  const lines = ['scheduler index memory (V8 heap after gc' + (r.gc === 'unavailable' ? ' — UNAVAILABLE: figures include garbage' : `, via ${r.gc}`) + '):']
  r.memory.forEach((m, i) => {
    const naive = r.naive[i]
    lines.push(`  ${f0(m.digests)} digests × ${m.holders} holder(s) = ${f0(m.entries)} entries: ${(m.heapBytes / 2 ** 20).toFixed(1)} MiB, ` +
      `${m.bytesPerEntry.toFixed(1)} B/entry, ${m.mibPerMillionEntries.toFixed(1)} MiB per million entries` +
      (naive !== undefined ? ` (${(m.bytesPerEntry / naive.bytesPerEntry).toFixed(2)}x of a naive Map<hex, Set<peer id>>: ${naive.bytesPerEntry.toFixed(1)} B/entry)` : ''))
  })
  lines.push(`resolve in process: ${f0(r.inProcess.digestsPerSec)} digests/s (batches of ${r.inProcess.batch}, ${r.inProcess.usPerBatch.toFixed(0)} µs each)`)
  const l = r.loopback
  lines.push(`announce over libp2p loopback: ${f0(l.announceDigests)} digests resolvable after ${l.announceMs.toFixed(0)} ms (${f0(l.announceDigests / l.announceMs * 1000)} digests/s)`)
  lines.push(`resolve over libp2p loopback: ${f0(l.sequentialDigestsPerSec)} digests/s one batch of ${l.batch} at a time (p50 ${l.p50Ms.toFixed(2)} ms, p99 ${l.p99Ms.toFixed(2)} ms); ` +
    `${f0(l.pipelinedDigestsPerSec)} digests/s with ${l.pipelined} in flight (${(l.pipelinedDigestsPerSec / r.inProcess.digestsPerSec).toFixed(2)}x in-process)`)
  return lines.join('\n')
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const r = await benchScheduler()
  process.stdout.write(formatSchedulerBench(r) + '\n')
  process.stdout.write(JSON.stringify({ bench: 'scheduler', ...r }) + '\n')
}
