/**
 * What `BlobCache` keeps in memory per blob, so that the read path needs no index I/O: a presence bitmap by ci
 * index, byte counts, per-range last access (the eviction unit), pins, and the bookkeeping that keeps eviction
 * and writes of the same blob from interleaving badly.
 */
import type { FileHandle } from 'node:fs/promises'
import type { BlobRecord } from './cache-index.js'

export const BLOCK_SIZE = 4096
export const alignedSize = (n: number): number => Math.ceil(n / BLOCK_SIZE) * BLOCK_SIZE

/** One eviction range: a fixed span of the uncompressed view. */
export interface RangeState {
  /** 4 KiB-aligned bytes of present chunks that start in this range */
  diskBytes: number
  lastAccess: number
  /** smallest and largest ci index ever marked in the range: bounds the index scan at eviction */
  minCi: number
  maxCi: number
}

/**
 * Hears, synchronously, about one blob's uncompressed view: an extent (4 KiB-aligned offset and length) whose
 * chunk was written or read back matching its digest by this process, or one that is about to lose its bytes
 * (eviction, a failed check, a failed index write). A reader that serves the cache file without the cache (the
 * lazy-kernel mode's blob files) trusts exactly the extents it heard `verified` and not `cleared` since.
 */
export interface ChunkWatcher {
  verified: (offset: number, length: number) => void
  cleared: (offset: number, length: number) => void
}

export class BlobState {
  readonly record: BlobRecord
  readonly path: string
  fh: FileHandle
  readonly bits: Uint8Array
  /** chunks whose cached bytes matched their digest since this process opened the cache (same bit order) */
  readonly verified: Uint8Array
  chunksPresent = 0
  bytesPresent = 0
  diskBytes = 0
  pins = 0
  /** bumped when an eviction of this blob starts: a read that overlapped one re-checks presence */
  epoch = 0
  /** set while an eviction of this blob runs; writes wait for it */
  evicting: Promise<void> | undefined
  /** ci index → in-flight write (its extent is never punched, and a second put of it waits for the first) */
  readonly writing = new Map<number, Promise<void>>()
  readonly ranges = new Map<number, RangeState>()
  /** told synchronously when a chunk is marked present or absent (the cache's `chunk` event) */
  onChange: ((index: number, present: boolean) => void) | undefined
  /** told synchronously when a chunk's bytes become trustworthy or stop being present (`BlobCache.watch`) */
  readonly watchers = new Set<ChunkWatcher>()

  constructor (record: BlobRecord, path: string, fh: FileHandle, readonly rangeBytes: number) {
    this.record = record
    this.path = path
    this.fh = fh
    this.bits = new Uint8Array(Math.ceil(record.chunkCount / 8))
    this.verified = new Uint8Array(this.bits.length)
  }

  isVerified (index: number): boolean {
    return index >= 0 && index < this.record.chunkCount && (this.verified[index >> 3]! & (0x80 >> (index & 7))) !== 0
  }

  setVerified (index: number, uncompressedOffset: number, size: number): void {
    if (this.isVerified(index)) return
    this.verified[index >> 3]! |= 0x80 >> (index & 7)
    for (const w of this.watchers) w.verified(uncompressedOffset, alignedSize(size))
  }

  // MSB first within a byte, like nydusd's chunk_map (§14), so a dump of `bits` reads the same way
  has (index: number): boolean {
    return index >= 0 && index < this.record.chunkCount && (this.bits[index >> 3]! & (0x80 >> (index & 7))) !== 0
  }

  get complete (): boolean { return this.chunksPresent === this.record.chunkCount }

  rangeOf (uncompressedOffset: number): number { return Math.floor(uncompressedOffset / this.rangeBytes) }

  /** Marks a chunk present in memory; false when it already was. */
  set (index: number, uncompressedOffset: number, size: number, now: number): boolean {
    if (this.has(index)) return false
    this.bits[index >> 3]! |= 0x80 >> (index & 7)
    this.onChange?.(index, true)
    this.chunksPresent++
    this.bytesPresent += size
    const disk = alignedSize(size)
    this.diskBytes += disk
    const r = this.rangeOf(uncompressedOffset)
    const st = this.ranges.get(r)
    if (st === undefined) {
      this.ranges.set(r, { diskBytes: disk, lastAccess: now, minCi: index, maxCi: index })
    } else {
      st.diskBytes += disk
      st.lastAccess = Math.max(st.lastAccess, now)
      st.minCi = Math.min(st.minCi, index)
      st.maxCi = Math.max(st.maxCi, index)
    }
    return true
  }

  /** Marks a chunk absent in memory; false when it already was. */
  clear (index: number, uncompressedOffset: number, size: number): boolean {
    if (!this.has(index)) return false
    // watchers first: once they return, nobody reads these bytes on the strength of an earlier check
    for (const w of this.watchers) w.cleared(uncompressedOffset, alignedSize(size))
    this.bits[index >> 3]! &= ~(0x80 >> (index & 7))
    this.verified[index >> 3]! &= ~(0x80 >> (index & 7))
    this.onChange?.(index, false)
    this.chunksPresent--
    this.bytesPresent -= size
    const disk = alignedSize(size)
    this.diskBytes -= disk
    const r = this.rangeOf(uncompressedOffset)
    const st = this.ranges.get(r)
    if (st !== undefined) {
      st.diskBytes -= disk
      if (st.diskBytes <= 0) this.ranges.delete(r)
    }
    return true
  }

  touch (uncompressedOffset: number, now: number): void {
    const st = this.ranges.get(this.rangeOf(uncompressedOffset))
    if (st !== undefined) st.lastAccess = now
    if (now > this.record.lastAccess) this.record.lastAccess = now
  }

  /** The record as it should be persisted now. */
  snapshot (): BlobRecord {
    return { ...this.record, complete: this.complete, bytesPresent: this.bytesPresent }
  }
}
