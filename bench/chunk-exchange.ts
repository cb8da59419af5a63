/**
 * Throughput of the chunk exchange against its ceiling: two libp2p hosts on loopback, the same bytes moved
 *  - `raw`: over a bare stream of a test protocol (1 MiB sends, backpressure honoured) — the baseline;
 *  - `protocol`: through `/rafspeer/chunk/1.0.0` — a ChunkServer over an in-memory cache, the asker issuing
 *    requests of ≤ 64 chunks / 4 MiB one after another on one stream at a time (like for like with raw), and on
 *    `streams` concurrent streams, as the neighbour source does with one holder;
 *  - `peer-source`: the whole NeighbourSource (resolve, spread, every chunk's digest checked through the fetcher's
 *    `verify`) on top of that, driven like the fetcher drives it (4 MiB batches, `batchesInFlight` at once);
 *  - `fetcher`: a Fetcher over that source, as a node fetches from neighbours (batch planning, admission, single
 *    flight, the one digest check per chunk, delivery), into a cache that keeps nothing.
 * All three share one connection. Each runs `runs` times, interleaved; medians are reported with ratios to raw.
 * Runs in-process: both hosts share one event loop, as the raw baseline does.
 *
 * @example
 * ```ts
 * const r = await benchChunkExchange({ totalBytes: 256 << 20 })
 * console.log(formatChunkExchange(r))   // or run this file: node --import tsx bench/chunk-exchange.ts
 * ```
 */
import '../polyfill.js'
import { randomBytes } from 'node:crypto'
import { pathToFileURL } from 'node:url'
import type { Stream } from '@libp2p/interface'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { announceAddrs, createHost, type ChunkHolder, type HolderResolver, type Host } from '../p2p/index.js'
import {
  CHUNK_PROTOCOL, ChunkServer, ChunkStatus, DEFAULT_NEIGHBOUR_REQUEST_BYTES, DEFAULT_STREAMS_PER_HOLDER, Fetcher,
  MAX_CHUNKS_PER_REQUEST, NeighbourSource, exchangeChunks, type ChunkCache, type ChunkName, type ServableCache
} from '../peer/index.js'
import { digestChunk, type ChunkInfo, type RafsBlobInfo } from '../rafs/index.js'

const RAW_PROTOCOL = '/rafspeer/bench-raw/1.0.0'
const RAW_SEND_BYTES = 1 << 20
/** the fetcher's default largest batch */
const PEER_SOURCE_BATCH_BYTES = 4 << 20
/** half the fetcher's default concurrency: reads and prefetch rarely fill every slot with one blob */
const DEFAULT_BATCHES_IN_FLIGHT = 4

export interface ChunkBenchOptions {
  /** bytes moved per run and mode (256 MiB) */
  totalBytes?: number
  /** 1 MiB, Nydus's default */
  chunkSize?: number
  /** distinct chunks held by the server; names repeat over them (32 MiB worth) */
  poolBytes?: number
  /** concurrent request streams of the protocol run (the neighbour source's streams per holder) */
  streams?: number
  /** fetch calls of the neighbour-source run in flight at once, each a batch of 4 MiB (4) */
  batchesInFlight?: number
  runs?: number
  /** progress lines; silent when absent */
  log?: (line: string) => void
}

export interface ChunkBenchResult {
  totalBytes: number
  chunkSize: number
  runs: number
  streams: number
  /** medians, MB/s (10^6 bytes per second) */
  rawMBps: number
  /** the protocol on one stream, requests one after another: like for like with raw */
  protocolOneStreamMBps: number
  /** the protocol on `streams` concurrent streams */
  protocolMBps: number
  peerSourceMBps: number
  fetcherMBps: number
  /** protocol / raw: the goal is ≥ 0.7 */
  protocolOneStreamRatio: number
  protocolRatio: number
  peerSourceRatio: number
  fetcherRatio: number
}

/** Every name resolves to the one server. */
class OneHolder implements HolderResolver {
  constructor (private readonly holder: ChunkHolder) {}
  async resolve (digests: Buffer[]): Promise<Map<string, ChunkHolder[]>> {
    return new Map(digests.map(d => [d.toString('hex'), [this.holder]]))
  }

  report (): void {}
}

/** The server's chunks, by digest, in memory: the bench measures the exchange, not the disk. */
function memoryCache (pool: Buffer[], digests: Buffer[]): ServableCache {
  const byDigest = new Map(digests.map((d, i) => [d.toString('hex'), i]))
  return {
    has: () => true,
    findByDigest: async (digest) => {
      const i = byDigest.get(digest.toString('hex'))
      if (i === undefined) return undefined
      return { blobId: 'pool', chunk: { index: i, digest: digests[i]!, uncompressedOffset: 0, uncompressedSize: pool[i]!.length } }
    },
    readChunk: async (_blobId, chunk) => pool[chunk.index]
  }
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
const mbps = (bytes: number, ms: number): number => bytes / 1e6 / (ms / 1000)

export async function benchChunkExchange (opts: ChunkBenchOptions = {}): Promise<ChunkBenchResult> {
  const totalBytes = opts.totalBytes ?? 256 << 20
  const chunkSize = opts.chunkSize ?? 1 << 20
  const poolCount = Math.max(1, Math.floor((opts.poolBytes ?? 32 << 20) / chunkSize))
  const streams = opts.streams ?? DEFAULT_STREAMS_PER_HOLDER
  const batches = opts.batchesInFlight ?? DEFAULT_BATCHES_IN_FLIGHT
  const runs = opts.runs ?? 5
  const log = opts.log ?? (() => {})
  const count = Math.ceil(totalBytes / chunkSize)
  const moved = count * chunkSize

  const pool = Array.from({ length: poolCount }, () => randomBytes(chunkSize))
  const digests = pool.map(p => digestChunk('blake3', p))
  const blob: RafsBlobInfo = {
    blobId: '0'.repeat(64), compressor: 'none', digester: 'blake3', chunkSize, chunkCount: count,
    compressedSize: moved, uncompressedSize: moved, features: 0, ciCompressor: 'none', ciOffset: 0,
    ciCompressedSize: 0, ciUncompressedSize: 0, blobTocSize: 0, blobTocDigest: Buffer.alloc(32)
  }
  const chunks: ChunkInfo[] = Array.from({ length: count }, (_, i) => ({
    digest: digests[i % poolCount]!, blobIndex: 0, index: i, compressedOffset: i * chunkSize, compressedSize: chunkSize,
    uncompressedOffset: i * chunkSize, uncompressedSize: chunkSize, compressed: false, fileOffset: i * chunkSize
  }))

  const server = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
  const client = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
  const chunkServer = new ChunkServer({ libp2p: server, cache: memoryCache(pool, digests) })
  try {
    await chunkServer.start()
    const raw = Buffer.alloc(RAW_SEND_BYTES, 0x42)
    await server.handle(RAW_PROTOCOL, async (stream) => {
      try {
        for (let sent = 0; sent < moved; sent += raw.length) {
          if (!stream.send(raw.subarray(0, Math.min(raw.length, moved - sent)))) await stream.onDrain()
        }
        await stream.close()
      } catch (err) { stream.abort(err as Error) }
    })
    const holder: ChunkHolder = { peerId: server.peerId.toString(), addrs: announceAddrs(server) }
    const addr = multiaddr(`${holder.addrs[0]!}/p2p/${holder.peerId}`)
    await client.dial(addr)

    const modes: Record<'raw' | 'protocolOneStream' | 'protocol' | 'peerSource' | 'fetcher', () => Promise<number>> = {
      raw: async () => await rawRun(client, addr),
      protocolOneStream: async () => await protocolRun(client, addr, chunks, 1),
      protocol: async () => await protocolRun(client, addr, chunks, streams),
      peerSource: async () => await peerSourceRun(client, holder, blob, chunks, batches),
      fetcher: async () => await fetcherRun(client, holder, blob, chunks)
    }
    const samples: Record<keyof typeof modes, number[]> = { raw: [], protocolOneStream: [], protocol: [], peerSource: [], fetcher: [] }
    // one warm-up of each (JIT, yamux windows), then interleaved runs against drift on a shared machine
    for (const run of Object.values(modes)) await run()
    for (let r = 0; r < runs; r++) {
      for (const [name, run] of Object.entries(modes) as Array<[keyof typeof modes, () => Promise<number>]>) {
        const started = performance.now()
        const bytes = await run()
        const ms = performance.now() - started
        if (bytes !== moved) throw new Error(`${name} run moved ${bytes} bytes, expected ${moved}`)
        samples[name].push(mbps(bytes, ms))
        log(`run ${r + 1}/${runs} ${name}: ${mbps(bytes, ms).toFixed(1)} MB/s`)
      }
    }
    const rawMBps = median(samples.raw)
    const protocolOneStreamMBps = median(samples.protocolOneStream)
    const protocolMBps = median(samples.protocol)
    const peerSourceMBps = median(samples.peerSource)
    const fetcherMBps = median(samples.fetcher)
    return {
      totalBytes: moved, chunkSize, runs, streams, rawMBps, protocolOneStreamMBps, protocolMBps, peerSourceMBps, fetcherMBps,
      protocolOneStreamRatio: protocolOneStreamMBps / rawMBps, protocolRatio: protocolMBps / rawMBps, peerSourceRatio: peerSourceMBps / rawMBps,
      fetcherRatio: fetcherMBps / rawMBps
    }
  } finally {
    await chunkServer.stop()
    await client.stop()
    await server.stop()
  }
}

async function rawRun (client: Host, addr: Multiaddr): Promise<number> {
  const stream: Stream = await client.dialProtocol(addr, RAW_PROTOCOL)
  await stream.close()
  let n = 0
  for await (const piece of stream) n += piece.byteLength
  return n
}

async function protocolRun (client: Host, addr: Multiaddr, chunks: ChunkInfo[], streams: number): Promise<number> {
  const perRequest = Math.max(1, Math.min(MAX_CHUNKS_PER_REQUEST, Math.floor(DEFAULT_NEIGHBOUR_REQUEST_BYTES / chunks[0]!.uncompressedSize)))
  let next = 0
  let bytes = 0
  const worker = async (): Promise<void> => {
    while (next < chunks.length) {
      const batch = chunks.slice(next, next + perRequest)
      next += batch.length
      const names: ChunkName[] = batch.map(c => ({ digest: c.digest, blobId: '', ci: c.index, size: c.uncompressedSize }))
      const stream = await client.dialProtocol(addr, CHUNK_PROTOCOL)
      for await (const r of exchangeChunks(stream, names, { timeoutMs: 10_000 })) {
        if (r.status !== ChunkStatus.OK) throw new Error(`chunk ${batch[r.i]!.index}: status ${r.status}`)
        bytes += r.payload!.length
      }
    }
  }
  await Promise.all(Array.from({ length: streams }, worker))
  return bytes
}

async function peerSourceRun (client: Host, holder: ChunkHolder, blob: RafsBlobInfo, chunks: ChunkInfo[], batchesInFlight: number): Promise<number> {
  const src = new NeighbourSource({ libp2p: client, resolver: new OneHolder(holder) }, { maxHolders: 1, requestTimeoutMs: 10_000 })
  // the fetcher's check, which the source calls on every chunk it receives
  const verify = (c: ChunkInfo, plaintext: Buffer): boolean => digestChunk(blob.digester, plaintext).equals(c.digest)
  // as the fetcher drives a source: batches of a few MiB, several in flight
  const batchChunks = Math.max(1, Math.floor(PEER_SOURCE_BATCH_BYTES / blob.chunkSize))
  let next = 0
  let bytes = 0
  const worker = async (): Promise<void> => {
    while (next < chunks.length) {
      const batch = chunks.slice(next, next + batchChunks)
      next += batch.length
      for await (const { plaintext } of src.fetch(blob, batch, { signal: AbortSignal.timeout(60_000), verify })) bytes += plaintext.length
    }
  }
  await Promise.all(Array.from({ length: batchesInFlight }, worker))
  return bytes
}

/** A cache that holds nothing and keeps nothing: every chunk is fetched, none is written. */
const NO_CACHE: ChunkCache = {
  has: () => false,
  isVerified: () => false,
  readVerifiedInto: async () => false,
  readChunk: async () => undefined,
  putChunk: async () => false
}

async function fetcherRun (client: Host, holder: ChunkHolder, blob: RafsBlobInfo, chunks: ChunkInfo[]): Promise<number> {
  const src = new NeighbourSource({ libp2p: client, resolver: new OneHolder(holder) }, { maxHolders: 1, requestTimeoutMs: 10_000 })
  const fetcher = new Fetcher({ cache: NO_CACHE, sources: [src] }, { retries: 0 })
  // as prefetch feeds it: slices of 64 chunks, 4 slices in flight
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < chunks.length) {
      const slice = chunks.slice(next, next + 64)
      next += slice.length
      await fetcher.ensureChunks(blob, slice, { priority: 'read' })
    }
  }
  await Promise.all(Array.from({ length: 4 }, worker))
  return fetcher.counters.bytesBySource.peer
}

export function formatChunkExchange (r: ChunkBenchResult): string {
  const mib = (n: number): string => n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(0)} MiB` : `${(n / 1024).toFixed(0)} KiB`
  return [
    `chunk exchange over loopback (${mib(r.totalBytes)} in ${mib(r.chunkSize)} chunks, median of ${r.runs})`,
    `  raw libp2p stream   ${r.rawMBps.toFixed(1).padStart(8)} MB/s   1.00x`,
    `  chunk/1, 1 stream   ${r.protocolOneStreamMBps.toFixed(1).padStart(8)} MB/s   ${r.protocolOneStreamRatio.toFixed(2)}x   (goal ≥ 0.70x)`,
    `  chunk/1, ${r.streams} streams  ${r.protocolMBps.toFixed(1).padStart(8)} MB/s   ${r.protocolRatio.toFixed(2)}x`,
    `  neighbour source    ${r.peerSourceMBps.toFixed(1).padStart(8)} MB/s   ${r.peerSourceRatio.toFixed(2)}x`,
    `  fetcher over it     ${r.fetcherMBps.toFixed(1).padStart(8)} MB/s   ${r.fetcherRatio.toFixed(2)}x`
  ].join('\n')
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const chunkSize = Number(process.env.CHUNK_SIZE ?? 1 << 20)
  const r = await benchChunkExchange({ chunkSize, log: line => process.stderr.write(line + '\n') })
  process.stdout.write(formatChunkExchange(r) + '\n')
  process.stdout.write(JSON.stringify({ bench: 'chunk-exchange', ...r }) + '\n')
}
