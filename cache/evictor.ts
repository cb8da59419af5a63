/**
 * Size-cap eviction. The unit is a range: a fixed span (default 16 MiB) of one blob's uncompressed view, with
 * the last access of any chunk in it. Ranges of unpinned blobs go least-recently-used first until the cache is
 * below 90% of the cap. Finer than whole blobs (one huge blob cannot flush everything else, nor itself), coarser
 * than chunks (one timestamp per 16 MiB, and one `fallocate` call per run of evicted chunks).
 *
 * Order per range: unmark in memory and in the index first, punch the hole after, the reverse of a put.
 * Writes to the blob wait while its range is evicted; chunks with a write in flight are skipped.
 *
 * Not lru-cache: its eviction is one synchronous dispose per entry when a `set` overflows, while this must run
 * asynchronously (index writes, `fallocate`), skip pinned blobs and in-flight writes, and stop at a watermark.
 */
import type { BlobState, RangeState } from './blob-state.js'
import { alignedSize } from './blob-state.js'
import type { CacheIndex, ChunkRecord } from './cache-index.js'
import { punchHoles, type Extent } from './chunk-io.js'
import { describeError, type Logger } from '../base/index.js'

/** evict down to this share of the cap, so puts do not trigger a pass each */
export const LOW_WATER = 0.9

export interface EvictorComponents {
  index: CacheIndex
  log: Logger
  blobs: Map<string, BlobState>
  /** aligned bytes present across all blobs */
  total: () => number
}

export class Evictor {
  evictedChunks = 0
  evictedBytes = 0
  #running: Promise<number> | undefined

  constructor (private readonly c: EvictorComponents) {}

  /** Starts a pass in the background when over the cap; errors are logged. */
  maybeRun (capBytes: number | undefined): void {
    if (capBytes === undefined || this.#running !== undefined || this.c.total() <= capBytes) return
    this.run(capBytes).catch(err => { this.c.log.error('eviction failed: %s', describeError(err)) })
  }

  /** One pass (joins the running one); resolves with the number of chunks evicted. */
  async run (capBytes: number | undefined): Promise<number> {
    if (this.#running !== undefined) return await this.#running
    if (capBytes === undefined || this.c.total() <= capBytes) return 0
    this.#running = this.#pass(Math.floor(capBytes * LOW_WATER)).finally(() => { this.#running = undefined })
    return await this.#running
  }

  async idle (): Promise<void> {
    await this.#running?.catch(() => {})
  }

  async #pass (target: number): Promise<number> {
    const candidates: Array<{ s: BlobState, r: number, st: RangeState }> = []
    for (const s of this.c.blobs.values()) {
      if (s.pins > 0) continue
      for (const [r, st] of s.ranges) candidates.push({ s, r, st })
    }
    candidates.sort((a, b) => a.st.lastAccess - b.st.lastAccess)
    let evicted = 0
    for (const { s, r, st } of candidates) {
      if (this.c.total() <= target) break
      // pinned meanwhile, or removed: leave it
      if (s.pins > 0 || this.c.blobs.get(s.record.blobId) !== s) continue
      evicted += await this.#evictRange(s, r, st)
    }
    this.c.log.info('eviction pass: %d chunks evicted, %d bytes present', evicted, this.c.total())
    return evicted
  }

  async #evictRange (s: BlobState, r: number, st: RangeState): Promise<number> {
    s.epoch++
    let release!: () => void
    s.evicting = new Promise(resolve => { release = resolve })
    try {
      const victims: ChunkRecord[] = []
      for await (const c of this.c.index.chunks(s.record.blobId, { from: st.minCi, to: st.maxCi })) {
        if (s.rangeOf(c.uncompressedOffset) === r && s.has(c.index) && !s.writing.has(c.index)) victims.push(c)
      }
      if (victims.length === 0) return 0
      const extents: Extent[] = []
      let bytes = 0
      for (const c of victims) {
        s.clear(c.index, c.uncompressedOffset, c.uncompressedSize)
        extents.push([c.uncompressedOffset, alignedSize(c.uncompressedSize)])
        bytes += alignedSize(c.uncompressedSize)
      }
      // index first: a crash between the two leaves an unmarked chunk with data, never a marked hole
      await this.c.index.unmarkChunks(victims.map(c => ({ blobId: s.record.blobId, index: c.index })), [s.snapshot()])
      await punchHoles(s.path, extents).catch(err => {
        this.c.log.error('blob %s: punching %d holes failed, space not freed: %s', s.record.blobId, extents.length, describeError(err))
      })
      this.evictedChunks += victims.length
      this.evictedBytes += bytes
      return victims.length
    } finally {
      s.evicting = undefined
      release()
    }
  }
}
