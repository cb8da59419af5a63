/**
 * The front half of a blob writer: cuts each file into chunks, packs the chunks of many files into batches that
 * the worker pool digests and compresses, and hands the processed chunks back strictly in the order they came
 * in, so the blob's bytes do not depend on which worker finished first.
 *
 * A Uint8Array is copied into the open batch before `add` returns, so the caller may reuse its buffer at once;
 * a stream is taken piece by piece, with backpressure once a few batches are in flight.
 */
import { chunkPool, type ChunkPool } from './chunk-pool.js'
import { DIGEST_SIZE, newBatch, type ChunkBatch } from './chunk-batch.js'
import type { Compressor, Digester } from './layout.js'
import type { ChunkInfo } from './model.js'

const BATCH_BYTES = 4 << 20
const BATCH_CHUNKS = 1024
// enough to keep every worker busy while the main thread stores the batch before
const MAX_INFLIGHT = 4

export interface ProcessedChunk {
  /** a view that is reused once the store call returns: copy to keep */
  digest: Uint8Array
  raw: Buffer
  /** the compressed bytes when compression paid */
  packed: Buffer | undefined
  /** where the chunk starts in the file that brought it */
  fileOffset: number
}

/** Stores (or deduplicates) one chunk; called one chunk at a time, in file order. */
export type StoreChunk = (c: ProcessedChunk) => Promise<ChunkInfo>

interface PendingFile {
  chunks: ChunkInfo[]
  /** chunks handed to a batch and not stored yet */
  waiting: number
  sealed: boolean
  settled: boolean
  resolve: (chunks: ChunkInfo[]) => void
  reject: (err: unknown) => void
}

interface OpenBatch {
  batch: ChunkBatch
  bytes: Buffer
  fill: number
  files: PendingFile[]
  offsets: number[]
}

export class ChunkFeed {
  readonly #batchBytes: number
  readonly #pool: ChunkPool
  #open: OpenBatch | undefined
  readonly #spare: ChunkBatch[] = []
  /** the tail of the ordered chain that stores batch after batch */
  #stored: Promise<void> = Promise.resolve()
  readonly #inflight: Array<Promise<void>> = []
  /** the tail of the intakes that had to wait for a stream before them */
  #intake: Promise<void> | undefined
  #flushQueued = false
  #flushWanted = false
  /** one stream is taken at a time, so one accumulator for its partial chunk suffices */
  #acc: Buffer | undefined
  readonly #unsettled = new Set<PendingFile>()
  #failure: unknown
  #stopped: Error | undefined

  /**
   * `unusable` makes the error that files added after a failure get (the files in flight get the failure itself).
   */
  constructor (readonly compressor: Compressor, readonly digester: Digester, readonly chunkSize: number,
    readonly store: StoreChunk, readonly unusable: (cause: unknown) => Error, pool?: ChunkPool) {
    this.#batchBytes = Math.max(BATCH_BYTES, chunkSize)
    this.#pool = pool ?? chunkPool()
  }

  /** the first error of a store or of the pool, after which nothing more is stored */
  get failure (): unknown { return this.#failure }

  add (data: AsyncIterable<Uint8Array> | Uint8Array): Promise<ChunkInfo[]> {
    let resolve!: PendingFile['resolve']
    let reject!: PendingFile['reject']
    const promise = new Promise<ChunkInfo[]>((res, rej) => { resolve = res; reject = rej })
    const file: PendingFile = { chunks: [], waiting: 0, sealed: false, settled: false, resolve, reject }
    this.#unsettled.add(file)
    if (data instanceof Uint8Array && this.#intake === undefined) {
      try {
        this.#takeBytes(file, data)
      } catch (err) {
        this.#settle(file, err)
      }
      return promise
    }
    const own = data instanceof Uint8Array ? Buffer.from(data) : data
    const run = (this.#intake ?? Promise.resolve()).then(async () => {
      if (own instanceof Uint8Array) this.#takeBytes(file, own)
      else await this.#takeStream(file, own)
    }).catch((err) => { this.#settle(file, err) })
    this.#intake = run
    void run.then(() => { if (this.#intake === run) this.#intake = undefined })
    return promise
  }

  /** Resolves once everything added so far is stored; rejects when that can no longer happen. */
  async drain (): Promise<void> {
    while (this.#intake !== undefined) await this.#intake
    if (this.#open !== undefined && this.#stopped === undefined) this.#dispatch()
    await this.#stored
    if (this.#stopped !== undefined) throw this.#stopped
  }

  /** Stores nothing more: every file not yet settled, and every later one, is rejected with `reason`. */
  stop (reason: Error): void {
    this.#stopped ??= reason
    for (const f of this.#unsettled) this.#settle(f, reason)
  }

  /** Waits until no intake or store is running any more, whatever their outcome. */
  async quiet (): Promise<void> {
    while (this.#intake !== undefined) await this.#intake
    await this.#stored
  }

  #takeBytes (file: PendingFile, data: Uint8Array): void {
    if (this.#stopped !== undefined) throw this.#stopped
    const cs = this.chunkSize
    for (let o = 0; o < data.length; o += cs) this.#commit(file, data.subarray(o, o + cs), o)
    this.#seal(file)
  }

  async #takeStream (file: PendingFile, data: AsyncIterable<Uint8Array>): Promise<void> {
    const cs = this.chunkSize
    const acc = (this.#acc ??= Buffer.allocUnsafe(cs))
    let fill = 0
    let offset = 0
    for await (const piece of data) {
      if (!(piece instanceof Uint8Array)) throw new TypeError('file data must be Uint8Array pieces (no encoding)')
      if (this.#stopped !== undefined) throw this.#stopped
      let p = 0
      while (p < piece.length) {
        // whole chunks go straight from the piece into the batch: one copy, not two
        if (fill === 0 && piece.length - p >= cs) {
          this.#commit(file, piece.subarray(p, p + cs), offset)
          offset += cs
          p += cs
          continue
        }
        const n = Math.min(cs - fill, piece.length - p)
        acc.set(piece.subarray(p, p + n), fill)
        fill += n
        p += n
        if (fill === cs) {
          this.#commit(file, acc, offset)
          offset += cs
          fill = 0
        }
      }
      while (this.#inflight.length >= MAX_INFLIGHT) await this.#inflight[0]
    }
    if (fill > 0) this.#commit(file, acc.subarray(0, fill), offset)
    this.#seal(file)
  }

  #commit (file: PendingFile, chunk: Uint8Array, fileOffset: number): void {
    let o = this.#open
    if (o !== undefined && (o.fill + chunk.length > o.bytes.length || o.batch.count === BATCH_CHUNKS)) {
      this.#dispatch()
      o = undefined
    }
    if (o === undefined) {
      const batch = this.#spare.pop() ?? newBatch(this.compressor, this.digester, this.#batchBytes, BATCH_CHUNKS)
      batch.count = 0
      o = this.#open = { batch, bytes: Buffer.from(batch.data.buffer, 0, batch.data.byteLength), fill: 0, files: [], offsets: [] }
    }
    o.bytes.set(chunk, o.fill)
    o.fill += chunk.length
    o.batch.ends[o.batch.count++] = o.fill
    o.files.push(file)
    o.offsets.push(fileOffset)
    file.waiting++
  }

  #seal (file: PendingFile): void {
    file.sealed = true
    if (file.waiting === 0) this.#settle(file)
    // a caller that waits for this file before adding more must not wait for a batch that never fills
    if (!this.#flushQueued) {
      this.#flushQueued = true
      setImmediate(() => { this.#flush() })
    }
  }

  // A part-filled batch costs a whole batch's memory: while enough are in flight, the next stored one flushes.
  #flush (): void {
    this.#flushQueued = false
    if (this.#open === undefined || this.#stopped !== undefined) return
    if (this.#inflight.length < MAX_INFLIGHT) this.#dispatch()
    else this.#flushWanted = true
  }

  #settle (file: PendingFile, err?: unknown): void {
    if (file.settled) return
    file.settled = true
    this.#unsettled.delete(file)
    if (err !== undefined) file.reject(err)
    else file.resolve(file.chunks)
  }

  #dispatch (): void {
    const o = this.#open!
    this.#open = undefined
    const processed = this.#pool.run(o.batch)
    processed.catch(() => {}) // observed in order, below
    const stored = this.#stored
      .then(async () => { await processed; await this.#storeBatch(o) })
      .catch((err) => { this.#fail(err) })
    this.#stored = stored
    this.#inflight.push(stored)
    void stored.then(() => {
      this.#inflight.shift()
      if (this.#flushWanted) {
        this.#flushWanted = false
        this.#flush()
      }
    })
  }

  async #storeBatch (o: OpenBatch): Promise<void> {
    if (this.#stopped !== undefined) return // its files were rejected when the feed stopped
    const b = o.batch
    const data = o.bytes
    const out = Buffer.from(b.out.buffer, 0, b.out.byteLength)
    let start = 0
    let outPos = 0
    for (let i = 0; i < b.count; i++) {
      const end = b.ends[i]!
      const n = b.packed[i]!
      const info = await this.store({
        digest: b.digests.subarray(i * DIGEST_SIZE, (i + 1) * DIGEST_SIZE),
        raw: data.subarray(start, end),
        packed: n > 0 ? out.subarray(outPos, outPos + n) : undefined,
        fileOffset: o.offsets[i]!
      })
      outPos += n
      start = end
      const file = o.files[i]!
      if (file.settled) continue // its source failed after this chunk: the chunk is stored, the file is not
      file.chunks.push(info)
      if (--file.waiting === 0 && file.sealed) this.#settle(file)
    }
    // as many as were ever in flight at once: the window of a source that adds buffers, else MAX_INFLIGHT
    this.#spare.push(b)
  }

  #fail (err: unknown): void {
    this.#failure ??= err
    for (const f of this.#unsettled) this.#settle(f, err)
    this.#stopped ??= this.unusable(err)
  }
}
