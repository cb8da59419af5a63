/**
 * The blob cache: one sparse `<blob-id>.blob.data` file per blob in the uncompressed-view layout (§1, §14) and a
 * `CacheIndex` of what is present. Presence lives in memory (a bitmap per blob) and is mirrored in the index, so
 * a read of a cached chunk is one pread and nothing else.
 *
 * Ordering and durability:
 * - put: data first (pwrite at the chunk's uncompressed offset), then memory, then the index (group-committed);
 *   eviction: index first, then the hole. A marked chunk therefore always had its bytes written.
 * - No fdatasync per chunk. A process crash keeps the page cache, so written data survives; a power loss may lose
 *   data the index already calls present, which is why an open after an unclean shutdown re-verifies every chunk
 *   marked since the last clean checkpoint. A clean `close()` fdatasyncs every data file, then writes the
 *   checkpoint (`meta!clean`, `meta!checkpoint`) with a synchronous index write.
 */
import { EventEmitter } from 'node:events'
import { constants as fsc } from 'node:fs'
import { mkdir, open, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { describeError, silentLogger, type Logger } from '../base/index.js'
import { digestChunk, type RafsBlobInfo } from '../rafs/index.js'
import { BlobState, alignedSize, type ChunkWatcher } from './blob-state.js'
import type { BlobRecord, CacheIndex, ChunkMark, ChunkRecord, ImageRecord } from './cache-index.js'
import { hasFallocate, punchHoles, readFull, writeChunkData } from './chunk-io.js'
import { DigestMemo } from './digest-memo.js'
import { CacheError, isFullErrno } from './errors.js'
import { Evictor } from './evictor.js'
import { GroupCommit } from './group-commit.js'
import { ImageStore } from './image-store.js'
import { LevelCacheIndex } from './level-index.js'
import { beginSession, checkVersion, endRecovery, findBadChunks, loadBlobState, markClean } from './session.js'
import { DEFAULT_EVICTION_RANGE_BYTES, type BlobCacheInit, type CacheStats, type CachedChunk, type VerifyReport } from './types.js'

const BLOB_ID = /^[0-9a-f]{64}$/

/** What the cache tells its listeners. */
export interface BlobCacheEvents {
  /** digests of chunks now durably marked present (a node announces them to the swarm) */
  stored: [digests: Buffer[]]
  /** a chunk was marked present (written, or found at start) or absent (evicted, failed a check), synchronously */
  chunk: [blobId: string, index: number, present: boolean]
  /** a blob became known to the cache (its chunk count: `presence` answers for it from now on) */
  registered: [blobId: string]
}

export class BlobCache {
  readonly dir: string
  readonly events = new EventEmitter<BlobCacheEvents>()
  readonly capBytes: number | undefined
  readonly #index: CacheIndex
  readonly #log: Logger
  readonly #blobs = new Map<string, BlobState>()
  readonly #registering = new Map<string, Promise<void>>()
  readonly #commits: GroupCommit<ChunkMark>
  readonly #evictor: Evictor
  readonly #imageStore: ImageStore
  readonly #rangeBytes: number
  /** where digests were found or stored lately, and which are present nowhere: most `findByDigest` calls end here */
  readonly #digests = new DigestMemo<CachedChunk>()
  #generation = 0
  #closed = false
  readonly #counters = { hits: 0, misses: 0, verifyFailures: 0, writeFailures: 0, recoveryChecked: 0, recoveryBad: 0 }

  private constructor (dir: string, index: CacheIndex, init: BlobCacheInit) {
    this.dir = dir
    this.#index = index
    this.capBytes = init.capBytes
    this.#rangeBytes = init.evictionRangeBytes ?? DEFAULT_EVICTION_RANGE_BYTES
    this.#log = (init.logger ?? silentLogger).forComponent('rafspeer:cache')
    this.#imageStore = new ImageStore(index)
    this.#commits = new GroupCommit(async marks => await this.#commitMarks(marks))
    this.#evictor = new Evictor({
      index,
      log: this.#log,
      blobs: this.#blobs,
      total: () => this.#diskBytes()
    })
  }

  /**
   * Opens (or creates) a cache directory. Refuses an index of another format version
   * (`RAFSPEER_ERR_CACHE_VERSION`), re-verifies after an unclean shutdown, and loads presence into memory.
   */
  static async open (dir: string, init: BlobCacheInit = {}): Promise<BlobCache> {
    if (init.capBytes !== undefined && (!Number.isSafeInteger(init.capBytes) || init.capBytes < 0)) throw new TypeError(`capBytes must be a non-negative integer, got ${init.capBytes}`)
    await mkdir(dir, { recursive: true })
    if (init.capBytes !== undefined && !(await hasFallocate())) {
      throw new CacheError('RAFSPEER_ERR_CACHE_NO_PUNCH_HOLE', 'a cache size cap needs `fallocate` (util-linux) to punch holes in blob files; install it or run without a cap')
    }
    const index = init.index ?? new LevelCacheIndex(join(dir, 'index'))
    await index.open()
    const cache = new BlobCache(dir, index, init)
    try {
      await cache.#load()
    } catch (err) {
      await cache.#closeFiles()
      await index.close().catch(() => {})
      throw err
    }
    return cache
  }

  async #load (): Promise<void> {
    await checkVersion(this.#index, this.dir)
    for (const rec of await this.#index.listBlobs()) await this.#loadBlob(rec)
    await this.#imageStore.load()
    const session = await beginSession(this.#index)
    this.#generation = session.generation
    if (session.recoverAfter !== undefined) {
      this.#log.warn('unclean shutdown of generation %d: re-verifying chunks marked after checkpoint %d', session.generation - 1, session.recoverAfter)
      for (const state of this.#blobs.values()) {
        const r = await this.#verifyBlob(state, session.recoverAfter)
        this.#counters.recoveryChecked += r.checked
        this.#counters.recoveryBad += r.bad
      }
      this.#log.info('recovery: %d chunks checked, %d bad', this.#counters.recoveryChecked, this.#counters.recoveryBad)
    }
    await endRecovery(this.#index, session.generation)
  }

  async #loadBlob (rec: BlobRecord): Promise<void> {
    const state = await loadBlobState(this.#index, rec, this.blobPath(rec.blobId), this.#rangeBytes, this.#log)
    if (state !== undefined) this.#adopt(state)
  }

  blobPath (blobId: string): string {
    if (!BLOB_ID.test(blobId)) throw new CacheError('RAFSPEER_ERR_CACHE_UNKNOWN_BLOB', `blob id ${JSON.stringify(blobId)} is not a sha256 hex digest`)
    return join(this.dir, `${blobId}.blob.data`)
  }

  /** Creates the blob's sparse data file (sized to its uncompressed view) and its record. Idempotent. */
  async registerBlob (blob: RafsBlobInfo): Promise<void> {
    this.#checkOpen()
    const known = this.#blobs.get(blob.blobId)
    if (known !== undefined) {
      if (known.record.uncompressedSize !== blob.uncompressedSize || known.record.chunkCount !== blob.chunkCount) {
        throw new CacheError('RAFSPEER_ERR_CACHE_BAD_CHUNK', `blob ${blob.blobId}: registered with ${known.record.chunkCount} chunks / ${known.record.uncompressedSize} bytes, now ${blob.chunkCount} / ${blob.uncompressedSize}`)
      }
      return
    }
    let p = this.#registering.get(blob.blobId)
    if (p === undefined) {
      p = this.#register(blob).finally(() => this.#registering.delete(blob.blobId))
      this.#registering.set(blob.blobId, p)
    }
    await p
  }

  async #register (blob: RafsBlobInfo): Promise<void> {
    const path = this.blobPath(blob.blobId)
    if (!Number.isSafeInteger(blob.uncompressedSize) || blob.uncompressedSize % 4096 !== 0 || blob.chunkCount <= 0) {
      throw new CacheError('RAFSPEER_ERR_CACHE_BAD_CHUNK', `blob ${blob.blobId}: uncompressed size ${blob.uncompressedSize} / ${blob.chunkCount} chunks cannot be cached`)
    }
    const rec: BlobRecord = { blobId: blob.blobId, uncompressedSize: blob.uncompressedSize, chunkCount: blob.chunkCount, digester: blob.digester, complete: false, bytesPresent: 0, lastAccess: Date.now() }
    // nothing of this blob is marked, so whatever an old file holds is stale: empty it, then size it sparsely
    const fh = await open(path, fsc.O_RDWR | fsc.O_CREAT, 0o644)
    try {
      await fh.truncate(0)
      await fh.truncate(blob.uncompressedSize)
      await this.#index.putBlobs([rec])
    } catch (err) {
      await fh.close()
      throw new CacheError(isFullErrno(err) ? 'RAFSPEER_ERR_CACHE_FULL' : 'RAFSPEER_ERR_CACHE_IO', `registering blob ${blob.blobId}: ${(err as Error).message}`, { cause: err })
    }
    this.#adopt(new BlobState(rec, path, fh, this.#rangeBytes))
  }

  #adopt (s: BlobState): void {
    const blobId = s.record.blobId
    s.onChange = (index, present) => {
      if (this.events.listenerCount('chunk') === 0) return
      try { this.events.emit('chunk', blobId, index, present) } catch (err) { this.#log.error('a listener of chunk changes failed: %s', describeError(err)) }
    }
    this.#blobs.set(blobId, s)
    try { this.events.emit('registered', blobId) } catch (err) { this.#log.error('a listener of registered blobs failed: %s', describeError(err)) }
  }

  /** Ids of the blobs the cache knows (registered, with or without chunks present). */
  blobIds (): string[] { return [...this.#blobs.keys()] }

  /** The blob's chunk count and a copy of its presence bits (bit i = 0x80 >> (i & 7) of byte i >> 3), if known. */
  presence (blobId: string): { chunks: number, bits: Uint8Array } | undefined {
    const s = this.#blobs.get(blobId)
    return s === undefined ? undefined : { chunks: s.record.chunkCount, bits: s.bits.slice() }
  }

  has (blobId: string, ciIndex: number): boolean {
    return this.#blobs.get(blobId)?.has(ciIndex) === true
  }

  /** Present and found matching its digest by this process (written or read with verification since open). */
  isVerified (blobId: string, ciIndex: number): boolean {
    const s = this.#blobs.get(blobId)
    return s !== undefined && s.has(ciIndex) && s.isVerified(ciIndex)
  }

  /**
   * The read fast path: copies `length` bytes at `viewOffset` of a blob's uncompressed view into `buf` at
   * `bufOffset` with one pread, for spans the caller knows hold verified chunks (`isVerified`). Resolves false
   * (nothing to trust in `buf`) when an eviction of the blob overlapped the read or the file came up short.
   */
  async readVerifiedInto (blobId: string, viewOffset: number, length: number, buf: Buffer, bufOffset: number): Promise<boolean> {
    if (this.#closed) this.#checkOpen()
    const s = this.#blobs.get(blobId)
    if (s === undefined) return false
    const epoch = s.epoch
    const n = await readFull(s.fh, buf.subarray(bufOffset, bufOffset + length), viewOffset)
    if (n !== length || s.epoch !== epoch || s.evicting !== undefined) return false
    this.#counters.hits++
    s.touch(viewOffset, Date.now())
    return true
  }

  isComplete (blobId: string): boolean {
    return this.#blobs.get(blobId)?.complete === true
  }

  #state (blobId: string): BlobState {
    this.#checkOpen()
    const s = this.#blobs.get(blobId)
    if (s === undefined) throw new CacheError('RAFSPEER_ERR_CACHE_UNKNOWN_BLOB', `blob ${blobId} is not registered in the cache`)
    return s
  }

  #checkChunk (s: BlobState, c: CachedChunk): void {
    const r = s.record
    if (!Number.isInteger(c.index) || c.index < 0 || c.index >= r.chunkCount || c.uncompressedSize <= 0 ||
        c.uncompressedOffset % 4096 !== 0 || c.uncompressedOffset + c.uncompressedSize > r.uncompressedSize) {
      throw new CacheError('RAFSPEER_ERR_CACHE_BAD_CHUNK', `blob ${r.blobId}: chunk ${c.index} at ${c.uncompressedOffset} (+${c.uncompressedSize}) does not fit ${r.chunkCount} chunks / ${r.uncompressedSize} bytes`)
    }
  }

  /**
   * The plaintext of a present chunk, or undefined when it is absent. With `verify`, bytes that do not match the
   * digest are never returned: the chunk is unmarked, counted, and undefined tells the caller to refetch.
   * `verify: 'once'` hashes a chunk only the first time this process reads it (or until it is rewritten).
   */
  async readChunk (blobId: string, chunk: CachedChunk, opts: { verify?: boolean | 'once' } = {}): Promise<Buffer | undefined> {
    if (this.#closed) this.#checkOpen()
    const s = this.#blobs.get(blobId)
    if (s === undefined || !s.has(chunk.index)) {
      this.#counters.misses++
      return undefined
    }
    this.#checkChunk(s, chunk)
    const epoch = s.epoch
    const buf = Buffer.allocUnsafe(chunk.uncompressedSize)
    const n = await readFull(s.fh, buf, chunk.uncompressedOffset)
    // an eviction of this blob overlapped the read: its hole may have hit our bytes (rare: count a miss, refetch)
    if (n !== buf.length || s.epoch !== epoch || s.evicting !== undefined) {
      this.#counters.misses++
      return undefined
    }
    const verify = opts.verify === true || (opts.verify === 'once' && !s.isVerified(chunk.index))
    if (verify) {
      if (!digestChunk(s.record.digester, buf).equals(chunk.digest)) {
        this.#counters.verifyFailures++
        this.#log.error('blob %s chunk %d: cached bytes fail their digest, unmarking', blobId, chunk.index)
        await this.#unmark(s, [chunk])
        return undefined
      }
      s.setVerified(chunk.index, chunk.uncompressedOffset, chunk.uncompressedSize)
    }
    this.#counters.hits++
    s.touch(chunk.uncompressedOffset, Date.now())
    return buf
  }

  /**
   * Stores a chunk the caller has verified. Resolves true once data and index record are written, false when the
   * chunk was already present. `RAFSPEER_ERR_CACHE_FULL` (ENOSPC, EDQUOT, EIO): nothing is marked, the cache stays
   * usable, and the caller serves its reader from the plaintext it already holds.
   */
  async putChunk (blobId: string, chunk: CachedChunk, plaintext: Buffer): Promise<boolean> {
    const s = this.#state(blobId)
    this.#checkChunk(s, chunk)
    if (plaintext.length !== chunk.uncompressedSize) {
      throw new CacheError('RAFSPEER_ERR_CACHE_BAD_CHUNK', `blob ${blobId} chunk ${chunk.index}: ${plaintext.length} bytes of plaintext, expected ${chunk.uncompressedSize}`)
    }
    for (;;) {
      if (s.has(chunk.index)) return false
      const busy = s.evicting ?? s.writing.get(chunk.index)
      if (busy === undefined) break
      await busy.catch(() => {})
    }
    const p = this.#write(s, chunk, plaintext)
    s.writing.set(chunk.index, p)
    try {
      await p
    } finally {
      s.writing.delete(chunk.index)
    }
    this.#evictor.maybeRun(this.capBytes)
    return true
  }

  async #write (s: BlobState, chunk: CachedChunk, plaintext: Buffer): Promise<void> {
    try {
      await writeChunkData(s.fh, plaintext, chunk.uncompressedOffset)
    } catch (err) {
      if (isFullErrno(err)) {
        this.#counters.writeFailures++
        // a partial write still holds blocks on the full disk: give them back (best effort, nothing was marked)
        await punchHoles(s.path, [[chunk.uncompressedOffset, alignedSize(chunk.uncompressedSize)]]).catch(() => {})
        this.#evictor.maybeRun(this.capBytes)
        throw new CacheError('RAFSPEER_ERR_CACHE_FULL', `cache ${this.dir} is full (${(err as NodeJS.ErrnoException).code}) writing blob ${s.record.blobId} chunk ${chunk.index}; serve the read from the network`, { cause: err })
      }
      throw new CacheError('RAFSPEER_ERR_CACHE_IO', `writing blob ${s.record.blobId} chunk ${chunk.index}: ${(err as Error).message}`, { cause: err })
    }
    s.set(chunk.index, chunk.uncompressedOffset, chunk.uncompressedSize, Date.now())
    s.setVerified(chunk.index, chunk.uncompressedOffset, chunk.uncompressedSize)
    this.#digests.stored(chunk.digest.toString('latin1'), { blobId: s.record.blobId, chunk: cachedChunkOf(chunk) })
    const rec: ChunkRecord = { ...cachedChunkOf(chunk), generation: this.#generation }
    try {
      await this.#commits.add({ blobId: s.record.blobId, chunk: rec })
    } catch (err) {
      s.clear(chunk.index, chunk.uncompressedOffset, chunk.uncompressedSize)
      throw new CacheError(isFullErrno(err) ? 'RAFSPEER_ERR_CACHE_FULL' : 'RAFSPEER_ERR_CACHE_IO', `indexing blob ${s.record.blobId} chunk ${chunk.index}: ${(err as Error).message}`, { cause: err })
    }
  }

  async #commitMarks (marks: ChunkMark[]): Promise<void> {
    const touched = new Set(marks.map(m => m.blobId))
    const blobs = [...touched].map(id => this.#blobs.get(id)?.snapshot()).filter((r): r is BlobRecord => r !== undefined)
    await this.#index.markChunks(marks, blobs)
    if (this.events.listenerCount('stored') > 0) {
      try { this.events.emit('stored', marks.map(m => m.chunk.digest)) } catch (err) { this.#log.error('a listener of stored chunks failed: %s', describeError(err)) }
    }
  }

  /** Digests of every present chunk (each once per blob that holds it), for a node's first announcement. */
  async * presentDigests (): AsyncIterable<Buffer> {
    this.#checkOpen()
    for (const s of [...this.#blobs.values()]) {
      for await (const rec of this.#index.chunks(s.record.blobId)) if (s.has(rec.index)) yield rec.digest
    }
  }

  async #unmark (s: BlobState, chunks: Array<Pick<CachedChunk, 'index' | 'uncompressedOffset' | 'uncompressedSize'>>): Promise<void> {
    for (const c of chunks) s.clear(c.index, c.uncompressedOffset, c.uncompressedSize)
    await this.#index.unmarkChunks(chunks.map(c => ({ blobId: s.record.blobId, index: c.index })), [s.snapshot()])
  }

  /** A present chunk with this digest, in any blob (or any blob but `exceptBlobId`), with its view coordinates. */
  async findByDigest (digest: Buffer, opts: { exceptBlobId?: string } = {}): Promise<{ blobId: string, chunk: CachedChunk } | undefined> {
    this.#checkOpen()
    const key = digest.toString('latin1')
    // places seen lately, re-checked (a chunk unmarked or evicted since is no longer present); else the index
    for (const p of this.#digests.places(key) ?? []) {
      if (p.blobId !== opts.exceptBlobId && this.has(p.blobId, p.chunk.index)) return { blobId: p.blobId, chunk: { ...p.chunk } }
    }
    if (this.#digests.knownAbsent(key)) return undefined
    const token = this.#digests.begin()
    const found: Array<{ blobId: string, chunk: CachedChunk }> = []
    let answer: { blobId: string, chunk: CachedChunk } | undefined
    for (const h of await this.#index.findByDigest(digest)) {
      if (!this.has(h.blobId, h.index)) continue
      const rec = await this.#index.getChunk(h.blobId, h.index)
      if (rec === undefined) continue
      const place = { blobId: h.blobId, chunk: cachedChunkOf(rec) }
      found.push(place)
      if (h.blobId !== opts.exceptBlobId) { answer = { blobId: place.blobId, chunk: { ...place.chunk } }; break }
    }
    this.#digests.learnt(key, token, found)
    return answer
  }

  /**
   * Copies a present chunk of one blob into another (same digest and size, e.g. found by `findByDigest`).
   * The source bytes are verified first. Resolves false when the source is absent or bad.
   */
  async copyChunk (from: { blobId: string, chunk: CachedChunk }, to: { blobId: string, chunk: CachedChunk }): Promise<boolean> {
    if (!from.chunk.digest.equals(to.chunk.digest) || from.chunk.uncompressedSize !== to.chunk.uncompressedSize) {
      throw new CacheError('RAFSPEER_ERR_CACHE_BAD_CHUNK', `copy from blob ${from.blobId} chunk ${from.chunk.index} to blob ${to.blobId} chunk ${to.chunk.index}: digests or sizes differ`)
    }
    if (this.has(to.blobId, to.chunk.index)) return true
    const data = await this.readChunk(from.blobId, from.chunk, { verify: true })
    if (data === undefined) return false
    await this.putChunk(to.blobId, to.chunk, data)
    return true
  }

  /** Re-hashes every present chunk (of one blob, or all), unmarks the bad ones. */
  async verifyAll (blobId?: string): Promise<VerifyReport> {
    this.#checkOpen()
    const states = blobId !== undefined ? [this.#state(blobId)] : [...this.#blobs.values()]
    const total: VerifyReport = { checked: 0, bad: 0, bytes: 0 }
    for (const s of states) {
      const r = await this.#verifyBlob(s, -1)
      total.checked += r.checked
      total.bad += r.bad
      total.bytes += r.bytes
    }
    return total
  }

  async #verifyBlob (s: BlobState, afterGeneration: number): Promise<VerifyReport> {
    const { report, bad } = await findBadChunks(this.#index, s, afterGeneration)
    if (bad.length > 0) {
      this.#log.error('blob %s: %d chunks fail their digest, unmarking', s.record.blobId, bad.length)
      this.#counters.verifyFailures += bad.length
      await this.#unmark(s, bad)
    }
    return report
  }

  /** Keeps a blob from eviction (a kernel mount uses it). Pins count; every pin needs its unpin. */
  pin (blobId: string): void { this.#state(blobId).pins++ }
  unpin (blobId: string): void {
    const s = this.#state(blobId)
    if (s.pins > 0) s.pins--
  }

  /** Runs an eviction pass now (when over the cap); resolves with the number of chunks evicted. */
  async evict (): Promise<number> {
    this.#checkOpen()
    return await this.#evictor.run(this.capBytes)
  }

  async putImage (record: Omit<ImageRecord, 'lastAccess'> & { lastAccess?: number }): Promise<void> {
    this.#checkOpen()
    await this.#imageStore.put(record)
  }

  /** The image record; reading it counts as an access. */
  async getImage (ref: string): Promise<ImageRecord | undefined> {
    this.#checkOpen()
    return await this.#imageStore.get(ref)
  }

  async listImages (): Promise<ImageRecord[]> {
    this.#checkOpen()
    return await this.#index.listImages()
  }

  async removeImage (ref: string): Promise<boolean> {
    this.#checkOpen()
    return await this.#imageStore.remove(ref)
  }

  /**
   * Tells `watcher` about the blob's extents as they become verified or lose their bytes, until the returned
   * function is called. It hears only what happens from now on: extents already verified are `isVerified`.
   * Calls are synchronous, inside the cache's own bookkeeping; a `cleared` returns before the bytes go.
   */
  watch (blobId: string, watcher: ChunkWatcher): () => void {
    const s = this.#state(blobId)
    s.watchers.add(watcher)
    return () => { s.watchers.delete(watcher) }
  }

  /** Forgets a blob entirely and deletes its data file (refused while pinned or watched). */
  async removeBlob (blobId: string): Promise<void> {
    const s = this.#state(blobId)
    if (s.pins > 0 || s.watchers.size > 0) throw new CacheError('RAFSPEER_ERR_CACHE_BAD_CHUNK', `blob ${blobId} is ${s.pins > 0 ? 'pinned' : 'in use by a mount'}`)
    await this.#commits.drain()
    this.#blobs.delete(blobId)
    await this.#index.removeBlob(blobId)
    await s.fh.close()
    await rm(s.path, { force: true })
  }

  #diskBytes (): number {
    let n = 0
    for (const s of this.#blobs.values()) n += s.diskBytes
    return n
  }

  stats (): CacheStats {
    let chunksPresent = 0; let bytesPresent = 0; let completeBlobs = 0; let pinnedBlobs = 0
    for (const s of this.#blobs.values()) {
      chunksPresent += s.chunksPresent
      bytesPresent += s.bytesPresent
      if (s.complete) completeBlobs++
      if (s.pins > 0) pinnedBlobs++
    }
    return {
      blobs: this.#blobs.size, completeBlobs, pinnedBlobs, images: this.#imageStore.count, chunksPresent, bytesPresent,
      diskBytes: this.#diskBytes(), capBytes: this.capBytes, ...this.#counters,
      evictions: this.#evictor.evictedChunks, evictedBytes: this.#evictor.evictedBytes, generation: this.#generation
    }
  }

  #checkOpen (): void {
    if (this.#closed) throw new CacheError('RAFSPEER_ERR_CACHE_CLOSED', `cache ${this.dir} is closed`)
  }

  /** Flushes pending index writes, fdatasyncs the data files, writes the clean checkpoint, closes. */
  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await this.#evictor.idle()
    await this.#commits.drain()
    await Promise.all([...this.#blobs.values()].map(async s => await Promise.allSettled(s.writing.values())))
    await this.#commits.drain()
    let synced = true
    for (const s of this.#blobs.values()) {
      await s.fh.datasync().catch(err => {
        synced = false
        this.#log.error('fdatasync %s: %s', s.path, describeError(err))
      })
    }
    await this.#index.putBlobs([...this.#blobs.values()].map(s => s.snapshot()))
    // a data file that could not be synced must not be vouched for: leave the session unclean
    if (synced) await markClean(this.#index, this.#generation)
    await this.#closeFiles()
    await this.#index.close()
  }

  async #closeFiles (): Promise<void> {
    for (const s of this.#blobs.values()) await s.fh.close().catch(() => {})
  }
}

/** The view coordinates of a chunk (a `ChunkInfo`, an index record): only those, not whatever else it carries. */
function cachedChunkOf (c: CachedChunk): CachedChunk {
  return { index: c.index, digest: c.digest, uncompressedOffset: c.uncompressedOffset, uncompressedSize: c.uncompressedSize }
}
