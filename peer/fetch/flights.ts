/**
 * Chunks in flight: the single-flight, batched fetch of missing chunks through the sources in order. A chunk asked
 * for while it is being fetched joins that fetch; adjacent missing chunks of a blob go to a source as one batch
 * (amplified up to `amplifyBytes`); batches are admitted by the {@link FetchQueue} (reads before prefetch); each
 * source attempt is bounded by an idle deadline, and rounds over the sources retry with backoff. Every chunk is
 * checked against its digest exactly once (by the source through `verify`, or here when it did not), handed to
 * the readers waiting on it, then to the cache. A batch nobody waits for any more is abandoned.
 *
 * The {@link Fetcher} is its only user: it answers what the cache has and brings the rest here.
 */
import { raceSignal } from 'race-signal'
import { backoffDelay, delay, describeError, errorCode, type Logger } from '../../base/index.js'
import { digestChunk, type ChunkInfo, type RafsBlobInfo } from '../../rafs/index.js'
import { ChunkDigestMismatchError, FetchAbortedError, FetchFailedError, SourceProtocolError, isTransient } from './errors.js'
import type { FetchMetrics } from './metrics.js'
import { planBatches } from './plan.js'
import { FetchQueue, defaultPrefetchSlots, type FetchPriority, type QueueJob } from './queue.js'
import { sourceKind, type ChunkSource, type FetchedChunk } from './source.js'
import { spreading } from './swarm-wait.js'
import type { ChunkCache, FetcherInit } from './types.js'

export const DEFAULT_AMPLIFY_BYTES = 1 << 20
export const DEFAULT_MAX_BATCH_BYTES = 4 << 20
export const DEFAULT_CONCURRENCY = 8
export const DEFAULT_TIMEOUT_MS = 10_000
export const DEFAULT_RETRIES = 2
export const DEFAULT_RETRY_BASE_MS = 100
export const MAX_RETRY_DELAY_MS = 2_000
/** how early a timer may fire against `performance.now()` (libuv schedules from the loop's cached time) */
const TIMER_SLACK_MS = 15
/**
 * How long a read waits for a chunk on a source before the next one is asked too: two thirds of the read's deadline
 * (20 s of 30 s), a third kept for the registry. A swarm serves a read well within it (8 real nodes reading 64 MiB
 * at 4 MiB/s: longest read waits 2.7–5.4 s); a prefetch flood (16 nodes × 24 MiB prefetching all at 2 MiB/s) held
 * first reads 17–30 s, now and then past the deadline (EIO), on peers waiting on each other's PENDING. A third of the
 * deadline sent the flood's legitimately slow reads to the registry by the hundred (2.9–3.8 copies).
 */
export function defaultReadHandOffMs (deadlineMs: number | undefined): number {
  return deadlineMs === undefined || !Number.isFinite(deadlineMs) ? 20_000 : Math.max(1, Math.floor(deadlineMs * 2 / 3))
}

/** One chunk being fetched; readers wait on `promise`. */
export interface Flight {
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
  /** those of `waiters` that are reads (priority 'read'): a source asks for the chunk first (`urgent`) */
  readers: number
  /** since when a read waits for it (`performance.now()`; undefined while none does) */
  readSince: number | undefined
  batch: Batch
}

interface Batch {
  blob: RafsBlobInfo
  flights: Flight[]
  controller: AbortController
  job: QueueJob
}

/** The flights one read or ensure call waits on, released once when it finishes or gives up. */
export class Waiting {
  private readonly flights = new Set<Flight>()
  private released = false
  private read = false
  constructor (private readonly onAbandon: (f: Flight) => void) {}
  /** `read`: the caller is a read (its chunks are asked for first); one call's flights are all of one kind */
  add (f: Flight, read = false): void {
    if (this.flights.has(f)) return
    f.waiters++
    if (read) {
      if (f.readers++ === 0) f.readSince = performance.now()
      this.read = true
    }
    this.flights.add(f)
  }

  /** `abandoned`: the caller gave up (deadline, abort, error), so fetches nobody else waits for may stop. */
  release (abandoned: boolean): void {
    if (this.released) return
    this.released = true
    for (const f of this.flights) {
      f.waiters--
      if (this.read && --f.readers === 0) f.readSince = undefined
    }
    if (abandoned) for (const f of this.flights) this.onAbandon(f)
  }
}

/** How a chunk in flight is known: its blob and its ci index. */
export const flightKey = (blobId: string, ci: number): string => `${blobId}/${ci}`
const noop = (): void => {}

export interface FlightsComponents {
  cache: ChunkCache
  sources: ChunkSource[]
  metrics: FetchMetrics
  log?: Logger | undefined
}

export class Flights {
  private readonly cache: ChunkCache
  private readonly sources: ChunkSource[]
  private readonly metrics: FetchMetrics
  private readonly log: Logger | undefined
  private readonly inflight = new Map<string, Flight>()
  private readonly batches = new Set<Batch>()
  private readonly queue: FetchQueue
  private readonly amplifyBytes: number
  private readonly maxBatchBytes: number
  private readonly timeoutMs: number
  /** the longest idle deadline a source's `idleFactor` may make: a read's deadline keeps one `timeoutMs` for the next source */
  private readonly maxIdleMs: number
  private readonly retries: number
  private readonly retryBaseMs: number
  private readonly readHandOffMs: number
  private readonly downloadLimiter: FetcherInit['downloadLimiter']
  private readonly activity: FetcherInit['activity']
  private stopped = false

  constructor (components: FlightsComponents, init: FetcherInit = {}) {
    if (components.sources.length === 0) throw new RangeError('the fetcher needs at least one chunk source')
    this.cache = components.cache
    this.sources = [...components.sources]
    this.metrics = components.metrics
    this.log = components.log
    this.amplifyBytes = Math.max(0, init.amplifyBytes ?? DEFAULT_AMPLIFY_BYTES)
    this.maxBatchBytes = Math.max(1, init.maxBatchBytes ?? Math.max(DEFAULT_MAX_BATCH_BYTES, this.amplifyBytes))
    const concurrency = Math.max(1, init.concurrency ?? DEFAULT_CONCURRENCY)
    this.queue = new FetchQueue({
      concurrency,
      prefetchConcurrency: init.prefetchConcurrency ?? defaultPrefetchSlots(concurrency),
      ...(init.prefetchBytesPerSecond !== undefined ? { prefetchBytesPerSecond: init.prefetchBytesPerSecond } : {})
    })
    this.timeoutMs = init.timeoutMs ?? DEFAULT_TIMEOUT_MS
    this.maxIdleMs = Math.max(this.timeoutMs, (init.deadlineMs ?? Infinity) - this.timeoutMs)
    this.retries = Math.max(0, init.retries ?? DEFAULT_RETRIES)
    this.retryBaseMs = init.retryBaseMs ?? DEFAULT_RETRY_BASE_MS
    this.readHandOffMs = init.readHandOffMs ?? defaultReadHandOffMs(init.deadlineMs)
    this.downloadLimiter = init.downloadLimiter
    this.activity = init.activity
  }

  /** a flight left the in-flight map: the node's neighbours hear that it no longer fetches it */
  private landed (f: Flight): void {
    if (this.inflight.get(f.key) !== f) return
    this.inflight.delete(f.key)
    this.activity?.ended(f.batch.blob.blobId, f.chunk.index)
  }

  start (): void { this.stopped = false }

  /** Aborts every fetch; waiting readers reject. */
  stop (): void {
    this.stopped = true
    // aborting first lets each queued batch cancel itself and reject its flights
    for (const b of [...this.batches]) b.controller.abort(new FetchAbortedError('fetcher stopped'))
    this.queue.clear()
  }

  /** What one read or ensure call waits on, released once when it is done or gives up. */
  waiting (): Waiting { return new Waiting(f => { this.released(f) }) }

  /**
   * Flights for `chunks`: joined when in flight, else planned into new batches and queued. `shape` overrides the
   * fetcher's amplification and the largest gap filled between wanted chunks (both need `neighbour`).
   */
  join (blob: RafsBlobInfo, chunks: ChunkInfo[], priority: FetchPriority, waiting: Waiting,
    neighbour: ((ci: number) => ChunkInfo | undefined) | undefined, shape?: { amplifyBytes: number, gapBytes: number }): Flight[] {
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
        waiting.add(f, priority === 'read')
        out.push(f)
      } else fresh.push(c)
    }
    if (fresh.length === 0) return out
    const plan = planBatches({
      wanted: fresh,
      chunkCount: blob.chunkCount,
      ...(neighbour !== undefined ? { neighbour } : {}),
      fetchable: ci => !this.inflight.has(flightKey(blob.blobId, ci)) && !this.cache.has(blob.blobId, ci),
      amplifyBytes: shape?.amplifyBytes ?? this.amplifyBytes,
      ...(shape !== undefined ? { gapBytes: shape.gapBytes } : {}),
      maxBatchBytes: this.maxBatchBytes
    })
    for (const p of plan) {
      const batch = this.newBatch(blob, p.chunks, p.bytes, priority)
      for (const f of batch.flights) {
        if (p.extra.has(f.chunk)) this.metrics.counters.chunksAmplified++
        else { waiting.add(f, priority === 'read'); out.push(f) }
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
      promise.catch(noop) // amplified chunks may fail with nobody waiting
      let markStored!: () => void
      const stored = new Promise<void>(res => { markStored = res })
      const f: Flight = {
        key: flightKey(blob.blobId, chunk.index), chunk, promise, resolve, reject, settled: false, stored, markStored, waiters: 0, readers: 0, readSince: undefined, batch
      }
      batch.flights.push(f)
      this.inflight.set(f.key, f)
    }
    this.activity?.started(blob.blobId, chunks)
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
      this.landed(f)
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
        await delay(backoffDelay(attempt, { baseMs: this.retryBaseMs, maxMs: MAX_RETRY_DELAY_MS }), signal)
      }
    } catch (err) {
      this.finishBatch(batch, signal.aborted ? signal.reason : err)
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
        this.log?.warn('%s: %d chunks of blob %s failed (attempt %d): %s', source.name, remaining.length, batch.blob.blobId, round + 1, describeError(err))
      }
      await Promise.all(side)
      pending = remaining.filter(f => !declined.has(f.chunk.index))
    }
  }

  /** One source, one try, bounded by `timeoutMs` (times the source's `idleFactor`) of idleness; every chunk checked once and settled as it arrives. */
  private async attempt (source: ChunkSource, batch: Batch, flights: Flight[], decline?: (chunks: ChunkInfo[]) => void): Promise<void> {
    const counters = this.metrics.counters
    counters.sourceAttempts++
    const { blob } = batch
    const byCi = new Map(flights.map(f => [f.chunk.index, f]))
    // what this attempt asked for, for checking bytes: `byCi` loses each chunk once it arrives, this does not
    const asked = new Map(flights.map(f => [f.chunk.index, f.chunk]))
    // an idle deadline: a source that keeps delivering (slowly, under a bandwidth cap) is not cut off
    const idle = new AbortController()
    const idleMs = Math.min(this.maxIdleMs, this.timeoutMs * Math.max(1, source.idleFactor ?? 1))
    // a source whose chunks spread through the swarm meanwhile (its `holders` counts grew) is given another deadline
    let count: ((chunk: ChunkInfo) => number) | undefined
    const spread = (chunks: ChunkInfo[], seen: Map<number, number>): boolean => {
      const byIndex = new Map(chunks.map(c => [c.index, c]))
      return count !== undefined && spreading(chunks.map(c => c.index), ci => count!(byIndex.get(ci)!), seen)
    }
    const seenAtIdle = new Map<number, number>()
    const seenAtHandOff = new Map<number, number>()
    const onIdle = (): void => {
      const waiting = [...byCi.values()].filter(f => !f.settled && !handedOff.has(f.chunk.index) && !declined.has(f.chunk.index)).map(f => f.chunk)
      if (spread(waiting, seenAtIdle) && !idle.signal.aborted) {
        counters.idleExtensions++
        idleTimer = setTimeout(onIdle, idleMs)
        return
      }
      idle.abort(new FetchFailedError(`${source.name}: no chunk of blob ${blob.blobId} within ${idleMs} ms`))
    }
    let idleTimer = setTimeout(onIdle, idleMs)
    const progressed = (): void => { clearTimeout(idleTimer); idleTimer = setTimeout(onIdle, idleMs) }
    // every chunk left went to the next source (reads waited too long for them): the attempt ends, not failed
    const handedAll = new AbortController()
    const signal = AbortSignal.any([batch.controller.signal, idle.signal, handedAll.signal])
    const started = performance.now()
    let chunks = 0
    let bytes = 0
    const declined = new Set<number>()
    const onDecline = decline === undefined
      ? undefined
      : (list: ChunkInfo[]): void => {
          const mine = list.filter(c => byCi.has(c.index) && !declined.has(c.index))
          for (const c of mine) declined.add(c.index)
          if (mine.length > 0) decline(mine)
        }
    // plaintexts found good, and for which chunk: what a source checked is not hashed again when it is yielded
    const checked = new WeakMap<Buffer, number>()
    const verify = (chunk: ChunkInfo, plaintext: Buffer): boolean => {
      // checked against our own record of the chunk, never against what the source hands in
      const want = asked.get(chunk?.index)
      const ok = want !== undefined && Buffer.isBuffer(plaintext) && plaintext.length === want.uncompressedSize &&
        digestChunk(blob.digester, plaintext).equals(want.digest)
      if (ok) checked.set(plaintext, want.index)
      else counters.verifyFailures++
      return ok
    }
    // bytes still arriving keep the attempt alive (a 4 MiB range shared with many others on a capped link)
    let ended = false
    const progress = (n: number): void => { if (n > 0 && !ended && !signal.aborted) progressed() }
    // a read may join a chunk of this attempt while it runs (a prefetch's batch): asked for first from then on
    const urgent = (chunk: ChunkInfo): boolean => (byCi.get(chunk?.index)?.readers ?? 0) > 0
    // chunks a read waited for too long here: the next source was asked for them too (`readHandOffMs`)
    const handedOff = new Set<number>()
    const withdrawn = (chunk: ChunkInfo): boolean => handedOff.has(chunk?.index) || byCi.get(chunk?.index)?.settled === true
    const handOffTimer = onDecline !== undefined && Number.isFinite(this.readHandOffMs)
      ? this.watchReads(byCi, started, handedOff, c => spread([c], seenAtHandOff), due => {
        counters.readHandOffs += due.length
        this.log?.debug('%s: %d chunks of blob %s a read waited %d ms for: asked of the next source too', source.name, due.length, blob.blobId, this.readHandOffMs)
        decline!(due)
        if ([...byCi.values()].every(f => f.settled || handedOff.has(f.chunk.index))) handedAll.abort(new Error('handed off'))
      })
      : undefined
    const it = source.fetch(blob, flights.map(f => f.chunk), {
      signal, verify, progress, urgent, withdrawn, holders: c => { count = c }, ...(onDecline !== undefined ? { decline: onDecline } : {})
    })[Symbol.asyncIterator]()
    try {
      for (;;) {
        const r: IteratorResult<FetchedChunk> = await raceSignal(it.next(), signal)
        if (r.done === true) break
        progressed()
        const { chunk, plaintext } = r.value
        const f = chunk === undefined || declined.has(chunk.index) ? undefined : byCi.get(chunk.index)
        if (f === undefined || !Buffer.isBuffer(plaintext)) {
          throw new SourceProtocolError(source.name, `sent chunk ${String(chunk?.index)} of blob ${blob.blobId}, which was not asked for (or was sent twice)`)
        }
        byCi.delete(chunk.index)
        // handed to the next source too, which was first (or this one is, and the other's copy is dropped there)
        if (f.settled) {
          if (byCi.size > 0 && [...byCi.values()].every(x => x.settled || handedOff.has(x.chunk.index))) break
          continue
        }
        if (checked.get(plaintext) !== f.chunk.index) {
          if (plaintext.length !== f.chunk.uncompressedSize) {
            counters.verifyFailures++
            throw new SourceProtocolError(source.name, `sent ${plaintext.length} bytes for chunk ${chunk.index} of blob ${blob.blobId}, it has ${f.chunk.uncompressedSize}`)
          }
          if (!digestChunk(blob.digester, plaintext).equals(f.chunk.digest)) {
            counters.verifyFailures++
            throw new ChunkDigestMismatchError(source.name, blob.blobId, chunk.index, f.chunk.digest)
          }
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
        counters.chunksFetched++
        counters.bytesBySource[sourceKind(source.name)] += plaintext.length
        // a batch a read started waiting on was promoted: its bytes are the read's
        if (batch.job.priority === 'prefetch') { counters.prefetchChunks++; counters.prefetchBytes += plaintext.length }
        this.deliver(blob, f, plaintext)
      }
    } catch (err) {
      if (!handedAll.signal.aborted || batch.controller.signal.aborted || idle.signal.aborted) {
        this.metrics.sample({ source: source.name, ms: performance.now() - started, chunks, bytes, ok: false })
        throw idle.signal.aborted && !batch.controller.signal.aborted ? idle.signal.reason : err
      }
    } finally {
      ended = true
      clearTimeout(idleTimer)
      clearTimeout(handOffTimer?.())
      // never awaited: a source stuck in its own await must not hold us
      void Promise.resolve().then(async () => await it.return?.()).catch(noop)
    }
    this.metrics.sample({ source: source.name, ms: performance.now() - started, chunks, bytes, ok: true })
  }

  /**
   * Watches the chunks of `byCi` reads wait for: one a read has waited for `readHandOffMs` on this attempt (counted
   * from `since`, the attempt's start, or from when the read came, whichever is later) goes to `handOff`, once.
   * Looked at when the first could be due, and at least every `readHandOffMs`: a read that comes after a look is
   * due no sooner than the next. Returns the current timer (to clear when the attempt ends).
   */
  private watchReads (byCi: ReadonlyMap<number, Flight>, since: number, handedOff: Set<number>, spreadingNow: (c: ChunkInfo) => boolean,
    handOff: (due: ChunkInfo[]) => void): () => NodeJS.Timeout {
    // per chunk, when the quarter more it was given ends: looked at once, whenever the timer fires
    const extendedUntil = new Map<number, number>()
    const check = (): void => {
      const now = performance.now()
      const due: ChunkInfo[] = []
      let next = now + this.readHandOffMs
      for (const f of byCi.values()) {
        if (f.settled || f.readSince === undefined || handedOff.has(f.chunk.index)) continue
        const at = Math.max(f.readSince, since) + this.readHandOffMs
        const until = extendedUntil.get(f.chunk.index)
        if (at > now) next = Math.min(next, at)
        // still spreading through the swarm: a quarter more, then handed off all the same (a chunk a thousand nodes
        // want at once spreads slowly at first; handed off as soon as due, 5,172 of them stampeded the registry in
        // the model, 171 copies; at a quarter more, 117 and 2.8 copies; never, a prefetch flood's read passed its
        // deadline). A timer may fire a few milliseconds early (libuv counts from the loop's cached clock): the
        // quarter is given once, and its end is due within that slack
        else if (until === undefined && now < at + this.readHandOffMs / 4 - TIMER_SLACK_MS && spreadingNow(f.chunk)) {
          extendedUntil.set(f.chunk.index, at + this.readHandOffMs / 4)
          next = Math.min(next, at + this.readHandOffMs / 4)
        } else if (until !== undefined && now < until - TIMER_SLACK_MS) next = Math.min(next, until)
        else due.push(f.chunk)
      }
      timer = setTimeout(check, Math.max(1, next - now))
      if (due.length === 0) return
      for (const c of due) handedOff.add(c.index)
      handOff(due)
    }
    let timer = setTimeout(check, this.readHandOffMs)
    return () => timer
  }

  /** Hands a verified chunk to its readers, then to the cache; the flight stays joinable until the cache has it. */
  private deliver (blob: RafsBlobInfo, f: Flight, plaintext: Buffer): void {
    this.settle(f, { plain: plaintext })
    this.cache.putChunk(blob.blobId, f.chunk, plaintext).catch((err: unknown) => {
      this.metrics.counters.cachePutFailures++
      this.log?.warn('caching chunk %d of blob %s failed (%s), served from memory', f.chunk.index, blob.blobId, errorCode(err) ?? describeError(err))
    }).finally(() => {
      this.landed(f)
      f.markStored()
    })
  }
}
