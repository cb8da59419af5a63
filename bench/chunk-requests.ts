/**
 * What one chunk request costs, apart from its bytes: two libp2p hosts on loopback, a ChunkServer over an in-memory
 * cache, and many requests of one small chunk each through the neighbour source, one after another (a swarm's
 * requests mostly carry one or two chunks: every REDIRECT is a new request). The same requests go
 *  - `fresh`: each on a new stream (no stream kept idle: what the neighbour source did before it kept them);
 *  - `kept`: on streams kept open between requests to the holder (the default).
 * Both hosts share this process, so its CPU time is both ends' together. Runs alternate; medians are reported, with
 * the kept streams' cost as a ratio of the fresh ones'. Then `contacts` first contacts: each time a new host asks the
 * holder for one chunk — the dial, its handshakes (noise, yamux, identify), the first stream and the request — and
 * a moment after, for the work the connection sets off behind the reply.
 *
 * @example
 * ```ts
 * const r = await benchChunkRequests({ requests: 2000 })
 * console.log(formatChunkRequests(r))   // npm run build && node dist/bench/run.js chunk-requests
 * ```
 */
import '../polyfill.js'
import { multiaddr } from '@multiformats/multiaddr'
import { announceAddrs, createHost, type ChunkHolder, type HolderResolver } from '../p2p/index.js'
import { ChunkServer, NeighbourSource } from '../peer/index.js'
import { digestChunk, type ChunkInfo } from '../rafs/index.js'
import { memoryChunks } from '../test/helpers/memory-chunks.js'

export interface ChunkRequestsOptions {
  /** requests per run and mode (2,000) */
  requests?: number
  /** bytes of each chunk (4 KiB: the request's own cost, not its bytes) */
  chunkSize?: number
  runs?: number
  /** first contacts measured (20) */
  contacts?: number
  log?: (line: string) => void
}

export interface ChunkRequestsResult {
  requests: number
  chunkSize: number
  runs: number
  /** medians per request, both ends: microseconds of CPU, and of wall time */
  freshCpuUs: number
  freshWallUs: number
  keptCpuUs: number
  keptWallUs: number
  /** streams the kept runs opened, in all */
  keptStreamsOpened: number
  cpuRatio: number
  wallRatio: number
  /** medians of a first contact, both ends, its request included: microseconds of CPU, and of wall time to the chunk */
  contactCpuUs: number
  contactWallUs: number
}

class OneHolder implements HolderResolver {
  constructor (private readonly holder: ChunkHolder) {}
  async resolve (digests: Buffer[]): Promise<Map<string, ChunkHolder[]>> { return new Map(digests.map(d => [d.toString('hex'), [this.holder]])) }
  report (): void {}
}

/** a first contact's host idles this long before the clock starts, and the clock runs this long after the chunk */
const CONTACT_SETTLE_MS = 50
const delay = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

export async function benchChunkRequests (opts: ChunkRequestsOptions = {}): Promise<ChunkRequestsResult> {
  const requests = opts.requests ?? 2000
  const chunkSize = opts.chunkSize ?? 4096
  const runs = opts.runs ?? 3
  const log = opts.log ?? (() => {})
  const { blob, chunks, cache } = memoryChunks(64, chunkSize, 'cd'.repeat(32))
  const server = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
  const client = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
  const chunkServer = new ChunkServer({ libp2p: server, cache })
  try {
    await chunkServer.start()
    const holder: ChunkHolder = { peerId: server.peerId.toString(), addrs: announceAddrs(server) }
    await client.dial(multiaddr(`${holder.addrs[0]!}/p2p/${holder.peerId}`))
    let opened = 0
    const verify = (c: ChunkInfo, p: Buffer): boolean => digestChunk('blake3', p).equals(c.digest)
    // the same source either way; `keep: false` keeps no stream idle, so each request opens its own
    const through = async (keep: boolean): Promise<void> => {
      const src = new NeighbourSource({ libp2p: client, resolver: new OneHolder(holder) }, {
        maxHolders: 1, requestTimeoutMs: 10_000, ...(keep ? {} : { streams: { maxIdlePerPeer: 0 } })
      })
      try {
        for (let i = 0; i < requests; i++) {
          let n = 0
          for await (const f of src.fetch(blob, [chunks[i % chunks.length]!], { signal: AbortSignal.timeout(10_000), verify })) n += f.plaintext.length > 0 ? 1 : 0
          if (n !== 1) throw new Error(`request ${i}: ${n} chunks`)
        }
      } finally {
        if (keep) opened += src.streams.counters.opened
        src.close()
      }
    }
    const fresh = async (): Promise<void> => { await through(false) }
    const kept = async (): Promise<void> => { await through(true) }
    const modes = { fresh, kept }
    const cpu: Record<keyof typeof modes, number[]> = { fresh: [], kept: [] }
    const wall: Record<keyof typeof modes, number[]> = { fresh: [], kept: [] }
    // a warm-up of each (JIT), then alternating runs
    await fresh()
    await kept()
    opened = 0
    for (let r = 0; r < runs; r++) {
      for (const name of ['fresh', 'kept'] as const) {
        const c0 = process.cpuUsage()
        const t0 = performance.now()
        await modes[name]()
        const c = process.cpuUsage(c0)
        const t = performance.now() - t0
        cpu[name].push((c.user + c.system) / requests)
        wall[name].push(t * 1000 / requests)
        log(`run ${r + 1}/${runs} ${name}: ${((c.user + c.system) / requests).toFixed(0)} µs CPU, ${(t * 1000 / requests).toFixed(0)} µs per request`)
      }
    }
    // first contacts: a new host each time (made before the clock starts), one chunk, a moment for what follows
    const contactCpu: number[] = []
    const contactWall: number[] = []
    const contacts = opts.contacts ?? 20
    for (let i = 0; i < contacts + 2; i++) {
      const fresh = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
      const src = new NeighbourSource({ libp2p: fresh, resolver: new OneHolder(holder) }, { maxHolders: 1, requestTimeoutMs: 10_000 })
      try {
        await delay(CONTACT_SETTLE_MS)
        const c0 = process.cpuUsage()
        const t0 = performance.now()
        let n = 0
        for await (const f of src.fetch(blob, [chunks[i % chunks.length]!], { signal: AbortSignal.timeout(10_000), verify })) n += f.plaintext.length > 0 ? 1 : 0
        const t = performance.now() - t0
        await delay(CONTACT_SETTLE_MS)
        const c = process.cpuUsage(c0)
        if (n !== 1) throw new Error(`first contact ${i}: ${n} chunks`)
        // the first two warm up
        if (i >= 2) { contactCpu.push(c.user + c.system); contactWall.push(t * 1000) }
      } finally {
        src.close()
        await fresh.stop()
      }
    }
    if (contacts > 0) log(`first contacts: ${(median(contactCpu) / 1000).toFixed(1)} ms CPU, ${(median(contactWall) / 1000).toFixed(1)} ms to the chunk`)
    const freshCpuUs = median(cpu.fresh)
    const keptCpuUs = median(cpu.kept)
    const freshWallUs = median(wall.fresh)
    const keptWallUs = median(wall.kept)
    return {
      requests, chunkSize, runs, freshCpuUs, freshWallUs, keptCpuUs, keptWallUs, keptStreamsOpened: opened,
      cpuRatio: keptCpuUs / freshCpuUs, wallRatio: keptWallUs / freshWallUs,
      contactCpuUs: contactCpu.length > 0 ? median(contactCpu) : 0,
      contactWallUs: contactWall.length > 0 ? median(contactWall) : 0
    }
  } finally {
    await chunkServer.stop()
    await client.stop()
    await server.stop()
  }
}

export function formatChunkRequests (r: ChunkRequestsResult): string {
  return [
    `chunk requests over loopback (${r.requests} requests of one ${(r.chunkSize / 1024).toFixed(0)} KiB chunk through the neighbour source, one after another, median of ${r.runs}; both ends' CPU)`,
    `  a new stream each           ${r.freshCpuUs.toFixed(0).padStart(6)} µs CPU  ${r.freshWallUs.toFixed(0).padStart(6)} µs wall   1.00x`,
    `  streams kept open           ${r.keptCpuUs.toFixed(0).padStart(6)} µs CPU  ${r.keptWallUs.toFixed(0).padStart(6)} µs wall   ${r.cpuRatio.toFixed(2)}x CPU, ${r.wallRatio.toFixed(2)}x wall (${r.keptStreamsOpened} streams in ${r.runs * r.requests} requests)`,
    `  a first contact (new host)  ${r.contactCpuUs.toFixed(0).padStart(6)} µs CPU  ${r.contactWallUs.toFixed(0).padStart(6)} µs wall   ${(r.contactCpuUs / r.keptCpuUs).toFixed(0)}x a kept request's CPU`
  ].join('\n')
}
