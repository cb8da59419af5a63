/**
 * Neighbours as a chunk source: asks the resolver (the scheduler) who holds the chunks, spreads them over up to
 * `maxHolders` holders over `/rafspeer/chunk/1.0.0`, hedges a request that makes no progress for `hedgeAfterMs`
 * to the next holder, and yields each chunk as it arrives. Chunks no neighbour delivered are simply not yielded:
 * the fetcher asks the next source (the registry) for them.
 *
 * A busy holder may send a chunk on to a peer it is sending it to (REDIRECT): that peer is asked next, ahead of the
 * fetch's queued requests, and waits for the chunk longer than for a plain PENDING; if it does not have it after
 * all, the holder is asked again, to send it itself. A holder that says PENDING (its own fetch of the chunk runs) is
 * not hedged until its next reply: the hedge's copy would only load another uplink.
 *
 * Requests to a holder go on streams kept open between them ({@link ChunkStreams}): in a swarm most requests carry
 * one or two chunks, and a new stream each cost more CPU than the request itself.
 *
 * Every chunk is checked with the fetcher's `verify` as it arrives (the one digest check it gets): a neighbour
 * that sends bad bytes is scored down, reported, past `banThreshold` bad chunks never asked again by this process,
 * and the chunk is asked of another holder.
 *
 * @example
 * ```ts
 * const peers = new NeighbourSource({ libp2p: node, resolver: scheduler }, { maxHolders: 3 })
 * const fetcher = new Fetcher({ cache, sources: [peers, registry] })
 * ```
 */
import { setMaxListeners } from 'node:events'
import type { Libp2p, Stream } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import { raceSignal } from 'race-signal'
import { delay, describeError, type ComponentLogger, type Logger } from '../../base/index.js'
import type { ChunkHolder, HolderResolver, PeerOutcome } from '../../p2p/index.js'
import type { ChunkInfo, RafsBlobInfo } from '../../rafs/index.js'
import type { ChunkSource, ChunkSourceFetchOptions, FetchedChunk } from '../fetch/index.js'
import {
  AcceptFlags, CHUNK_PROTOCOL, ChunkStatus, ChunkTimeoutError, MAX_CHUNKS_PER_REQUEST, MAX_CHUNK_BYTES, type ChannelExchangeOptions, type ChunkName,
  type ChunkReply
} from './chunk-protocol.js'
import { ChunkStreams, type ChunkStreamsInit } from './chunk-streams.js'
import { MAX_REDIRECTS } from './chunk-receivers.js'
import type { ChunkLocator } from './blob-locator.js'
import { DEFAULT_REPLAN_ROUNDS, replanDelayMs } from './busy-replan.js'
import { chooseHolder, joinsQueued, nextQueued, splitRequests, type QueuedShape } from './swarm-policy.js'
import { PENDING_INTERVAL_MS, REDIRECTED_WAIT_MS } from './chunk-server.js'

export const DEFAULT_MAX_HOLDERS = 3
export const DEFAULT_HEDGE_AFTER_MS = 300
export const DEFAULT_REQUEST_TIMEOUT_MS = 3_000
export const DEFAULT_BAN_THRESHOLD = 3
/** a safety net over the resolver's own ≤ 200 ms promise */
export const DEFAULT_RESOLVE_TIMEOUT_MS = 500
/** plaintext bytes one request asks for, so one request stays within a few seconds on a slow link */
export const DEFAULT_MAX_REQUEST_BYTES = 4 << 20
/**
 * A chunk whose only holder answered BUSY is asked of it again this many times (after 250 ms, 500 ms, 750 ms) before
 * it goes to the registry: a holder serving many neighbours (its per-peer upload share, `chunk-server.ts`) is busy for
 * moments, and the registry copy it would cost is what the swarm exists to save.
 */
export const DEFAULT_BUSY_RETRIES = 3
/** requests in flight to one holder within one fetch */
export const DEFAULT_STREAMS_PER_HOLDER = 2
/**
 * requests that follow a REDIRECT may run to one holder beyond `streamsPerHolder`: chunks the reader waits for
 * (asked once already), sent where they are on their way, are not queued behind the fetch's larger requests; so may
 * a read's chunks in a prefetch's batch (`nextQueued`)
 */
export const REDIRECTED_EXTRA_STREAMS = 2
/**
 * peers one fetch asks only because a REDIRECT named them (not among the chunk's holders it was given): past
 * this, a redirect to yet another such peer is not followed (a hostile holder cannot have us dial peers without end)
 */
export const MAX_REDIRECT_PEERS = 8
/**
 * The fetcher's idle deadlines a neighbour fetch may go without a chunk before it gives its chunks to the registry
 * (`ChunkSource.idleFactor`; 2: 20 s at the fetcher's 10 s, which leaves one deadline of a read's 30 s for the
 * registry). In a swarm whose registry is shared by everyone, a chunk's first copy can take longer than one
 * deadline to arrive and spread; cut off at 10 s, every waiting node fetched it from the registry itself, which
 * slowed the registry further (the model: 32 nodes prefetching 64 MiB at 4 MiB/s each and at the registry, 6.2–9.9
 * copies from the registry; at 20 s, 1.000). A neighbour fetch is bounded otherwise too: hedges, BUSY answers
 * located again for a bounded number of rounds, PENDING promises that lapse, a holder's PENDING hold cut at
 * {@link PENDING_HOLD_LIMIT_MS}.
 */
export const DEFAULT_IDLE_FACTOR = 2
/**
 * The longest a holder may keep a request on PENDING frames with no other reply: an honest one answers BUSY after
 * at most REDIRECTED_WAIT_MS (a redirected asker), its keep-alives a second apart; past this the request is given up,
 * its chunks asked elsewhere and the holder scored as failed (a hostile holder cannot hold a read on keep-alives).
 */
export const PENDING_HOLD_LIMIT_MS = REDIRECTED_WAIT_MS + 2 * PENDING_INTERVAL_MS

/** abort listeners one fetch's signal may hold before Node warns of a leak */
const FETCH_MAX_LISTENERS = 256

/** local penalties: a failed request, a bad chunk; a delivered request pays back */
const FAIL_PENALTY = 1
const BAD_PENALTY = 4
const SUCCESS_CREDIT = 0.5

export interface NeighbourSourceComponents {
  libp2p: Pick<Libp2p, 'dialProtocol' | 'peerId'>
  /** who holds each chunk (the scheduler at chunk level) */
  resolver: HolderResolver
  /**
   * who holds each chunk when the swarm directory works at blob level (`blob-locator.ts`): replaces `resolver`'s
   * look-ups; outcomes are reported through it
   */
  locator?: ChunkLocator
  logger?: ComponentLogger
}

export interface NeighbourSourceInit {
  /** distinct holders one fetch spreads its chunks over (3) */
  maxHolders?: number
  /** a request with no reply for this long is hedged to the next holder (300 ms) */
  hedgeAfterMs?: number
  /** deadline of the dial and of every read of a request (3 s) */
  requestTimeoutMs?: number
  /** bad chunks after which a peer is never asked again by this process (3) */
  banThreshold?: number
  resolveTimeoutMs?: number
  /**
   * how long the scheduler may take to answer (default: its own short timeout): a source whose alternative is the
   * registry (a mirror's pieces) waits longer rather than adding registry egress
   */
  schedulerWaitMs?: number
  maxRequestBytes?: number
  streamsPerHolder?: number
  /**
   * a chunk a holder answered BUSY is asked of it again this many times, after a growing pause, when no other
   * holder has it (3; 0: at once to the next source; a mirror, whose next source is the registry, waits longer)
   */
  busyRetries?: number
  /** the first pause after a BUSY (250 ms), growing to 4× */
  busyBackoffMs?: number
  /**
   * with a locator (blob level): rounds in which chunks whose every holder answered BUSY are located again, after a
   * growing pause (`busy-replan.ts`), before they go to the next source (40; 0: at once)
   */
  replanRounds?: number
  /**
   * a reply's bytes count as progress for the fetcher's idle deadline in steps of this many, each within a second of
   * the last (64 KiB: a transfer at 64 KiB/s or more; a holder trickling slower still meets the deadline)
   */
  progressStepBytes?: number
  /** streams kept open between requests to a holder ({@link ChunkStreams}) */
  streams?: ChunkStreamsInit
  /** the fetcher's idle deadlines a fetch may go without a chunk ({@link DEFAULT_IDLE_FACTOR}) */
  idleFactor?: number
  /** a holder keeping a request on PENDING frames this long with no other reply fails it ({@link PENDING_HOLD_LIMIT_MS}) */
  pendingHoldMs?: number
}

export interface NeighbourSourceCounters {
  chunksFromPeers: number
  bytesFromPeers: number
  /** chunks whose bytes failed their digest (dropped) */
  badChunks: number
  bannedPeers: number
  /** requests sent to another holder because the first made no progress */
  hedges: number
  /** chunks a busy holder sent us on to a peer it is sending them to (REDIRECT) */
  redirects: number
  /** requests that hit their deadline */
  timeouts: number
  requests: number
  /** requests that failed (dial, reset, protocol, timeout) */
  failedRequests: number
  notFound: number
  busy: number
  /** chunks located again because every holder asked was BUSY */
  replans: number
  /** resolver calls that failed or ran past their deadline */
  resolveFailures: number
  /** requests whose idle stream failed before its first reply (closed under us): sent again on a new stream */
  staleStreams: number
  /** requests given up because their holder kept them on PENDING past `pendingHoldMs` */
  pendingOverstays: number
  /** chunks that rode with a request queued for their holder instead of making one more (`joinsQueued`) */
  joined: number
}

interface PeerRecord { penalty: number, bad: number, banned: boolean }

export class NeighbourSource implements ChunkSource {
  readonly name = 'peer:swarm'
  readonly counters: NeighbourSourceCounters = {
    chunksFromPeers: 0, bytesFromPeers: 0, badChunks: 0, bannedPeers: 0, hedges: 0, redirects: 0, timeouts: 0, requests: 0,
    failedRequests: 0, notFound: 0, busy: 0, replans: 0, resolveFailures: 0, staleStreams: 0, pendingOverstays: 0, joined: 0
  }
  readonly idleFactor: number
  /** streams to holders, kept open between requests */
  readonly streams: ChunkStreams

  /** @internal */ readonly libp2p: NeighbourSourceComponents['libp2p']
  /** @internal */ readonly resolver: HolderResolver
  /** @internal */ readonly locator: ChunkLocator | undefined
  /** @internal */ readonly log: Logger | undefined
  /** @internal */ readonly opts: Required<Omit<NeighbourSourceInit, 'schedulerWaitMs' | 'streams'>> & { schedulerWaitMs?: number }
  private readonly peers = new Map<string, PeerRecord>()
  /** hex digest → peer → requests of this node's fetches that asked the peer for the chunk and have no reply for it yet */
  private readonly asking = new Map<string, Map<string, number>>()

  constructor (components: NeighbourSourceComponents, init: NeighbourSourceInit = {}) {
    this.libp2p = components.libp2p
    this.resolver = components.resolver
    this.locator = components.locator
    this.log = components.logger?.forComponent('rafspeer:neighbour-source')
    this.opts = {
      maxHolders: Math.max(1, init.maxHolders ?? DEFAULT_MAX_HOLDERS),
      hedgeAfterMs: init.hedgeAfterMs ?? DEFAULT_HEDGE_AFTER_MS,
      requestTimeoutMs: init.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS,
      banThreshold: Math.max(1, init.banThreshold ?? DEFAULT_BAN_THRESHOLD),
      resolveTimeoutMs: init.resolveTimeoutMs ?? DEFAULT_RESOLVE_TIMEOUT_MS,
      maxRequestBytes: Math.max(1, init.maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES),
      streamsPerHolder: Math.max(1, init.streamsPerHolder ?? DEFAULT_STREAMS_PER_HOLDER),
      busyRetries: Math.max(0, init.busyRetries ?? DEFAULT_BUSY_RETRIES),
      busyBackoffMs: Math.max(1, init.busyBackoffMs ?? 250),
      replanRounds: Math.max(0, init.replanRounds ?? DEFAULT_REPLAN_ROUNDS),
      progressStepBytes: Math.max(1, init.progressStepBytes ?? PROGRESS_STEP_BYTES),
      pendingHoldMs: Math.max(1, init.pendingHoldMs ?? PENDING_HOLD_LIMIT_MS),
      idleFactor: Math.max(1, init.idleFactor ?? DEFAULT_IDLE_FACTOR),
      ...(init.schedulerWaitMs !== undefined ? { schedulerWaitMs: init.schedulerWaitMs } : {})
    }
    this.idleFactor = this.opts.idleFactor
    // the dial's deadline is made only when a stream is opened, not for every request on a kept one
    this.streams = new ChunkStreams({
      dial: async (holder, signal) => await this.dial(holder, AbortSignal.any([signal, AbortSignal.timeout(this.opts.requestTimeoutMs)]))
    }, init.streams)
  }

  /** Closes the streams kept open; requests later open (and close) their own. */
  close (): void { this.streams.close() }

  /** @internal a new chunk-protocol stream to `holder` */
  async dial (holder: ChunkHolder, signal: AbortSignal): Promise<Stream> {
    // loaded with the first dial, not with the node: a daemon without neighbours never pays for it (~0.17 s)
    const { peerIdFromString } = await import('@libp2p/peer-id')
    const id = peerIdFromString(holder.peerId)
    const addrs = holder.addrs.map(a => multiaddr(`${a.replace(/\/p2p\/[^/]+$/, '')}/p2p/${holder.peerId}`))
    return await this.libp2p.dialProtocol(addrs.length > 0 ? addrs : id, CHUNK_PROTOCOL, { signal })
  }

  /**
   * One request's replies from `holder`, on a stream kept open from an earlier request when there is one. A kept
   * stream that fails before its first reply (closed under us: the holder restarted, the connection dropped) is no
   * fault of the holder's: the request goes again, once, on a new stream. A slow holder's deadline is not retried.
   * @internal
   */
  async * exchange (holder: ChunkHolder, names: ChunkName[], signal: AbortSignal, opts: ChannelExchangeOptions): AsyncGenerator<ChunkReply> {
    const what = `peer:${holder.peerId}`
    const timeoutMs = this.opts.requestTimeoutMs
    for (let attempt = 0; ; attempt++) {
      const { channel, reused } = await this.streams.acquire(holder, what, timeoutMs, signal, attempt > 0)
      let replies = 0
      try {
        for await (const r of channel.exchange(names, { ...opts, signal })) {
          replies++
          yield r
        }
      } catch (err) {
        if (!reused || replies > 0 || signal.aborted || err instanceof ChunkTimeoutError || (err as Error).name === 'TimeoutError') throw err
        this.counters.staleStreams++
        this.log?.debug('%s: a kept stream failed before its first reply (%s): asking on a new one', what, describeError(err))
        continue
      } finally {
        // every reply read (the caller may stop at the last one): the stream waits for the next request
        this.streams.release(holder.peerId, channel)
      }
      return
    }
  }

  /**
   * Whether a fetch of this node asked `peerId` for the chunk and waits for its reply now. That peer asking us for
   * the same chunk would wait on our fetch while our fetch waits on it: the chunk server answers it BUSY at once
   * rather than parking it (two real daemons, each PENDING for a chunk they had planned from each other, stalled
   * their reads a second each time, until the park ran out).
   */
  isAsking (digest: Buffer, peerId: string): boolean {
    return (this.asking.get(digest.toString('hex'))?.get(peerId) ?? 0) > 0
  }

  /** @internal a request asks `peerId` for `digest` (`delta` 1) or has its reply for it, or ended (-1) */
  asked (digest: Buffer, peerId: string, delta: 1 | -1): void {
    const key = digest.toString('hex')
    let peers = this.asking.get(key)
    if (peers === undefined) {
      if (delta < 0) return
      this.asking.set(key, peers = new Map())
    }
    const n = (peers.get(peerId) ?? 0) + delta
    if (n > 0) peers.set(peerId, n)
    else {
      peers.delete(peerId)
      if (peers.size === 0) this.asking.delete(key)
    }
  }

  isBanned (peerId: string): boolean { return this.peers.get(peerId)?.banned === true }
  bannedPeers (): string[] { return [...this.peers].filter(([, r]) => r.banned).map(([id]) => id) }
  /** @internal */ penalty (peerId: string): number { return this.peers.get(peerId)?.penalty ?? 0 }

  async * fetch (blob: RafsBlobInfo, chunks: ChunkInfo[], opts: ChunkSourceFetchOptions): AsyncGenerator<FetchedChunk> {
    const servable = chunks.filter(c => c.uncompressedSize >= 1 && c.uncompressedSize <= MAX_CHUNK_BYTES)
    const resolved = servable.length === 0
      ? new Map<string, ChunkHolder[]>()
      : this.locator !== undefined ? await this.locate(blob, servable, opts.signal) : await this.resolve(servable, opts.signal)
    const holders = resolved instanceof Map ? resolved : new Map<string, ChunkHolder[]>()
    const wanted = servable.filter(c => (holders.get(c.digest.toString('hex'))?.length ?? 0) > 0)
    // nobody to ask for the rest: the fetcher takes them elsewhere now, not after this fetch
    if (wanted.length < chunks.length) {
      const asked = new Set(wanted)
      opts.decline?.(chunks.filter(c => !asked.has(c)))
    }
    if (wanted.length === 0) return
    // how many neighbours have each chunk: the fetcher waits on chunks spreading through the swarm
    const locator = this.locator
    if (locator?.holders !== undefined) opts.holders?.(c => locator.holders!(blob.blobId, c.index))
    let swarm = new SwarmFetch(this, blob, wanted, holders, opts)
    yield * swarm.run()
    if (this.locator === undefined) return
    for (let round = 1; round <= this.opts.replanRounds; round++) {
      const busy = swarm.busyLeft()
      if (busy.length === 0) return
      this.counters.replans += busy.length
      await delay(replanDelayMs(round), opts.signal)
      const again = await this.locate(blob, busy, opts.signal)
      const next = busy.filter(c => (again.get(c.digest.toString('hex'))?.length ?? 0) > 0)
      if (next.length < busy.length) {
        const asked = new Set(next)
        opts.decline?.(busy.filter(c => !asked.has(c)))
      }
      if (next.length === 0) return
      swarm = new SwarmFetch(this, blob, next, again, opts)
      yield * swarm.run()
    }
  }

  private async locate (blob: RafsBlobInfo, chunks: ChunkInfo[], signal: AbortSignal): Promise<Map<string, ChunkHolder[]>> {
    try {
      return await this.locator!.locate(blob, chunks, { signal })
    } catch (err) {
      signal.throwIfAborted()
      this.counters.resolveFailures++
      this.log?.warn('locating holders of %d chunks of blob %s failed: %s', chunks.length, blob.blobId, describeError(err))
      return new Map()
    }
  }

  private async resolve (chunks: ChunkInfo[], signal: AbortSignal): Promise<Map<string, ChunkHolder[]>> {
    const digests = [...new Map(chunks.map(c => [c.digest.toString('hex'), c.digest])).values()]
    const both = AbortSignal.any([signal, AbortSignal.timeout(this.opts.resolveTimeoutMs)])
    try {
      const wait = this.opts.schedulerWaitMs !== undefined ? { timeoutMs: this.opts.schedulerWaitMs } : {}
      return await raceSignal(this.resolver.resolve(digests, { signal: both, ...wait }), both)
    } catch (err) {
      signal.throwIfAborted()
      this.counters.resolveFailures++
      this.log?.warn('resolving %d chunk holders failed: %s', digests.length, describeError(err))
      return new Map()
    }
  }

  /** @internal */
  recordOutcome (o: PeerOutcome, badChunks: number): void {
    const rec = this.peers.get(o.peerId) ?? { penalty: 0, bad: 0, banned: false }
    this.peers.set(o.peerId, rec)
    if (o.failed) rec.penalty += FAIL_PENALTY
    else if (o.chunks > 0 && badChunks === 0) rec.penalty = Math.max(0, rec.penalty - SUCCESS_CREDIT)
    try {
      ;(this.locator ?? this.resolver).report([o])
    } catch (err) {
      this.log?.warn('reporting to the resolver failed: %s', describeError(err))
    }
  }

  /**
   * Bans a peer at once: it sent something provably false that is not a chunk (a registry mirror's piece map that
   * failed the blob's digest). It is never asked again by this process.
   */
  ban (peerId: string, why: string): void {
    const rec = this.peers.get(peerId) ?? { penalty: 0, bad: 0, banned: false }
    this.peers.set(peerId, rec)
    if (rec.banned) return
    rec.banned = true
    rec.penalty += BAD_PENALTY
    this.counters.bannedPeers++
    this.log?.error('peer:%s %s: banned', peerId, why)
  }

  /** @internal a chunk from `peerId` failed its digest; true when that got the peer banned */
  recordBad (peerId: string): boolean {
    const rec = this.peers.get(peerId) ?? { penalty: 0, bad: 0, banned: false }
    this.peers.set(peerId, rec)
    this.counters.badChunks++
    rec.bad++
    rec.penalty += BAD_PENALTY
    if (rec.banned || rec.bad < this.opts.banThreshold) return false
    rec.banned = true
    this.counters.bannedPeers++
    this.log?.error('peer:%s sent %d chunks that fail their digest: banned', peerId, rec.bad)
    return true
  }
}

/** One chunk of one fetch. */
interface Want {
  chunk: ChunkInfo
  candidates: ChunkHolder[]
  /** handed to the next source (`ChunkSourceFetchOptions.decline`): never asked or yielded again */
  declined?: boolean
  /** holders asked already (or being asked) */
  tried: Set<string>
  /** requests asking for it now */
  attempts: Set<Request>
  done: boolean
  /** BUSY answers so far */
  busy: number
  /** REDIRECT answers so far */
  redirects: number
  /** the holder a REDIRECT named: asked next */
  next?: ChunkHolder | undefined
  /** its latest request follows a REDIRECT */
  following?: boolean
  /** the holder whose REDIRECT it follows (it has the chunk): asked again, to send it, if the one it named does not */
  origin?: ChunkHolder | undefined
  /** its requests no longer take redirects */
  noRedirect?: boolean
  /** the peers its REDIRECTs came from or named: one named again is not followed (no circles) */
  chain?: Set<string>
}

interface Lane { holder: ChunkHolder, queued: Request[], running: number, assigned: number, /** running requests that carried a read's chunk when they began */ runningUrgent: number }

interface Request {
  lane: Lane
  wants: Want[]
  replied: boolean[]
  controller: AbortController
  /** aborted by us because its chunks came from elsewhere: not the peer's failure */
  cancelled: boolean
  /** its chunks went to other holders once already (a request hedges once) */
  hedged: boolean
  /** it follows a REDIRECT: asked first, on a stream of its own, and the holder waits for the chunks longer */
  redirected: boolean
  /** it carried a chunk a read waits for when it began (`ChunkSourceFetchOptions.urgent`) */
  urgent?: boolean
}

/**
 * A reply's bytes count as progress ({@link ChunkSourceFetchOptions.progress}) in steps of this many, each within
 * {@link PROGRESS_WINDOW_MS} of the last: a transfer at 64 KiB/s or more keeps the fetcher's idle deadline off, a
 * holder trickling bytes slower (a hostile one holding a read) does not.
 */
export const PROGRESS_STEP_BYTES = 64 << 10
export const PROGRESS_WINDOW_MS = 1_000

/** `progress`, told of bytes only at a live transfer's pace: `step` bytes within {@link PROGRESS_WINDOW_MS}. */
export function progressAtPace (progress: (bytes: number) => void, step = PROGRESS_STEP_BYTES, now: () => number = () => performance.now()): (bytes: number) => void {
  let since = now()
  let bytes = 0
  return n => {
    const t = now()
    if (t - since > PROGRESS_WINDOW_MS) { since = t; bytes = 0 }
    bytes += n
    if (bytes < step) return
    progress(bytes)
    since = t
    bytes = 0
  }
}

/** The state of one `fetch` call. */
class SwarmFetch {
  private readonly wants: Want[] = []
  private readonly lanes = new Map<string, Lane>()
  private readonly ready: FetchedChunk[] = []
  private readonly controller = new AbortController()
  private readonly signal: AbortSignal
  private readonly verify: ChunkSourceFetchOptions['verify']
  /** the fetcher's: chunk bytes still arriving keep its idle deadline off */
  private readonly progress: ChunkSourceFetchOptions['progress']
  /** the fetcher's: which chunks a read waits for (asked first) */
  private readonly urgent: ChunkSourceFetchOptions['urgent']
  /** the fetcher's: chunks handed to the next source now */
  private readonly decline: ChunkSourceFetchOptions['decline']
  /** the fetcher's: chunks it took elsewhere meanwhile (a read waited too long): asked no more, still taken if they come */
  private readonly withdrawn: ChunkSourceFetchOptions['withdrawn']
  private readonly self: string
  private pendingAssign: Want[] = []
  /** peers asked only because a REDIRECT named them (at most MAX_REDIRECT_PEERS) */
  private readonly redirectPeers = new Set<string>()
  private flushScheduled = false
  /** requests queued or running */
  private outstanding = 0
  private wake: (() => void) | undefined

  constructor (private readonly src: NeighbourSource, private readonly blob: RafsBlobInfo, chunks: ChunkInfo[],
    holders: Map<string, ChunkHolder[]>, opts: ChunkSourceFetchOptions) {
    this.signal = AbortSignal.any([opts.signal, this.controller.signal])
    // each request (and each BUSY retry waiting) listens to it: requests that follow redirects reach holders beyond
    // the fetch's few lanes, so a busy fetch holds more than Node's default of 10 at once
    setMaxListeners(FETCH_MAX_LISTENERS, this.signal)
    this.verify = opts.verify
    this.progress = opts.progress
    this.urgent = opts.urgent
    this.decline = opts.decline
    this.withdrawn = opts.withdrawn
    this.self = src.libp2p.peerId.toString()
    const seen = new Set<number>()
    for (const chunk of chunks) {
      if (seen.has(chunk.index)) continue
      seen.add(chunk.index)
      const candidates = (holders.get(chunk.digest.toString('hex')) ?? [])
        .filter(h => typeof h?.peerId === 'string' && h.peerId !== this.self && Array.isArray(h.addrs))
      if (candidates.length > 0) this.wants.push({ chunk, candidates, tried: new Set(), attempts: new Set(), done: false, busy: 0, redirects: 0 })
    }
  }

  async * run (): AsyncGenerator<FetchedChunk> {
    const onAbort = (): void => { this.wake?.() }
    this.signal.addEventListener('abort', onAbort, { once: true })
    try {
      this.pendingAssign = [...this.wants]
      this.flush()
      for (;;) {
        const next = this.ready.shift()
        if (next !== undefined) { yield next; continue }
        this.signal.throwIfAborted()
        if (this.outstanding === 0 && !this.flushScheduled) return
        await new Promise<void>(resolve => { this.wake = resolve })
        this.wake = undefined
      }
    } finally {
      this.signal.removeEventListener('abort', onAbort)
      this.controller.abort(new Error('fetch finished'))
    }
  }

  private notify (): void { this.wake?.() }

  /**
   * Chunks not delivered whose holders answered BUSY or sent us on (after `run`): worth locating again, the swarm
   * is busy with them.
   */
  busyLeft (): ChunkInfo[] { return this.wants.filter(w => !w.done && !this.gone(w) && (w.busy > 0 || w.redirects > 0)).map(w => w.chunk) }

  /** whether the fetcher took `w` elsewhere: not asked for again */
  private gone (w: Want): boolean { return this.withdrawn?.(w.chunk) === true }

  /** `requeue` after `ms` (the fetch stays open meanwhile) */
  private requeueLater (w: Want, ms: number): void {
    this.outstanding++
    const timer = setTimeout(() => {
      this.signal.removeEventListener('abort', stop)
      this.outstanding--
      this.requeue(w)
      this.notify()
    }, ms)
    const stop = (): void => { clearTimeout(timer); this.outstanding--; this.notify() }
    this.signal.addEventListener('abort', stop, { once: true })
  }

  private requeue (w: Want): void {
    if (w.done || w.declined === true || w.attempts.size > 0 || this.signal.aborted || this.gone(w)) return
    this.pendingAssign.push(w)
    if (this.flushScheduled) return
    this.flushScheduled = true
    queueMicrotask(() => { this.flushScheduled = false; this.flush(); this.notify() })
  }

  /** Wants that need a holder are assigned in one go, so their requests batch. */
  private flush (): void {
    const byLane = new Map<Lane, Want[]>()
    const followed = new Map<Lane, Want[]>()
    const none: Want[] = []
    for (const w of this.pendingAssign) {
      if (w.done || w.declined === true || w.attempts.size > 0 || this.gone(w)) continue
      const lane = this.choose(w)
      if (lane === undefined) {
        // nobody left to ask: the next source takes it now, not once the fetch's other chunks are through (a chunk
        // whose only holder never answered waited for the rest of its batch — 31 chunks of a busy swarm, 20 s — and
        // peers following our PENDING for it waited with it). One a holder answered BUSY for is located again after
        // the fetch instead (`busyLeft`)
        if (w.busy === 0 && w.redirects === 0) none.push(w)
        continue
      }
      const to = w.following === true ? followed : byLane
      const list = to.get(lane) ?? []
      list.push(w)
      to.set(lane, list)
    }
    this.pendingAssign = []
    if (none.length > 0 && this.decline !== undefined) {
      for (const w of none) w.declined = true
      this.decline(none.map(w => w.chunk))
    }
    for (const [lane, wants] of followed) this.enqueue(lane, wants, true)
    for (const [lane, wants] of byLane) this.enqueue(lane, wants)
  }

  /**
   * The lane of the holder to ask for `w` (the one a REDIRECT named, else `chooseHolder` among its untried, unbanned
   * holders), its bytes counted.
   */
  private choose (w: Want): Lane | undefined {
    const next = w.next
    w.next = undefined
    w.following = next !== undefined
    const open = next !== undefined ? [next] : w.candidates.filter(h => !w.tried.has(h.peerId) && !this.src.isBanned(h.peerId))
    const h = chooseHolder(open, w.chunk.uncompressedSize, {
      inUse: this.lanes.size,
      maxHolders: this.src.opts.maxHolders,
      assigned: c => this.lanes.get(c.peerId)?.assigned,
      penalty: c => this.src.penalty(c.peerId)
    })
    if (h === undefined) return undefined
    let lane = this.lanes.get(h.peerId)
    if (lane === undefined) {
      lane = { holder: h, queued: [], running: 0, assigned: 0, runningUrgent: 0 }
      this.lanes.set(h.peerId, lane)
    }
    lane.assigned += w.chunk.uncompressedSize
    return lane
  }

  private enqueue (lane: Lane, wants: Want[], redirected = false): void {
    const holder = lane.holder.peerId
    // a chunk the holder is still fetching goes alone: the chunks it has would wait behind it
    const alone = (w: Want): boolean => w.candidates.some(h => h.peerId === holder && h.fetching === true)
    const size = (w: Want): number => w.chunk.uncompressedSize
    const shape = (list: Want[], r: boolean): QueuedShape =>
      ({ chunks: list.length, bytes: list.reduce((n, w) => n + size(w), 0), redirected: r, alone: list.some(alone) })
    const { maxRequestBytes } = this.src.opts
    for (const part of splitRequests(wants, size, maxRequestBytes, MAX_CHUNKS_PER_REQUEST, alone)) {
      // a queued request of the same kind takes them along (`joinsQueued`): redirected ones queue first, others last
      const queued = redirected ? lane.queued[0] : lane.queued[lane.queued.length - 1]
      const req: Request = queued !== undefined && joinsQueued(shape(queued.wants, queued.redirected), shape(part, redirected), maxRequestBytes, MAX_CHUNKS_PER_REQUEST)
        ? queued
        : { lane, wants: [], replied: [], controller: new AbortController(), cancelled: false, hedged: false, redirected }
      for (const w of part) { req.wants.push(w); req.replied.push(false); w.attempts.add(req); w.tried.add(lane.holder.peerId) }
      if (req === queued) { this.src.counters.joined += part.length; continue }
      if (redirected) lane.queued.unshift(req)
      else lane.queued.push(req)
      this.outstanding++
    }
    this.pump(lane)
  }

  private pump (lane: Lane): void {
    // a request that follows a REDIRECT goes first, on a stream of its own if need be (REDIRECTED_EXTRA_STREAMS);
    // then one with a chunk a read waits for (`nextQueued`)
    const urgent = this.urgent
    const carriesUrgent = (req: Request): boolean => urgent !== undefined && req.wants.some(w => !w.done && urgent(w.chunk))
    for (;;) {
      const at = nextQueued(lane.queued, lane, this.src.opts.streamsPerHolder, REDIRECTED_EXTRA_STREAMS, i => carriesUrgent(lane.queued[i]!))
      if (at < 0) return
      const req = lane.queued.splice(at, 1)[0]!
      req.urgent = carriesUrgent(req)
      lane.running++
      if (req.urgent) lane.runningUrgent++
      void this.runRequest(req).finally(() => {
        lane.running--
        if (req.urgent === true) lane.runningUrgent--
        this.outstanding--
        this.pump(lane)
        this.notify()
      })
    }
  }

  private async runRequest (req: Request): Promise<void> {
    const { holder } = req.lane
    const peerId = holder.peerId
    const started = performance.now()
    const { hedgeAfterMs } = this.src.opts
    const counters = this.src.counters
    let chunks = 0
    let bytes = 0
    let bad = 0
    let failed = false
    let hedgeTimer: NodeJS.Timeout | undefined
    let holdTimer: NodeJS.Timeout | undefined
    const armHedge = (): void => {
      clearTimeout(hedgeTimer)
      clearTimeout(holdTimer)
      holdTimer = undefined
      if (!req.hedged) hedgeTimer = setTimeout(() => { this.hedge(req) }, hedgeAfterMs)
    }
    const signal = AbortSignal.any([this.signal, req.controller.signal])
    // the wants this request asks the holder for and has no reply for yet (`NeighbourSource.isAsking`)
    const unanswered = new Set<number>()
    const answered = (i: number): void => { if (unanswered.delete(i)) this.src.asked(req.wants[i]!.chunk.digest, peerId, -1) }
    try {
      if (this.src.isBanned(peerId) || req.wants.every(w => w.done || this.gone(w))) { req.cancelled = true; return }
      req.wants.forEach((w, i) => { unanswered.add(i); this.src.asked(w.chunk.digest, peerId, 1) })
      counters.requests++
      armHedge()
      const names: ChunkName[] = req.wants.map(w => ({ digest: w.chunk.digest, blobId: this.blob.blobId, ci: w.chunk.index, size: w.chunk.uncompressedSize }))
      // a holder waiting for its own fetch of the next chunk (PENDING) is waited for, not hedged, until its next reply
      const accept = (req.wants.every(w => w.noRedirect !== true && w.redirects < MAX_REDIRECTS) ? AcceptFlags.REDIRECT : 0) |
        (req.redirected ? AcceptFlags.REDIRECTED : 0) | (req.urgent === true ? AcceptFlags.URGENT : 0)
      // ...but only as long as an honest holder may hold it (keep-alives do not extend that)
      const onPending = (): void => {
        clearTimeout(hedgeTimer)
        holdTimer ??= setTimeout(() => {
          counters.pendingOverstays++
          req.controller.abort(new Error(`peer:${peerId} kept the request on PENDING for ${this.src.opts.pendingHoldMs} ms`))
        }, this.src.opts.pendingHoldMs)
      }
      // a chunk still arriving (a shared or slow uplink) is progress for the fetcher's idle deadline, as a Range's bytes
      // are: cut off, its bytes would be paid for again from the registry (the model: 8 × 64 MiB prefetching, 18 fetches
      // given up 10 s after they began with a chunk a quarter short, 1.33 copies from the registry). Only at a live
      // transfer's pace, though: a holder trickling bytes slower than that still meets the deadline
      const onBytes = this.progress !== undefined ? progressAtPace(this.progress, this.src.opts.progressStepBytes) : undefined
      for await (const r of this.src.exchange(holder, names, signal, { accept, onPending, ...(onBytes !== undefined ? { onBytes } : {}) })) {
        // banned meanwhile (by another request): its bytes are not even looked at
        if (this.src.isBanned(peerId)) break
        armHedge()
        const w = req.wants[r.i]!
        answered(r.i)
        req.replied[r.i] = true
        w.attempts.delete(req)
        if (r.status === ChunkStatus.OK) {
          // a hedged request's late copy is checked too: it scores its sender, even when the chunk came already
          const plaintext = r.payload!
          if (this.verify(w.chunk, plaintext)) {
            chunks++
            bytes += plaintext.length
            this.deliver(w, plaintext)
          } else {
            bad++
            this.src.log?.warn('peer:%s sent chunk %d of blob %s with the wrong digest: dropped', peerId, w.chunk.index, this.blob.blobId)
            this.src.recordBad(peerId)
            this.requeue(w)
          }
        } else if (r.status === ChunkStatus.REDIRECT) {
          this.redirect(w, r.peerId!, r.addrs ?? [], holder)
          this.requeue(w)
        } else if (r.status !== ChunkStatus.BUSY && req.redirected && this.backToOrigin(w)) {
          // the peer a REDIRECT named neither has it nor fetches it (it lost it, or never kept it): the holder that
          // sent us there has it
          if (r.status === ChunkStatus.NOT_FOUND) counters.notFound++
          this.requeue(w)
        } else if (r.status === ChunkStatus.BUSY && ++w.busy <= this.src.opts.busyRetries &&
          !w.candidates.some(h => !w.tried.has(h.peerId) && !this.src.isBanned(h.peerId))) {
          counters.busy++
          // nobody else has it: this holder again, a little later
          w.tried.delete(peerId)
          this.requeueLater(w, this.src.opts.busyBackoffMs * Math.min(4, w.busy))
        } else {
          if (r.status === ChunkStatus.BUSY) counters.busy++
          else if (r.status === ChunkStatus.NOT_FOUND) counters.notFound++
          else this.src.log?.debug('peer:%s could not read chunk %d of blob %s: %s', peerId, w.chunk.index, this.blob.blobId, r.message)
          this.requeue(w)
        }
        // banned, or everything asked arrived from elsewhere: stop reading (aborts the stream)
        if (this.src.isBanned(peerId)) break
        if (req.wants.every((x, i) => req.replied[i] === true || x.done)) { req.cancelled = !req.replied.every(Boolean); break }
      }
    } catch (err) {
      if (!req.cancelled && !this.signal.aborted) {
        failed = true
        counters.failedRequests++
        if (err instanceof ChunkTimeoutError || (err as Error).name === 'TimeoutError') counters.timeouts++
        this.src.log?.debug('peer:%s: request for %d chunks of blob %s failed: %s', peerId, req.wants.length, this.blob.blobId, describeError(err))
      }
    } finally {
      clearTimeout(hedgeTimer)
      clearTimeout(holdTimer)
      for (const i of unanswered) answered(i)
      req.wants.forEach((w, i) => {
        if (req.replied[i] === true) return
        w.attempts.delete(req)
        if (req.redirected && !w.done) this.backToOrigin(w)
        this.requeue(w)
      })
      // a request we stopped ourselves says nothing about the peer
      if (chunks > 0 || bad > 0 || failed || !(req.cancelled || this.signal.aborted)) {
        this.src.recordOutcome({ peerId, chunks, bytes, ms: performance.now() - started, failed, bad: bad > 0 }, bad)
      }
    }
  }

  /**
   * Holder `from` sent `w` on to `peerId` (one it is sending the chunk to, at `addrs` as `from` knows them): that one
   * is asked next, even if it was asked before (it is receiving the chunk now); unless it is us, it sent `w` on or
   * was named for it before (a circle), is banned, `w` was sent on too often, or it is one more peer
   * this fetch knows only from redirects past MAX_REDIRECT_PEERS: then `from`, which has the chunk, is asked again
   * without taking redirects.
   */
  private redirect (w: Want, peerId: string, addrs: string[], from: ChunkHolder): void {
    this.src.counters.redirects++
    const known = w.candidates.find(h => h.peerId === peerId) ?? this.lanes.get(peerId)?.holder
    const unknownPast = known === undefined && !this.redirectPeers.has(peerId) && this.redirectPeers.size >= MAX_REDIRECT_PEERS
    const chain = w.chain ??= new Set()
    chain.add(from.peerId)
    if (++w.redirects > MAX_REDIRECTS || peerId === this.self || chain.has(peerId) || this.src.isBanned(peerId) || unknownPast) {
      w.next = from
      w.noRedirect = true
      w.origin = undefined
      return
    }
    if (known === undefined) this.redirectPeers.add(peerId)
    chain.add(peerId)
    w.next = known !== undefined && known.addrs.length > 0 ? known : { peerId, addrs }
    w.origin = from
  }

  /** A followed redirect did not deliver `w`: the holder that sent it there is asked again, to send it itself. */
  private backToOrigin (w: Want): boolean {
    const origin = w.origin
    w.origin = undefined
    if (origin === undefined || this.src.isBanned(origin.peerId)) return false
    w.next = origin
    w.noRedirect = true
    return true
  }

  /** A verified chunk, first of its name: out it goes; requests that now have nothing left to give are stopped. */
  private deliver (w: Want, plaintext: Buffer): void {
    if (w.done || w.declined === true) return
    w.done = true
    this.src.counters.chunksFromPeers++
    this.src.counters.bytesFromPeers += plaintext.length
    this.ready.push({ chunk: w.chunk, plaintext })
    for (const other of w.attempts) {
      if (other.wants.every(x => x.done)) { other.cancelled = true; other.controller.abort(new Error('chunks delivered by another holder')) }
    }
    w.attempts.clear()
    this.notify()
  }

  /** No reply for hedgeAfterMs: the chunks of `req` nobody else is asked for go to their next holders too. */
  private hedge (req: Request): void {
    if (req.hedged || this.signal.aborted) return
    req.hedged = true
    const byLane = new Map<Lane, Want[]>()
    req.wants.forEach((w, i) => {
      if (req.replied[i] === true || w.done || w.attempts.size > 1 || this.gone(w)) return
      const lane = this.choose(w)
      if (lane === undefined) return
      const list = byLane.get(lane) ?? []
      list.push(w)
      byLane.set(lane, list)
    })
    if (byLane.size === 0) return
    this.src.counters.hedges++
    this.src.log?.debug('peer:%s: no reply for %d ms, hedging %d chunks', req.lane.holder.peerId, this.src.opts.hedgeAfterMs,
      [...byLane.values()].reduce((n, l) => n + l.length, 0))
    for (const [lane, wants] of byLane) this.enqueue(lane, wants)
  }
}
