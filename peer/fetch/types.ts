/**
 * Types of the fetch pipeline: what it needs from the cache (`ChunkCache`, satisfied structurally by `cache/`'s
 * BlobCache), what a read names, and the fetcher's options.
 */
import type { ComponentLogger } from '../../base/index.js'
import type { ChunkInfo, RafsBlobInfo, RafsReader } from '../../rafs/index.js'
import type { ChunkSource } from './source.js'
import type { FetchPriority } from './queue.js'

export type { FetchPriority } from './queue.js'
export type { MappedPiece } from '../../rafs/index.js'

/** Plaintext chunks of blobs, keyed by (blobId, ci). */
export interface ChunkCache {
  /** Cheap, synchronous: does the index call this chunk present? */
  has: (blobId: string, ci: number) => boolean
  /** Cheap, synchronous: present, and found matching its digest by this process already? */
  isVerified: (blobId: string, ci: number) => boolean
  /**
   * Copies `length` bytes at `viewOffset` of the blob's uncompressed view into `buf` at `bufOffset`, for spans of
   * verified chunks; false when the bytes cannot be trusted after all (evicted meanwhile): nothing to use in `buf`.
   */
  readVerifiedInto: (blobId: string, viewOffset: number, length: number, buf: Buffer, bufOffset: number) => Promise<boolean>
  /** The whole plaintext chunk, or undefined when absent (or found bad when `verify` is set). */
  readChunk: (blobId: string, chunk: ChunkInfo, opts?: { verify?: boolean | 'once' }) => Promise<Buffer | undefined>
  /**
   * Stores a verified chunk (the result, e.g. BlobCache's "newly stored" flag, is ignored). May fail
   * (RAFSPEER_ERR_CACHE_FULL, I/O): the fetcher then serves from memory and counts it.
   */
  putChunk: (blobId: string, chunk: ChunkInfo, plaintext: Buffer) => Promise<unknown>
  /** A present chunk with this digest in another blob (optional: enables local copies instead of fetches). */
  findByDigest?: (digest: Buffer, opts: { exceptBlobId?: string }) => Promise<{ blobId: string, chunk: CopySource } | undefined>
  /** Copies a present chunk between blobs after verifying it; false when the source turned out absent or bad. */
  copyChunk?: (from: { blobId: string, chunk: CopySource }, to: { blobId: string, chunk: ChunkInfo }) => Promise<boolean>
}

/** The fields of a cached chunk a copy needs. */
export type CopySource = Pick<ChunkInfo, 'index' | 'digest' | 'uncompressedOffset' | 'uncompressedSize'>

/**
 * What a read needs of an image: its files' chunk maps and chunk table (a bootstrap's `RafsReader`, or the piece
 * table of an opaque blob a registry mirror serves) and its blob table (ChunkInfo.blobIndex indexes `blobs`).
 */
export interface FetchImage {
  reader: Pick<RafsReader, 'mapRange' | 'chunkInfo'>
  blobs: RafsBlobInfo[]
}

export interface ReadOptions {
  /** the caller gave up (an unmount, a client that went away): the read rejects with RAFSPEER_ERR_ABORTED */
  signal?: AbortSignal
  priority?: FetchPriority
  /** overrides the fetcher's `deadlineMs` for this read */
  deadlineMs?: number
}

export interface EnsureOptions {
  signal?: AbortSignal
  priority?: FetchPriority
  /**
   * Chunks lying between the asked ones join a batch when the gap is at most `maxGapBytes` stored bytes, so scattered
   * small files go out as fewer, larger requests (no amplification past the last asked chunk). `neighbour` looks
   * chunks of the blob up by ci. Absent: each contiguous run of asked chunks is its own batch.
   */
  fillGaps?: { neighbour: (ci: number) => ChunkInfo | undefined, maxGapBytes: number }
}

export interface FetcherComponents {
  cache: ChunkCache
  /** tried in order for each batch: neighbours first, the registry last */
  sources: ChunkSource[]
  logger?: ComponentLogger
}

/**
 * Which chunks a prefetch takes next when its node is one of a swarm (`BlobLocator`, blob-level directory): a
 * prefetch that took every chunk in its own order would fetch from the registry, at the same moment as every other
 * peer, the chunks the swarm has assigned to one of them, and the registry would send each several times.
 */
export interface PrefetchAdvisor {
  /**
   * Of `chunks` (one blob's, still to prefetch, in the policy's order), the ones to fetch now, at most `max`, in the
   * order to fetch them: first those this node fetches from the registry for the swarm (`source` of them, at most
   * `maxSource` and about `maxSourceBytes` stored bytes), then those neighbours have (rarest first). Empty when every
   * one of them waits for another peer.
   */
  pick: (blob: RafsBlobInfo, chunks: readonly ChunkInfo[], opts: { max: number, maxSource: number, maxSourceBytes: number, signal: AbortSignal }) =>
  Promise<{ chunks: ChunkInfo[], source: number }>
  /**
   * Resolves true when what neighbours have or fetch of the blob changes, false after `ms` without a change; rejects
   * when `signal` aborts.
   */
  changed: (blob: RafsBlobInfo, ms: number, signal: AbortSignal) => Promise<boolean>
}

export interface FetcherInit {
  /** adjacent missing chunks of a blob are fetched together up to at least this many stored bytes (1 MiB) */
  amplifyBytes?: number
  /** largest batch handed to a source, in stored bytes (max(4 MiB, amplifyBytes)) */
  maxBatchBytes?: number
  /** batches in flight (8) */
  concurrency?: number
  /** slots prefetch may take (concurrency - max(1, concurrency/4)), so reads always find one */
  prefetchConcurrency?: number
  /** prefetch stored-byte rate; unlimited when absent */
  prefetchBytesPerSecond?: number
  /** a source attempt on a batch that delivers no chunk for this long is given up (10 s) */
  timeoutMs?: number
  /** extra rounds over all sources after a transient failure (2) */
  retries?: number
  /** first backoff (100 ms), doubled per retry up to 2 s, with jitter */
  retryBaseMs?: number
  /**
   * a read not served by then rejects with RAFSPEER_ERR_READ_TIMEOUT (30 s): the one deadline of a read, counted
   * per chunk from the first read that waited for it, so retries of a stalled chunk do not start it over
   */
  deadlineMs?: number
  /**
   * a chunk a read waits for that a source other than the last (the neighbours) has not delivered within this long
   * is asked of the next source (the registry) too, whichever comes first serving the read: a swarm's trouble (peers
   * waiting on each other's PENDING, a holder that keeps a request) costs a read this much, not its deadline; a
   * quarter more for a chunk still spreading through the swarm (the source's `holders`) (two thirds of `deadlineMs`,
   * or 20 s without one; Infinity: never)
   */
  readHandOffMs?: number
  /** a chunk that missed its deadline fails reads at once for this long, then is tried afresh (min(deadlineMs, 1 s)) */
  retryStalledAfterMs?: number
  /**
   * ask the cache to re-verify chunks it serves: `true` every time, `'once'` the first time this process serves
   * each chunk (catches bytes changed on disk while the daemon was down), `false` never
   */
  verifyCacheReads?: boolean | 'once'
  /**
   * Caps the chunk bytes this fetcher takes in from every source together (a node's downlink); share one limiter
   * between the fetchers of a node. Unlimited when absent.
   */
  downloadLimiter?: { take: (bytes: number, signal?: AbortSignal) => Promise<void> }
  /**
   * told when chunks start being fetched and when each is done (cached, or given up): the node's neighbours hear
   * which chunks it is fetching (PENDING on `/rafspeer/have/1.0.0`), so they wait for it rather than fetch them again
   */
  activity?: FlightActivity
}

/** One finished source attempt, for a latency histogram. */
export interface FetchSample {
  source: string
  ms: number
  chunks: number
  bytes: number
  ok: boolean
}

export interface FetchCounters {
  /** read bytes served from the cache; verified plaintext bytes fetched from the registry and from peers */
  bytesBySource: { cache: number, registry: number, peer: number }
  reads: number
  readBytes: number
  readTimeouts: number
  chunksFromCache: number
  chunksFetched: number
  /** found under the same digest in another cached blob and copied locally instead of fetched */
  chunksCopied: number
  /** fetched only because they sat next to wanted chunks (amplification) */
  chunksAmplified: number
  /** of `chunksFetched`, those fetched by batches that ran at prefetch priority (no read waited for them), and their plaintext bytes */
  prefetchChunks: number
  prefetchBytes: number
  /** batches handed to sources (one registry batch is one Range request unless split) */
  batches: number
  sourceAttempts: number
  retries: number
  /** a reader found its chunk already being fetched and waited for that fetch */
  singleFlightJoins: number
  /** chunks from a source whose bytes failed their size or digest (dropped) */
  verifyFailures: number
  cacheReadFailures: number
  cachePutFailures: number
  /** the longest one read waited for chunks it had to fetch (or join in flight), ms, timed-out reads included */
  readWaitMaxMs: number
  /** chunks a read waited for `readHandOffMs` on a source that were asked of the next source too */
  readHandOffs: number
  /** idle deadlines a source's attempt met while its chunks spread through the swarm: started over (`ChunkSourceFetchOptions.holders`) */
  idleExtensions: number
}

/** Chunks in flight, as one fetcher reports them (see `FetcherInit.activity`). */
export interface FlightActivity {
  started: (blobId: string, chunks: ReadonlyArray<{ index: number, digest: Buffer }>) => void
  ended: (blobId: string, index: number) => void
}
