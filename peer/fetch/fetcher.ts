/**
 * The fetch pipeline of one node (docs/ARCHITECTURE.md, "one cold read"): the pieces of a read → spans the cache
 * holds verified are read straight into the caller's buffer, other cached chunks are read whole and checked, the
 * rest come from the chunks in flight (`flights.ts`: single-flight batches through the sources in order,
 * neighbours then the registry, each chunk checked against its digest exactly once). Each piece is copied once,
 * into the caller's buffer. The fetcher owns a read's one deadline, and the caller's signal reaches every fetch
 * and source the read waits on.
 *
 * @example
 * ```ts
 * const fetcher = new Fetcher({ cache, sources: [new RegistrySource({ client }, { repository })] }, { deadlineMs: 5000 })
 * const nid = reader.lookup('/etc/os-release')
 * const n = await fetcher.readPieces({ reader, blobs: reader.blobs }, reader.mapRange(nid, 0, 4096), buf, { signal })
 * ```
 */
import { raceSignal } from 'race-signal'
import { describeError, errorCode, type Logger } from '../../base/index.js'
import type { ChunkInfo, MappedPiece, RafsBlobInfo } from '../../rafs/index.js'
import { FetchAbortedError, ReadTimeoutError } from './errors.js'
import { Flights, flightKey, type Flight } from './flights.js'
import { FetchMetrics } from './metrics.js'
import type {
  ChunkCache, EnsureOptions, FetchCounters, FetchImage, FetchSample, FetcherComponents, FetcherInit, ReadOptions
} from './types.js'

export {
  DEFAULT_AMPLIFY_BYTES, DEFAULT_CONCURRENCY, DEFAULT_MAX_BATCH_BYTES, DEFAULT_RETRIES, DEFAULT_RETRY_BASE_MS, DEFAULT_TIMEOUT_MS,
  MAX_RETRY_DELAY_MS, defaultReadHandOffMs
} from './flights.js'
export const DEFAULT_DEADLINE_MS = 30_000
/** a chunk that missed its deadline fails further reads at once for this long (a later read tries it again) */
export const DEFAULT_RETRY_STALLED_AFTER_MS = 1_000
/** chunks whose first wait is remembered (the oldest are forgotten first) */
const MAX_REMEMBERED_WAITS = 16_384

/**
 * When each missing chunk was first waited for, so that a read's deadline is the chunk's, not the read's: the
 * kernel retries a page whose readahead failed (and FUSE and EROFS split one application read into several), and
 * each retry used to start the same stalled chunk's deadline over. A chunk waited for longer than the deadline
 * fails at once until `retryAfterMs` have passed since its deadline; then a new read tries it afresh.
 */
class ChunkDeadlines {
  private readonly since = new Map<string, number>()
  constructor (private readonly deadlineMs: number, private readonly retryAfterMs: number) {}

  /** ms left for a read wanting `key` that may wait `readMs` from `now` (≤ 0: fail now) */
  left (key: string, now: number, readMs: number): number {
    let t = this.since.get(key)
    if (t === undefined || now - t > this.deadlineMs + this.retryAfterMs) {
      if (t !== undefined) this.since.delete(key)
      t = now
      this.since.set(key, t)
      if (this.since.size > MAX_REMEMBERED_WAITS) this.since.delete(this.since.keys().next().value as string)
    }
    return Math.min(readMs, t + this.deadlineMs - now)
  }

  /** the chunk arrived: the next wait for it (after an eviction) starts afresh */
  done (key: string): void { this.since.delete(key) }
}

export class Fetcher {
  readonly metrics = new FetchMetrics()
  private readonly cache: ChunkCache
  private readonly flights: Flights
  private readonly log: Logger | undefined
  private readonly deadlineMs: number
  private readonly verifyCacheReads: boolean | 'once'
  private readonly chunkDeadlines: ChunkDeadlines

  constructor (components: FetcherComponents, init: FetcherInit = {}) {
    this.cache = components.cache
    this.log = components.logger?.forComponent('rafspeer:fetcher')
    this.deadlineMs = init.deadlineMs ?? DEFAULT_DEADLINE_MS
    this.flights = new Flights({ cache: components.cache, sources: components.sources, metrics: this.metrics, log: this.log }, { ...init, deadlineMs: this.deadlineMs })
    this.verifyCacheReads = init.verifyCacheReads ?? false
    this.chunkDeadlines = new ChunkDeadlines(this.deadlineMs, init.retryStalledAfterMs ?? Math.min(this.deadlineMs, DEFAULT_RETRY_STALLED_AFTER_MS))
  }

  get counters (): FetchCounters { return this.metrics.snapshot() }
  drainSamples (): FetchSample[] { return this.metrics.drainSamples() }

  start (): void { this.flights.start() }

  /** Aborts every fetch; waiting readers reject. */
  stop (): void { this.flights.stop() }

  /** Bytes [offset, offset+length) of file `nid` (clamped at EOF) in a new buffer; see `readPieces`. */
  async read (image: FetchImage, nid: number, offset: number, length: number, opts: ReadOptions = {}): Promise<Buffer> {
    const pieces = image.reader.mapRange(nid, offset, length)
    const last = pieces.at(-1)
    const buf = Buffer.allocUnsafe(last === undefined ? 0 : last.fileOffset + last.length - pieces[0]!.fileOffset)
    await this.readPieces(image, pieces, buf, opts)
    return buf
  }

  /**
   * Fills `buf` from 0 with the bytes of `pieces` (one file's range, in file order, as `RafsReader.mapRange`
   * gives them) and resolves how many it wrote. Verified cached spans are read straight into `buf`; the rest are
   * fetched. Rejects with RAFSPEER_ERR_READ_TIMEOUT past the deadline, RAFSPEER_ERR_ABORTED when `opts.signal`
   * fires, RAFSPEER_ERR_DIGEST_MISMATCH when the sources only gave bad bytes, or the sources' last error; once it
   * settles, nothing writes into `buf` any more.
   */
  async readPieces (image: FetchImage, pieces: MappedPiece[], buf: Buffer, opts: ReadOptions = {}): Promise<number> {
    const counters = this.metrics.counters
    counters.reads++
    if (pieces.length === 0) return 0
    const start = pieces[0]!.fileOffset
    const last = pieces[pieces.length - 1]!
    const total = last.fileOffset + last.length - start
    if (buf.length < total) throw new RangeError(`a read of ${total} bytes into a buffer of ${buf.length}`)

    // the hot path: every piece verified in the cache, one pread per run of pieces contiguous in a blob's view
    const rest = await this.readVerified(image, pieces, buf, start)
    if (rest.length > 0) {
      await this.readSlow(image, rest, opts, (piece, plain, signal) => {
        // a read that gave up has answered its caller, who may reuse `buf`: nothing is copied after that
        if (signal.aborted) return
        plain.copy(buf, piece.fileOffset - start, piece.chunkOffset, piece.chunkOffset + piece.length)
      })
    }
    counters.readBytes += total
    return total
  }

  /**
   * One whole chunk of `image`, verified, in a buffer of its own: a verified cached chunk is one read of the cache,
   * a fetched one is the fetch's own plaintext (not copied; shared with other readers of it: do not write to it).
   * For callers that consume whole chunks (a registry mirror's pieces). Rejects like `readPieces`.
   */
  async readChunk (image: FetchImage, chunk: ChunkInfo, opts: ReadOptions = {}): Promise<Buffer> {
    const counters = this.metrics.counters
    counters.reads++
    const blobId = this.blobOf(image, chunk).blobId
    let out: Buffer | undefined
    if (this.cache.isVerified(blobId, chunk.index)) {
      const buf = Buffer.allocUnsafe(chunk.uncompressedSize)
      if (await this.cache.readVerifiedInto(blobId, chunk.uncompressedOffset, chunk.uncompressedSize, buf, 0)) {
        counters.bytesBySource.cache += buf.length
        counters.chunksFromCache++
        out = buf
      }
    }
    if (out === undefined) {
      const whole: MappedPiece = { chunk, chunkOffset: 0, length: chunk.uncompressedSize, fileOffset: chunk.uncompressedOffset }
      await this.readSlow(image, [whole], opts, (_piece, plain) => { out = plain })
    }
    counters.readBytes += out!.length
    return out!
  }

  /** Reads the pieces whose chunks are verified in the cache into `buf`; returns the pieces it did not read. */
  private async readVerified (image: FetchImage, pieces: MappedPiece[], buf: Buffer, start: number): Promise<MappedPiece[]> {
    const rest: MappedPiece[] = []
    let i = 0
    while (i < pieces.length) {
      const first = pieces[i]!
      const blobId = this.blobOf(image, first.chunk).blobId
      if (!this.cache.isVerified(blobId, first.chunk.index)) { rest.push(first); i++; continue }
      const viewStart = first.chunk.uncompressedOffset + first.chunkOffset
      let len = first.length
      let j = i + 1
      while (j < pieces.length) {
        const p = pieces[j]!
        if (p.chunk.blobIndex !== first.chunk.blobIndex || p.chunk.uncompressedOffset + p.chunkOffset !== viewStart + len ||
          !this.cache.isVerified(blobId, p.chunk.index)) break
        len += p.length
        j++
      }
      if (await this.cache.readVerifiedInto(blobId, viewStart, len, buf, first.fileOffset - start)) {
        this.metrics.counters.bytesBySource.cache += len
        this.metrics.counters.chunksFromCache += j - i
      } else {
        // evicted meanwhile: these go the slow way
        for (let k = i; k < j; k++) rest.push(pieces[k]!)
      }
      i = j
    }
    return rest
  }

  /**
   * The pieces not verified in the cache: read and checked from the cache, copied locally, or fetched; each
   * chunk's plaintext goes to `sink` (with the read's signal: aborted once the read gave up).
   */
  private async readSlow (image: FetchImage, pieces: MappedPiece[], opts: ReadOptions,
    sink: (piece: MappedPiece, plain: Buffer, signal: AbortSignal) => void): Promise<void> {
    const deadlineMs = opts.deadlineMs ?? this.deadlineMs
    const startedAt = Date.now()
    const deadline = AbortSignal.timeout(deadlineMs)
    // aborted when a chunk the read waits for reaches its own deadline first (see ChunkDeadlines)
    const chunkDeadline = new AbortController()
    let chunkTimer: NodeJS.Timeout | undefined
    const signal = AbortSignal.any(opts.signal === undefined ? [deadline, chunkDeadline.signal] : [deadline, chunkDeadline.signal, opts.signal])
    const what = `read of ${pieces.length} piece(s) at file offset ${pieces[0]!.fileOffset}`
    const waiting = this.flights.waiting()
    const place = (piece: MappedPiece, plain: Buffer): void => { sink(piece, plain, signal) }
    const work = async (): Promise<void> => {
      const misses: MappedPiece[] = []
      await Promise.all(pieces.map(async piece => {
        const blob = this.blobOf(image, piece.chunk)
        const plain = this.cache.has(blob.blobId, piece.chunk.index)
          ? await this.fromCache(blob.blobId, piece.chunk)
          : undefined
        if (plain === undefined) { misses.push(piece); return }
        place(piece, plain)
        this.metrics.counters.bytesBySource.cache += piece.length
      }))
      if (misses.length === 0) return
      const copied = await Promise.all(misses.map(async piece => await this.copyLocal(this.blobOf(image, piece.chunk).blobId, piece.chunk)))
      const fetches: MappedPiece[] = []
      misses.forEach((piece, i) => {
        const plain = copied[i]
        if (plain === undefined) { fetches.push(piece); return }
        place(piece, plain)
        this.metrics.counters.bytesBySource.cache += piece.length
      })
      if (fetches.length === 0) return
      const now = Date.now()
      let left = startedAt + deadlineMs - now
      for (const p of fetches) left = Math.min(left, this.chunkDeadlines.left(flightKey(this.blobOf(image, p.chunk).blobId, p.chunk.index), now, left))
      if (left <= 0) throw new ReadTimeoutError(`${what} (a chunk it needs missed its deadline just before)`, deadlineMs)
      if (left < startedAt + deadlineMs - now) {
        chunkTimer = setTimeout(() => { chunkDeadline.abort(new ReadTimeoutError(what, deadlineMs)) }, left)
        chunkTimer.unref()
      }
      const byBlob = new Map<number, ChunkInfo[]>()
      for (const p of fetches) {
        const list = byBlob.get(p.chunk.blobIndex)
        if (list === undefined) byBlob.set(p.chunk.blobIndex, [p.chunk])
        else list.push(p.chunk)
      }
      const flights = new Map<string, Flight>()
      for (const [blobIndex, chunks] of byBlob) {
        const blob = this.blobOf(image, chunks[0]!)
        const neighbour = (ci: number): ChunkInfo | undefined => {
          try { return image.reader.chunkInfo(blobIndex, ci) } catch { return undefined }
        }
        for (const f of this.flights.join(blob, chunks, opts.priority ?? 'read', waiting, neighbour)) flights.set(f.key, f)
      }
      await Promise.all(fetches.map(async piece => {
        const key = flightKey(this.blobOf(image, piece.chunk).blobId, piece.chunk.index)
        place(piece, await flights.get(key)!.promise)
        this.chunkDeadlines.done(key)
      }))
    }
    const waited = (): void => {
      const c = this.metrics.counters
      c.readWaitMaxMs = Math.max(c.readWaitMaxMs, Math.round(Date.now() - startedAt))
    }
    try {
      await raceSignal(work(), signal, {
        translateError: () => deadline.aborted || chunkDeadline.signal.aborted
          ? new ReadTimeoutError(what, deadlineMs)
          : errorCode(opts.signal?.reason) !== undefined ? opts.signal!.reason : new FetchAbortedError(what, { cause: opts.signal?.reason })
      })
    } catch (err) {
      waited()
      clearTimeout(chunkTimer)
      waiting.release(true)
      if (errorCode(err) === 'RAFSPEER_ERR_READ_TIMEOUT') {
        this.metrics.counters.readTimeouts++
        this.log?.warn('%s', (err as Error).message)
      }
      throw err
    }
    waited()
    clearTimeout(chunkTimer)
    // amplified chunks of our batches keep coming, for the cache
    waiting.release(false)
  }

  /** Whether the cache holds chunk `ci` of the blob (cheap, synchronous). */
  cached (blobId: string, ci: number): boolean { return this.cache.has(blobId, ci) }

  /** Makes `chunks` of `blob` present in the cache (prefetch, read-ahead): fetched in contiguous batches, verified, cached. */
  async ensureChunks (blob: RafsBlobInfo, chunks: ChunkInfo[], opts: EnsureOptions = {}): Promise<void> {
    let missing = chunks.filter(c => !this.cache.has(blob.blobId, c.index))
    if (missing.length === 0) return
    if (this.cache.findByDigest !== undefined) {
      const copied = await Promise.all(missing.map(async c => await this.copyLocal(blob.blobId, c)))
      missing = missing.filter((_c, i) => copied[i] === undefined)
      if (missing.length === 0) return
    }
    const waiting = this.flights.waiting()
    try {
      const gaps = opts.fillGaps
      const flights = this.flights.join(blob, missing, opts.priority ?? 'prefetch', waiting, gaps?.neighbour,
        gaps !== undefined ? { amplifyBytes: 0, gapBytes: gaps.maxGapBytes } : undefined)
      // prefetch is done when the cache has the chunks (or refused them), not merely when they arrived
      const all = Promise.all(flights.map(async f => { await f.promise; await f.stored }))
      await (opts.signal === undefined ? all : raceSignal(all, opts.signal, { translateError: () => new FetchAbortedError('prefetch', { cause: opts.signal?.reason }) }))
    } catch (err) {
      waiting.release(true)
      throw err
    }
    waiting.release(false)
  }

  private blobOf (image: FetchImage, chunk: ChunkInfo): RafsBlobInfo {
    const blob = image.blobs[chunk.blobIndex]
    if (blob === undefined) throw new RangeError(`chunk ${chunk.index} names blob ${chunk.blobIndex}, the image has ${image.blobs.length}`)
    return blob
  }

  /** A present chunk read whole from the cache (checked against its digest per `verifyCacheReads`), or undefined. */
  private async fromCache (blobId: string, chunk: ChunkInfo): Promise<Buffer | undefined> {
    try {
      const plain = await this.cache.readChunk(blobId, chunk, this.verifyCacheReads !== false ? { verify: this.verifyCacheReads } : undefined)
      if (plain === undefined) return undefined
      if (plain.length !== chunk.uncompressedSize) throw new Error(`cache returned ${plain.length} bytes, chunk has ${chunk.uncompressedSize}`)
      this.metrics.counters.chunksFromCache++
      return plain
    } catch (err) {
      this.metrics.counters.cacheReadFailures++
      this.log?.warn('cache read of chunk %d of blob %s failed, fetching it: %s', chunk.index, blobId, describeError(err))
      return undefined
    }
  }

  /** The chunk copied from another cached blob holding the same digest (verified on the way), or undefined. */
  private async copyLocal (blobId: string, chunk: ChunkInfo): Promise<Buffer | undefined> {
    const { findByDigest, copyChunk } = this.cache
    if (findByDigest === undefined || copyChunk === undefined) return undefined
    try {
      const from = await findByDigest.call(this.cache, chunk.digest, { exceptBlobId: blobId })
      if (from === undefined || from.chunk.uncompressedSize !== chunk.uncompressedSize) return undefined
      if (!(await copyChunk.call(this.cache, from, { blobId, chunk }))) return undefined
      const plain = await this.cache.readChunk(blobId, chunk)
      if (plain === undefined || plain.length !== chunk.uncompressedSize) return undefined
      this.metrics.counters.chunksCopied++
      return plain
    } catch (err) {
      this.log?.warn('local copy of chunk %d of blob %s failed, fetching it: %s', chunk.index, blobId, describeError(err))
      return undefined
    }
  }
}
