/**
 * What this node has and is fetching, for `/rafspeer/have/1.0.0` ({@link LocalChunks}): presence from the blob
 * cache (its `registered` and `chunk` events, its presence bits), chunks in flight from the node's fetchers (they
 * report to it as their `activity`). A chunk whose fetch ends without it being present (given up, failed) is
 * reported DROPPED, so a neighbour waiting on our PENDING stops waiting.
 */
import type { EventEmitter } from 'node:events'
import type { BlobCacheEvents } from '../../cache/index.js'
import type { FlightActivity } from '../fetch/index.js'
import type { ServableCache } from './chunk-server.js'
import type { LocalChunks, LocalListener } from './have-service.js'

/** The parts of the blob cache read here (`BlobCache` satisfies it). */
export interface PresenceSource {
  events: Pick<EventEmitter<BlobCacheEvents>, 'on' | 'off'>
  presence: (blobId: string) => { chunks: number, bits: Uint8Array } | undefined
  has: (blobId: string, index: number) => boolean
  findByDigest: (digest: Buffer) => Promise<unknown>
}

export interface CacheChunksInit {
  /**
   * PENDING goes out for a chunk in flight only once the blob locator has chosen its source (`planned`), not when
   * its fetch starts (true): a PENDING then always stands for bytes on their way from the registry or a neighbour,
   * never for a fetch that is itself waiting on someone's PENDING, so two nodes cannot wait on each other's
   */
  pendingWhenPlanned?: boolean
}

export class CacheChunks implements LocalChunks, FlightActivity {
  /** blob → ci → fetches of it running (two mounts of one blob may each fetch it), its digest, and whether its PENDING went out */
  private readonly inFlight = new Map<string, Map<number, { n: number, digest: string, said: boolean }>>()
  private readonly pendingWhenPlanned: boolean
  /** hex digest → (blob, ci) fetches of it running */
  private readonly digests = new Map<string, number>()
  /** hex digest → callbacks of neighbours' requests waiting for our fetch of it */
  private readonly landing = new Map<string, Set<() => void>>()
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

  constructor (private readonly cache: PresenceSource, init: CacheChunksInit = {}) {
    this.pendingWhenPlanned = init.pendingWhenPlanned ?? true
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
    const pending: number[] = []
    for (const [ci, f] of this.inFlight.get(blobId) ?? []) if (f.said) pending.push(ci)
    return { chunks: p.chunks, bits: p.bits, pending }
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

  /** Whether some fetch of this node is getting the chunk with this digest now. */
  fetching (digest: Buffer): boolean {
    return this.digests.has(digest.toString('hex'))
  }

  /**
   * Resolves once this node's fetch of the digest ended (or at once when none runs), at most after `ms`: a
   * neighbour that asked for a chunk we said PENDING waits for it here rather than being told NOT_FOUND.
   */
  async landed (digest: Buffer, ms: number, signal?: AbortSignal): Promise<void> {
    if (!this.fetching(digest)) return
    const hex = digest.toString('hex')
    await new Promise<void>(resolve => {
      let set = this.landing.get(hex)
      if (set === undefined) { set = new Set(); this.landing.set(hex, set) }
      const done = (): void => { clearTimeout(timer); signal?.removeEventListener('abort', done); set.delete(done); resolve() }
      const timer = setTimeout(done, ms)
      signal?.addEventListener('abort', done, { once: true })
      set.add(done)
    })
  }

  async hasDigests (digests: Buffer[]): Promise<boolean[]> {
    return await Promise.all(digests.map(async d => (await this.cache.findByDigest(d).catch(() => undefined)) !== undefined))
  }

  started (blobId: string, chunks: ReadonlyArray<{ index: number, digest: Buffer }>): void {
    let m = this.inFlight.get(blobId)
    if (m === undefined) {
      m = new Map()
      this.inFlight.set(blobId, m)
    }
    const fresh: number[] = []
    for (const c of chunks) {
      const f = m.get(c.index)
      if (f !== undefined) { f.n++; continue }
      const hex = c.digest.toString('hex')
      m.set(c.index, { n: 1, digest: hex, said: !this.pendingWhenPlanned })
      this.digests.set(hex, (this.digests.get(hex) ?? 0) + 1)
      fresh.push(c.index)
    }
    if (fresh.length > 0 && !this.pendingWhenPlanned) for (const l of this.listeners.get(blobId) ?? []) l.pending(fresh)
  }

  /** The blob locator chose where these chunks come from: their PENDING goes out (if they are in flight). */
  planned (blobId: string, indexes: readonly number[]): void {
    const m = this.inFlight.get(blobId)
    if (m === undefined) return
    const fresh: number[] = []
    for (const ci of indexes) {
      const f = m.get(ci)
      if (f === undefined || f.said) continue
      f.said = true
      fresh.push(ci)
    }
    if (fresh.length > 0) for (const l of this.listeners.get(blobId) ?? []) l.pending(fresh)
  }

  ended (blobId: string, index: number): void {
    const m = this.inFlight.get(blobId)
    const f = m?.get(index)
    if (m === undefined || f === undefined) return
    if (f.n > 1) { f.n--; return }
    m.delete(index)
    if (m.size === 0) this.inFlight.delete(blobId)
    const left = (this.digests.get(f.digest) ?? 1) - 1
    if (left > 0) this.digests.set(f.digest, left)
    else this.digests.delete(f.digest)
    const waiters = this.landing.get(f.digest)
    this.landing.delete(f.digest)
    for (const w of waiters ?? []) w()
    // present: its HAVE went out with the cache's event; absent: the fetch was given up (said only if PENDING was)
    if (f.said && !this.cache.has(blobId, index)) for (const l of this.listeners.get(blobId) ?? []) l.dropped([index])
  }
}

/**
 * The cache as the chunk server sees it when neighbours follow our PENDING: a chunk this node is fetching now is
 * waited for (up to `waitMs`, or the look-up's own) instead of being answered NOT_FOUND; the server keeps the asker alive with PENDING
 * frames meanwhile, and answers BUSY if the fetch is still running after the wait. Not waited for when our fetch
 * of it is asking the asker itself (`asking`): each would wait on the other until the wait ran out, so the asker
 * hears BUSY at once and looks elsewhere, and its copy, once here, is what ours gets.
 */
export function waitingForFlights<C extends ServableCache> (cache: C, local: Pick<CacheChunks, 'fetching' | 'landed'>, waitMs: number,
  asking?: (digest: Buffer, peerId: string) => boolean): ServableCache {
  return {
    has: (blobId, ci) => cache.has(blobId, ci),
    // still on its way after the wait: the server answers BUSY, the asker looks again (two nodes whose fetches
    // wait on each other's PENDING are parted after `waitMs`, not after the fetcher's idle deadline)
    fetching: (digest) => local.fetching(digest),
    readChunk: async (blobId, chunk, opts) => await cache.readChunk(blobId, chunk, opts),
    findByDigest: async (digest, opts) => {
      const found = await cache.findByDigest(digest, opts)
      const wait = opts?.waitMs ?? waitMs
      if (found !== undefined || opts?.exceptBlobId !== undefined || wait <= 0 || !local.fetching(digest)) return found
      if (opts?.asker !== undefined && asking?.(digest, opts.asker) === true) return found
      await local.landed(digest, wait)
      return await cache.findByDigest(digest, opts)
    }
  }
}
