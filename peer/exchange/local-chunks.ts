/**
 * What this node has and is fetching, for `/rafspeer/have/1.0.0` ({@link LocalChunks}): presence from the blob
 * cache (its `registered` and `chunk` events, its presence bits), chunks in flight from the node's fetchers (they
 * report to it as their `activity`). A chunk whose fetch ends without it being present (given up, failed) is
 * reported DROPPED, so a neighbour waiting on our PENDING stops waiting.
 */
import type { EventEmitter } from 'node:events'
import type { BlobCacheEvents } from '../../cache/index.js'
import type { FlightActivity } from '../fetch/index.js'
import type { LocalChunks, LocalListener } from './have-service.js'

/** The parts of the blob cache read here (`BlobCache` satisfies it). */
export interface PresenceSource {
  events: Pick<EventEmitter<BlobCacheEvents>, 'on' | 'off'>
  presence: (blobId: string) => { chunks: number, bits: Uint8Array } | undefined
  has: (blobId: string, index: number) => boolean
  findByDigest: (digest: Buffer) => Promise<unknown>
}

export class CacheChunks implements LocalChunks, FlightActivity {
  /** blob → ci → fetches of it running (two mounts of one blob may each fetch it) */
  private readonly inFlight = new Map<string, Map<number, number>>()
  private readonly listeners = new Map<string, Set<LocalListener>>()
  private readonly onChunk = (blobId: string, index: number, present: boolean): void => {
    const ls = this.listeners.get(blobId)
    if (ls === undefined) return
    for (const l of ls) {
      if (present) l.have([index])
      else l.dropped([index])
    }
  }

  private readonly onRegistered = (blobId: string): void => {
    for (const l of this.listeners.get(blobId) ?? []) l.known()
  }

  constructor (private readonly cache: PresenceSource) {
    cache.events.on('chunk', this.onChunk)
    cache.events.on('registered', this.onRegistered)
  }

  /** Stops listening to the cache. */
  close (): void {
    this.cache.events.off('chunk', this.onChunk)
    this.cache.events.off('registered', this.onRegistered)
    this.listeners.clear()
  }

  snapshot (blobId: string): { chunks: number, bits: Uint8Array, pending: number[] } | undefined {
    const p = this.cache.presence(blobId)
    if (p === undefined) return undefined
    return { chunks: p.chunks, bits: p.bits, pending: [...(this.inFlight.get(blobId)?.keys() ?? [])] }
  }

  subscribe (blobId: string, listener: LocalListener): () => void {
    let set = this.listeners.get(blobId)
    if (set === undefined) {
      set = new Set()
      this.listeners.set(blobId, set)
    }
    set.add(listener)
    return () => {
      set.delete(listener)
      if (set.size === 0 && this.listeners.get(blobId) === set) this.listeners.delete(blobId)
    }
  }

  async hasDigests (digests: Buffer[]): Promise<boolean[]> {
    return await Promise.all(digests.map(async d => (await this.cache.findByDigest(d).catch(() => undefined)) !== undefined))
  }

  started (blobId: string, indexes: number[]): void {
    let m = this.inFlight.get(blobId)
    if (m === undefined) {
      m = new Map()
      this.inFlight.set(blobId, m)
    }
    const fresh: number[] = []
    for (const ci of indexes) {
      const n = m.get(ci) ?? 0
      m.set(ci, n + 1)
      if (n === 0) fresh.push(ci)
    }
    if (fresh.length > 0) for (const l of this.listeners.get(blobId) ?? []) l.pending(fresh)
  }

  ended (blobId: string, index: number): void {
    const m = this.inFlight.get(blobId)
    const n = m?.get(index)
    if (m === undefined || n === undefined) return
    if (n > 1) { m.set(index, n - 1); return }
    m.delete(index)
    if (m.size === 0) this.inFlight.delete(blobId)
    // present: its HAVE went out with the cache's event; absent: the fetch was given up
    if (!this.cache.has(blobId, index)) for (const l of this.listeners.get(blobId) ?? []) l.dropped([index])
  }
}
