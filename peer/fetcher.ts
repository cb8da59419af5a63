/**
 * The fetch pipeline of one node (design §3): a file range → chunks → cache hits served at once, misses fetched
 * in batches from the sources in order (neighbours, then the registry), every chunk verified against its digest
 * before it is cached or returned. Concurrent readers of one chunk share one fetch; reads go before prefetch;
 * every read has a deadline and never hangs.
 *
 * @example
 * ```ts
 * const fetcher = new Fetcher({ cache, sources: [new RegistrySource({ client }, { repository })] }, { deadlineMs: 5000 })
 * const bytes = await fetcher.read({ reader, blobs: reader.blobs }, reader.lookup('/etc/os-release'), 0, 4096)
 * ```
 */
import { digestChunk, type ChunkInfo, type RafsBlobInfo } from '../rafs/index.js'
import { sourceKind, type ChunkSource } from './chunk-source.js'
import {
  ChunkDigestMismatchError, FetchAbortedError, FetchFailedError, SourceProtocolError, isTransient
} from './fetch-errors.js'
import { raceAbort, sleep, withDeadline } from './fetch-abort.js'
import { FetchMetrics } from './fetch-metrics.js'
import { planBatches } from './fetch-plan.js'
import { FetchQueue, type FetchPriority, type QueueJob } from './fetch-queue.js'
import type {
  ChunkCache, EnsureOptions, FetchCounters, FetchImage, FetchSample, FetcherComponents, FetcherInit, Log, ReadOptions
} from './fetch-types.js'

export const DEFAULT_AMPLIFY_BYTES = 1 << 20
export const DEFAULT_MAX_BATCH_BYTES = 4 << 20
export const DEFAULT_CONCURRENCY = 8
export const DEFAULT_TIMEOUT_MS = 10_000
export const DEFAULT_RETRIES = 2
export const DEFAULT_RETRY_BASE_MS = 100
export const MAX_RETRY_DELAY_MS = 2_000
export const DEFAULT_DEADLINE_MS = 30_000

/** One chunk being fetched; readers wait on `promise`. */
interface Flight {
  key: string
  chunk: ChunkInfo
  promise: Promise<Buffer>
  resolve: (b: Buffer) => void
  reject: (e: unknown) => void
  settled: boolean
  /** settles once the cache took the chunk or refused it (never rejects) */
  stored: Promise<void>
  markStored: () => void
  /** readers (and prefetch calls) still waiting; 0 for amplified chunks nobody asked for */
  waiters: number
  batch: Batch
}

interface Batch {
  blob: RafsBlobInfo
  flights: Flight[]
  controller: AbortController
  job: QueueJob
}

/** The flights one read or ensure call waits on, released once when it finishes or gives up. */
class Waiting {
  private readonly flights = new Set<Flight>()
  private released = false
  constructor (private readonly onAbandon: (f: Flight) => void) {}
  add (f: Flight): void { f.waiters++; this.flights.add(f) }
  /** `abandoned`: the caller gave up (deadline, abort, error), so fetches nobody else waits for may stop. */
  release (abandoned: boolean): void {
    if (this.released) return
    this.released = true
    for (const f of this.flights) f.waiters--
    if (abandoned) for (const f of this.flights) this.onAbandon(f)
  }
}

const flightKey = (blobId: string, ci: number): string => `${blobId}/${ci}`

export class Fetcher {
  readonly metrics = new FetchMetrics()
  private readonly cache: ChunkCache
  private readonly sources: ChunkSource[]
  private readonly log: Log
  private readonly inflight = new Map<string, Flight>()
  private readonly batches = new Set<Batch>()
  private readonly queue: FetchQueue
  private readonly amplifyBytes: number
  private readonly maxBatchBytes: number
  private readonly timeoutMs: number
  private readonly retries: number
  private readonly retryBaseMs: number
  private readonly deadlineMs: number
  private readonly verifyCacheReads: boolean | 'once'
  private stopped = false
  private readonly downloadLimiter: FetcherInit['downloadLimiter']

  constructor (components: FetcherComponents, init: FetcherInit = {}) {
    if (components.sources.length === 0) throw new RangeError('the fetcher needs at least one chunk source')
    this.cache = components.cache
    this.sources = [...components.sources]
    this.log = components.logger?.forComponent('rafspeer:fetcher') ?? (() => {})
    this.amplifyBytes = Math.max(0, init.amplifyBytes ?? DEFAULT_AMPLIFY_BYTES)
    this.maxBatchBytes = Math.max(1, init.maxBatchBytes ?? Math.max(DEFAULT_MAX_BATCH_BYTES, this.amplifyBytes))
    const concurrency = Math.max(1, init.concurrency ?? DEFAULT_CONCURRENCY)
    this.queue = new FetchQueue({
      concurrency,
      prefetchConcurrency: init.prefetchConcurrency ?? Math.max(1, concurrency - Math.max(1, Math.floor(concurrency / 4))),
      ...(init.prefetchBytesPerSecond !== undefined ? { prefetchBytesPerSecond: init.prefetchBytesPerSecond } : {})
    })
    this.timeoutMs = init.timeoutMs ?? DEFAULT_TIMEOUT_MS
    this.retries = Math.max(0, init.retries ?? DEFAULT_RETRIES)
    this.retryBaseMs = init.retryBaseMs ?? DEFAULT_RETRY_BASE_MS
    this.deadlineMs = init.deadlineMs ?? DEFAULT_DEADLINE_MS
    this.verifyCacheReads = init.verifyCacheReads ?? false
    this.downloadLimiter = init.downloadLimiter
  }

  get counters (): FetchCounters { return this.metrics.snapshot() }
  drainSamples (): FetchSample[] { return this.metrics.drainSamples() }

  start (): void { this.stopped = false }

  /** Aborts every fetch; waiting readers reject. */
  stop (): void {
    this.stopped = true
    // aborting first lets each queued batch cancel itself and reject its flights
    for (const b of [...this.batches]) b.controller.abort(new FetchAbortedError('fetcher stopped'))
    this.queue.clear()
  }

  /**
   * Bytes [offset, offset+length) of file `nid` (clamped at EOF). Rejects with RAFSPEER_ERR_READ_TIMEOUT past the
   * deadline, RAFSPEER_ERR_DIGEST_MISMATCH when the sources only gave bad bytes, or the sources' last error.
   */
  async read (image: FetchImage, nid: number, offset: number, length: number, opts: ReadOptions = {}): Promise<Buffer> {
    const pieces = image.reader.mapRange(nid, offset, length)
    this.metrics.counters.reads++
    if (pieces.length === 0) return Buffer.alloc(0)
    const start = pieces[0]!.fileOffset
    const last = pieces[pieces.length - 1]!
    const out = Buffer.allocUnsafe(last.fileOffset + last.length - start)
    const priority = opts.priority ?? 'read'
    const waiting = new Waiting(f => this.released(f))

    const work = async (): Promise<void> => {
      const misses: typeof pieces = []
      await Promise.all(pieces.map(async piece => {
        const blob = this.blobOf(image, piece.chunk)
        const plain = await this.fromCache(blob.blobId, piece.chunk)
        if (plain === undefined) { misses.push(piece); return }
        plain.copy(out, piece.fileOffset - start, piece.chunkOffset, piece.chunkOffset + piece.length)
        this.metrics.counters.bytesBySource.cache += piece.length
      }))
      if (misses.length === 0) return
      // the same bytes under another blob of the cache: a local copy instead of a fetch
      const copied = await Promise.all(misses.map(async piece => await this.copyLocal(this.blobOf(image, piece.chunk).blobId, piece.chunk)))
      for (let i = misses.length - 1; i >= 0; i--) {
        const plain = copied[i]
        if (plain === undefined) continue
        const piece = misses[i]!
        plain.copy(out, piece.fileOffset - start, piece.chunkOffset, piece.chunkOffset + piece.length)
        this.metrics.counters.bytesBySource.cache += piece.length
        misses.splice(i, 1)
      }
      if (misses.length === 0) return
      const byBlob = new Map<number, ChunkInfo[]>()
      for (const p of misses) {
        const list = byBlob.get(p.chunk.blobIndex) ?? []
        list.push(p.chunk)
        byBlob.set(p.chunk.blobIndex, list)
      }
      const flights = new Map<string, Flight>()
      for (const [blobIndex, chunks] of byBlob) {
        const blob = this.blobOf(image, chunks[0]!)
        const neighbour = (ci: number): ChunkInfo | undefined => {
          try { return image.reader.chunkInfo(blobIndex, ci) } catch { return undefined }
        }
        for (const f of this.join(blob, chunks, priority, waiting, neighbour)) flights.set(f.key, f)
      }
      await Promise.all(misses.map(async piece => {
        const blob = this.blobOf(image, piece.chunk)
        const plain = await flights.get(flightKey(blob.blobId, piece.chunk.index))!.promise
        plain.copy(out, piece.fileOffset - start, piece.chunkOffset, piece.chunkOffset + piece.length)
      }))
    }

    const deadlineMs = opts.deadlineMs ?? this.deadlineMs
    const what = `read of nid ${nid} [${offset}, +${length})`
    try {
      await withDeadline(work(), deadlineMs, opts.signal, what)
    } catch (err) {
      waiting.release(true)
      if ((err as { code?: string }).code === 'RAFSPEER_ERR_READ_TIMEOUT') {
        this.metrics.counters.readTimeouts++
        this.log('%s', (err as Error).message)
      }
      throw err
    }
    // amplified chunks of our batches keep coming, for the cache
    waiting.release(false)
    this.metrics.counters.readBytes += out.length
    return out
  }

  /** Makes `chunks` of `blob` present in the cache (prefetch): fetched in contiguous batches, verified, cached. */
  async ensureChunks (blob: RafsBlobInfo, chunks: ChunkInfo[], opts: EnsureOptions = {}): Promise<void> {
    let missing = chunks.filter(c => !this.cache.has(blob.blobId, c.index))
    if (missing.length === 0) return
    if (this.cache.findByDigest !== undefined) {
      const copied = await Promise.all(missing.map(async c => await this.copyLocal(blob.blobId, c)))
      missing = missing.filter((_c, i) => copied[i] === undefined)
      if (missing.length === 0) return
    }
    const waiting = new Waiting(f => this.released(f))
    try {
      const flights = this.join(blob, missing, opts.priority ?? 'prefetch', waiting, undefined)
      // prefetch is done when the cache has the chunks (or refused them), not merely when they arrived
      const all = Promise.all(flights.map(async f => { await f.promise; await f.stored }))
      await (opts.signal === undefined ? all : raceAbort(all, opts.signal, 'prefetch'))
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

  private async fromCache (blobId: string, chunk: ChunkInfo): Promise<Buffer | undefined> {
    if (!this.cache.has(blobId, chunk.index)) return undefined
    try {
      const plain = await this.cache.readChunk(blobId, chunk, this.verifyCacheReads !== false ? { verify: this.verifyCacheReads } : undefined)
      if (plain === undefined) return undefined
      if (plain.length !== chunk.uncompressedSize) throw new Error(`cache returned ${plain.length} bytes, chunk has ${chunk.uncompressedSize}`)
      this.metrics.counters.chunksFromCache++
      return plain
    } catch (err) {
      this.metrics.counters.cacheReadFailures++
      this.log('cache read of chunk %d of blob %s failed, fetching it: %s', chunk.index, blobId, (err as Error).message)
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
      this.log('local copy of chunk %d of blob %s failed, fetching it: %s', chunk.index, blobId, (err as Error).message)
      return undefined
    }
  }

  /** Flights for `chunks`: joined when in flight, else planned into new batches and queued. */
  private join (blob: RafsBlobInfo, chunks: ChunkInfo[], priority: FetchPriority, waiting: Waiting,
    neighbour: ((ci: number) => ChunkInfo | undefined) | undefined): Flight[] {
    if (this.stopped) throw new FetchAbortedError('fetcher stopped')
    const out: Flight[] = []
    const fresh: ChunkInfo[] = []
    const seen = new Set<number>()
    for (const c of chunks) {
      if (seen.has(c.index)) continue
      seen.add(c.index)
      const f = this.inflight.get(flightKey(blob.blobId, c.index))
      // an abandoned batch may not have noticed its abort yet: its flights are not joinable
      if (f !== undefined && !f.batch.controller.signal.aborted) {
        this.metrics.counters.singleFlightJoins++
        if (priority === 'read') this.queue.promote(f.batch.job)
        waiting.add(f)
        out.push(f)
      } else fresh.push(c)
    }
    if (fresh.length === 0) return out
    const plan = planBatches({
      wanted: fresh,
      chunkCount: blob.chunkCount,
      ...(neighbour !== undefined ? { neighbour } : {}),
      fetchable: ci => !this.inflight.has(flightKey(blob.blobId, ci)) && !this.cache.has(blob.blobId, ci),
      amplifyBytes: this.amplifyBytes,
      maxBatchBytes: this.maxBatchBytes
    })
    for (const p of plan) {
      const batch = this.newBatch(blob, p.chunks, p.bytes, priority)
      for (const f of batch.flights) {
        if (p.extra.has(f.chunk)) this.metrics.counters.chunksAmplified++
        else { waiting.add(f); out.push(f) }
      }
      this.queue.add(batch.job)
    }
    return out
  }

  private newBatch (blob: RafsBlobInfo, chunks: ChunkInfo[], bytes: number, priority: FetchPriority): Batch {
    const batch: Batch = {
      blob,
      flights: [],
      controller: new AbortController(),
      job: { priority, cost: bytes, run: async () => { await this.runBatch(batch) } }
    }
    for (const chunk of chunks) {
      let resolve!: (b: Buffer) => void
      let reject!: (e: unknown) => void
      const promise = new Promise<Buffer>((res, rej) => { resolve = res; reject = rej })
      promise.catch(() => {}) // amplified chunks may fail with nobody waiting
      let markStored!: () => void
      const stored = new Promise<void>(resolve => { markStored = resolve })
      const f: Flight = {
        key: flightKey(blob.blobId, chunk.index), chunk, promise, resolve, reject, settled: false, stored, markStored, waiters: 0, batch
      }
      batch.flights.push(f)
      this.inflight.set(f.key, f)
    }
    this.batches.add(batch)
    batch.controller.signal.addEventListener('abort', () => {
      // a queued batch nobody waits for any more never starts; a running one stops at its next await
      if (this.queue.cancel(batch.job)) this.finishBatch(batch, batch.controller.signal.reason)
    }, { once: true })
    this.metrics.counters.batches++
    return batch
  }

  /** A waiter gave up: when nobody waits on any unsettled chunk of the batch, its fetch is abandoned. */
  private released (f: Flight): void {
    const b = f.batch
    if (b.controller.signal.aborted || f.settled) return
    if (b.flights.every(x => x.settled || x.waiters === 0)) {
      b.controller.abort(new FetchAbortedError(`fetch of ${b.flights.length} chunks of blob ${b.blob.blobId}: no reader left`))
    }
  }

  private settle (f: Flight, result: { plain: Buffer } | { err: unknown }): void {
    if (f.settled) return
    f.settled = true
    if ('plain' in result) f.resolve(result.plain)
    else {
      f.reject(result.err)
      f.markStored()
      if (this.inflight.get(f.key) === f) this.inflight.delete(f.key)
    }
  }

  private finishBatch (batch: Batch, err: unknown): void {
    for (const f of batch.flights) this.settle(f, { err })
    this.batches.delete(batch)
  }

  private async runBatch (batch: Batch): Promise<void> {
    const signal = batch.controller.signal
    let lastErr: unknown
    try {
      for (let attempt = 0; ; attempt++) {
        const errors: unknown[] = []
        await this.runSources(batch, 0, batch.flights, attempt, errors)
        if (errors.length > 0) lastErr = errors[errors.length - 1]
        const left = batch.flights.filter(f => !f.settled).length
        if (left === 0) return
        if (attempt >= this.retries || (lastErr !== undefined && !isTransient(lastErr))) {
          throw lastErr ?? new FetchFailedError(`no source delivered ${left} chunks of blob ${batch.blob.blobId} (sources: ${this.sources.map(s => s.name).join(', ')})`)
        }
        this.metrics.counters.retries++
        const base = Math.min(MAX_RETRY_DELAY_MS, this.retryBaseMs * 2 ** attempt)
        await sleep(base / 2 + Math.random() * base / 2, signal)
      }
    } catch (err) {
      this.finishBatch(batch, err)
    } finally {
      this.batches.delete(batch)
    }
  }

  /**
   * `flights` through the sources from index `from` on, each source getting what the previous ones did not
   * deliver. Chunks a source declines up front go on to the next sources at once, concurrently with the rest of
   * its attempt (a neighbour source declines the chunks nobody holds: this node fetches those from the registry
   * now, and neighbours waiting for them are not held up behind its other chunks). Failures land in `errors`.
   */
  private async runSources (batch: Batch, from: number, flights: Flight[], round: number, errors: unknown[]): Promise<void> {
    const signal = batch.controller.signal
    let pending = flights
    for (let i = from; i < this.sources.length; i++) {
      if (signal.aborted) throw signal.reason
      const remaining = pending.filter(f => !f.settled)
      if (remaining.length === 0) return
      const source = this.sources[i]!
      const declined = new Set<number>()
      const side: Array<Promise<void>> = []
      const decline = i + 1 < this.sources.length
        ? (chunks: ChunkInfo[]): void => {
            const fresh = chunks.filter(c => !declined.has(c.index))
            for (const c of fresh) declined.add(c.index)
            const set = new Set(fresh.map(c => c.index))
            const handOff = remaining.filter(f => set.has(f.chunk.index))
            if (handOff.length > 0) side.push(this.runSources(batch, i + 1, handOff, round, errors).catch((err: unknown) => { errors.push(err) }))
          }
        : undefined
      try {
        await this.attempt(source, batch, remaining, decline)
      } catch (err) {
        if (signal.aborted) { await Promise.allSettled(side); throw signal.reason }
        errors.push(err)
        this.log('%s: %d chunks of blob %s failed (attempt %d): %s', source.name, remaining.length, batch.blob.blobId, round + 1, (err as Error).message)
      }
      await Promise.all(side)
      pending = remaining.filter(f => !declined.has(f.chunk.index))
    }
  }

  /** One source, one try, bounded by `timeoutMs` of idleness; every chunk verified and settled as it arrives. */
  private async attempt (source: ChunkSource, batch: Batch, flights: Flight[], decline?: (chunks: ChunkInfo[]) => void): Promise<void> {
    this.metrics.counters.sourceAttempts++
    const { blob } = batch
    const byCi = new Map(flights.map(f => [f.chunk.index, f]))
    // an idle deadline: a source that keeps delivering (slowly, under a bandwidth cap) is not cut off
    const timeout = new AbortController()
    const onIdle = (): void => { timeout.abort(new DOMException(`no chunk within ${this.timeoutMs} ms`, 'TimeoutError')) }
    let idleTimer = setTimeout(onIdle, this.timeoutMs)
    const progressed = (): void => { clearTimeout(idleTimer); idleTimer = setTimeout(onIdle, this.timeoutMs) }
    const signal = AbortSignal.any([batch.controller.signal, timeout.signal])
    const started = performance.now()
    let chunks = 0
    let bytes = 0
    const declined = new Set<number>()
    const onDecline = decline === undefined
      ? undefined
      : (chunks: ChunkInfo[]): void => {
          const mine = chunks.filter(c => byCi.has(c.index) && !declined.has(c.index))
          for (const c of mine) declined.add(c.index)
          if (mine.length > 0) decline(mine)
        }
    const it = source.fetch(blob, flights.map(f => f.chunk), { signal, ...(onDecline !== undefined ? { decline: onDecline } : {}) })[Symbol.asyncIterator]()
    try {
      for (;;) {
        let r: IteratorResult<{ chunk: ChunkInfo, plaintext: Buffer }>
        try {
          r = await raceAbort(it.next(), signal, `${source.name} fetch`)
        } catch (err) {
          if (timeout.signal.aborted && !batch.controller.signal.aborted) {
            throw new FetchFailedError(`${source.name}: no chunk of blob ${blob.blobId} within ${this.timeoutMs} ms`, { cause: err })
          }
          throw err
        }
        if (r.done === true) break
        progressed()
        const { chunk, plaintext } = r.value
        const f = chunk === undefined || declined.has(chunk.index) ? undefined : byCi.get(chunk.index)
        if (f === undefined || !Buffer.isBuffer(plaintext)) {
          throw new SourceProtocolError(source.name, `sent chunk ${String(chunk?.index)} of blob ${blob.blobId}, which was not asked for (or was sent twice)`)
        }
        byCi.delete(chunk.index)
        if (plaintext.length !== f.chunk.uncompressedSize) {
          this.metrics.counters.verifyFailures++
          throw new SourceProtocolError(source.name, `sent ${plaintext.length} bytes for chunk ${chunk.index} of blob ${blob.blobId}, it has ${f.chunk.uncompressedSize}`)
        }
        const actual = digestChunk(blob.digester, plaintext)
        if (!actual.equals(f.chunk.digest)) {
          this.metrics.counters.verifyFailures++
          throw new ChunkDigestMismatchError(source.name, blob.blobId, chunk.index, f.chunk.digest, actual)
        }
        // the downlink is paid before the bytes count as received: a capped node takes them in at its rate
        // (the source is not idle meanwhile: the idle deadline restarts after the wait)
        if (this.downloadLimiter !== undefined) {
          clearTimeout(idleTimer)
          await this.downloadLimiter.take(plaintext.length, batch.controller.signal)
          progressed()
        }
        chunks++
        bytes += plaintext.length
        this.metrics.counters.chunksFetched++
        this.metrics.counters.bytesBySource[sourceKind(source.name)] += plaintext.length
        this.deliver(blob, f, plaintext)
      }
    } catch (err) {
      this.metrics.sample({ source: source.name, ms: performance.now() - started, chunks, bytes, ok: false })
      throw err
    } finally {
      clearTimeout(idleTimer)
      // never awaited: a source stuck in its own await must not hold us
      void Promise.resolve().then(async () => await it.return?.()).catch(() => {})
    }
    this.metrics.sample({ source: source.name, ms: performance.now() - started, chunks, bytes, ok: true })
  }

  /** Hands a verified chunk to its readers, then to the cache; the flight stays joinable until the cache has it. */
  private deliver (blob: RafsBlobInfo, f: Flight, plaintext: Buffer): void {
    this.settle(f, { plain: plaintext })
    this.cache.putChunk(blob.blobId, f.chunk, plaintext).catch((err: unknown) => {
      this.metrics.counters.cachePutFailures++
      this.log('caching chunk %d of blob %s failed (%s), served from memory', f.chunk.index, blob.blobId,
        (err as { code?: string }).code ?? (err as Error).message)
    }).finally(() => {
      if (this.inflight.get(f.key) === f) this.inflight.delete(f.key)
      f.markStored()
    })
  }
}
