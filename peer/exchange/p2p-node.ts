/**
 * A daemon's place in the swarm: its libp2p host, the chunk server answering neighbours from the cache, the
 * scheduler client (or a scheduler embedded in this node) and the neighbour chunk source its fetchers try before
 * the registry.
 *
 * Claims: when this node resolves chunks, the scheduler records it as their holder at once (it is about to fetch
 * them, from the registry when nobody holds them), so peers asking next may come here instead of all going to
 * the registry or to the same first holder.
 * The node keeps those claims: a neighbour asking for a claimed chunk waits (up to `claimWaitMs`) for this node's
 * own fetch; a claim not fulfilled within `claimTtlMs` is released at the scheduler.
 *
 * Connections: the host keeps at most `maxConnections`, closing idle ones for newcomers and after
 * `idleConnectionMs` (see `p2p/connection-guard.ts`). The node tags the peers whose connections are worth keeping,
 * so those are closed last or never: the scheduler always, and for a few minutes after each exchange, the
 * neighbours it served or fetched chunks from.
 *
 * @example
 * ```ts
 * const node = await P2PNode.start({ cache }, { listen: ['/ip4/0.0.0.0/tcp/0'], keyFile: '/var/lib/rafspeer/peer.key',
 *   scheduler: { address: '/ip4/10.0.0.5/tcp/8002/p2p/12D3KooW…' } })
 * const mounts = new MountManager({ cache, fuse, extraSources: [node.source] }, init)
 * cache.events.on('stored', digests => { node.onChunksStored(digests) })
 * await node.stop()
 * ```
 */
import type { PeerId } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { describeError, type ComponentLogger, type Logger } from '../../base/index.js'
import type { BlobCache } from '../../cache/index.js'
import {
  KEEP_TAG_VALUE, announceAddrs, createHost, tagPeer, type ChunkAnnouncer, type ChunkHolder, type ConnectionGuardCounters,
  type HolderResolver, type Host, type PeerOutcome
} from '../../p2p/index.js'
import { DIGEST_BYTES, SchedulerClient, SchedulerService, packDigests } from '../../scheduler/index.js'
import type { FlightActivity, PrefetchAdvisor } from '../fetch/index.js'
import { BlobLocator } from './blob-locator.js'
import type { SourceReason } from './back-to-source.js'
import { ChunkServer, type ChunkServerCounters, type ServableCache } from './chunk-server.js'
import { HaveService, type HaveCounters } from './have-service.js'
import { CacheChunks, waitingForFlights } from './local-chunks.js'
import { DEFAULT_BUSY_AFTER_PARK_MS } from './busy-replan.js'
import { NeighbourSource, type NeighbourSourceCounters, type NeighbourSourceInit } from './neighbour-source.js'
import type { ChunkStreamsCounters } from './chunk-streams.js'

export const DEFAULT_CLAIM_WAIT_MS = 20_000
export const DEFAULT_CLAIM_TTL_MS = 60_000
/** digests announced per batch while the cache's holdings are announced at start */
const STARTUP_ANNOUNCE_BATCH = 4096
/** the scheduler's connection is never closed for room or idleness */
export const SCHEDULER_TAG = 'rafspeer-scheduler'
/** a neighbour this node served or fetched chunks from: its connection is kept a while, and closed after strangers' */
export const EXCHANGE_TAG = 'rafspeer-exchange'
export const EXCHANGE_TAG_VALUE = 50
export const EXCHANGE_TAG_TTL_MS = 5 * 60_000

export interface P2PNodeInit {
  listen?: string[]
  /** the persistent identity; a fresh one per start without it */
  keyFile?: string
  /** connections kept open; a new one past it closes an idle one (256) */
  maxConnections?: number
  /** inbound connections from one IP address, loopback excepted (an eighth of maxConnections, at least 32) */
  maxConnectionsPerIp?: number
  /** a connection to an untagged peer with no stream for this long is closed; 0: never (30 s) */
  idleConnectionMs?: number
  maxConcurrentUploads?: number
  /** requests a read waits for answered past maxConcurrentUploads while prefetch uploads hold every slot (a quarter of it) */
  maxUrgentUploads?: number
  /** upload slots one neighbour is sure of (a quarter of maxConcurrentUploads) */
  maxUploadsPerPeer?: number
  /** upload bytes per second to neighbours (unlimited when absent or 0) */
  uploadBytesPerSecond?: number
  maxHolders?: number
  hedgeAfterMs?: number
  requestTimeoutMs?: number
  banThreshold?: number
  /** how long a neighbour's request waits for a chunk this node claimed (20 s) */
  claimWaitMs?: number
  /** a claim not fulfilled by then is released at the scheduler (60 s) */
  claimTtlMs?: number
  /**
   * what the scheduler indexes: `chunks` (every chunk digest and its holders) or `blobs` (who works on which blob;
   * which chunks each has travels between neighbours over `/rafspeer/have/1.0.0`, see `blob-locator.ts`)
   */
  directory?: 'chunks' | 'blobs'
  scheduler?: {
    /** multiaddr with `/p2p/<id>` of a scheduler to use, or several (one at a time, the next when it fails) */
    address?: string | readonly string[]
    /** serve the scheduler protocol from this node (and use it in process) */
    embedded?: boolean
    zone?: string
    resolveTimeoutMs?: number
    heartbeatMs?: number
  }
}

export interface P2PNodeComponents {
  cache: BlobCache
  logger?: ComponentLogger
}

/** What `/api/v1/daemon` and the metrics say about the node's part in the swarm. */
export interface P2PStats {
  peerId: string
  addrs: string[]
  scheduler: { address?: string, embedded: boolean, connected: boolean }
  upload: ChunkServerCounters
  download: NeighbourSourceCounters & { streams: ChunkStreamsCounters }
  /** the have protocol's sessions and messages (blob-level directory only) */
  have?: HaveCounters
  /** chunks the blob locator sent to the registry, by why (blob-level directory only; `SourceReason`) */
  registryChunks?: Record<SourceReason, number>
  /** chunks nobody it followed had that this node, outside their blob's group, asked their assignee for before the registry */
  assigneeAsks?: number
  /** the largest swarm this node works in, as the scheduler last counted it (blob-level directory, scheduler 1.1; 0: not known) */
  largestSwarm?: number
  /** libp2p connections open now, and what the host's guard closed or refused to keep room */
  connections: { open: number } & ConnectionGuardCounters
  /** chunks this node claimed at the scheduler and is still fetching */
  claims: number
}

/** Nobody to ask: a node that only serves (no scheduler configured). */
const NO_HOLDERS: HolderResolver & ChunkAnnouncer & { releaseClaims?: undefined } = {
  resolve: async () => new Map(),
  report: () => {},
  announce: () => {},
  withdraw: () => {}
}

type Swarm = HolderResolver & ChunkAnnouncer & { releaseClaims?: (digests: Buffer[]) => void }

export class P2PNode {
  readonly host: Host
  readonly server: ChunkServer
  readonly source: NeighbourSource
  readonly client: SchedulerClient | undefined
  readonly embedded: SchedulerService | undefined
  /** blob-level directory: neighbours' bitfields and ours */
  readonly have: HaveService | undefined
  /** blob-level directory: which chunks a prefetch takes next (the node's share of the registry's, then the rarest) */
  readonly prefetchAdvisor: PrefetchAdvisor | undefined
  private readonly locator: BlobLocator | undefined
  private readonly local: CacheChunks | undefined
  private readonly swarm: Swarm
  private readonly resolver: HolderResolver
  private readonly cache: BlobCache
  private readonly log: Logger | undefined
  private readonly claimWaitMs: number
  private readonly claimTtlMs: number
  /** hex digest → the claimed digest and when the claim lapses */
  private readonly claims = new Map<string, { digest: Buffer, until: number }>()
  /** hex digest → wake-ups of neighbour requests waiting for it */
  private readonly waiters = new Map<string, Set<() => void>>()
  private claimTimer: NodeJS.Timeout | undefined
  /** an embedded scheduler's own node has no session: it tells its index it is alive itself */
  private selfBeat: NodeJS.Timeout | undefined
  private uploadRate = { at: performance.now(), bytes: 0, bps: 0 }
  /** peer id → when it was last tagged for an exchange (a peer store write per request would be too many) */
  private readonly tagged = new Map<string, number>()
  private stopped = false

  private constructor (host: Host, components: P2PNodeComponents, init: P2PNodeInit) {
    this.host = host
    this.cache = components.cache
    const logger = components.logger
    this.log = logger?.forComponent('rafspeer:p2p')
    this.claimWaitMs = init.claimWaitMs ?? DEFAULT_CLAIM_WAIT_MS
    this.claimTtlMs = init.claimTtlMs ?? DEFAULT_CLAIM_TTL_MS
    const upload = init.uploadBytesPerSecond !== undefined && init.uploadBytesPerSecond > 0 ? init.uploadBytesPerSecond : undefined
    if (init.directory === 'blobs') {
      this.local = new CacheChunks(this.cache)
      this.have = new HaveService({ libp2p: host, local: this.local, ...(logger !== undefined ? { logger } : {}) })
    }
    // blob level: a neighbour waits for our fetch of a chunk at most a second, then hears BUSY and looks again
    // (but not for a chunk our fetch is asking that neighbour for: BUSY at once)
    const servable = this.local !== undefined
      ? waitingForFlights(this.cache, this.local, Math.min(this.claimWaitMs, DEFAULT_BUSY_AFTER_PARK_MS), (digest, peer) => this.source.isAsking(digest, peer))
      : this.servable()
    this.server = new ChunkServer({
      libp2p: host,
      cache: servable,
      onUpload: peer => { this.valueExchange(peer) },
      addressesOf: async id => (await host.peerStore.get(peerIdFromString(id))).addresses.map(a => a.multiaddr.toString()),
      ...(logger !== undefined ? { logger } : {})
    }, {
      ...(init.maxConcurrentUploads !== undefined ? { maxConcurrentUploads: init.maxConcurrentUploads } : {}),
      ...(init.maxUploadsPerPeer !== undefined ? { maxUploadsPerPeer: init.maxUploadsPerPeer } : {}),
      ...(init.maxUrgentUploads !== undefined ? { maxUrgentUploads: init.maxUrgentUploads } : {}),
      ...(upload !== undefined ? { uploadBytesPerSecond: upload } : {})
    })
    const zone = init.scheduler?.zone ?? ''
    const uploadSlots = init.maxConcurrentUploads ?? 0
    if (init.scheduler?.embedded === true) {
      this.embedded = new SchedulerService({ libp2p: host }, {
        ...(logger !== undefined ? { logger } : {}),
        ...(init.scheduler.heartbeatMs !== undefined ? { heartbeatMs: init.scheduler.heartbeatMs } : {})
      })
      const index = this.embedded.index
      const self = host.peerId.toString()
      const info = (): { addrs: string[], zone: string, uploadSlots: number, uploadBps: number } =>
        ({ addrs: announceAddrs(host), zone, uploadSlots, uploadBps: upload ?? 0 })
      this.swarm = {
        // the info rides on every announce, so the in-process view of this node stays registered and current
        announce: digests => { index.announce(self, packed(digests), { info: info() }) },
        withdraw: digests => { index.withdraw(self, packed(digests)) },
        releaseClaims: digests => { index.withdraw(self, packed(digests)) },
        resolve: async (digests, opts) => index.resolveMap(self, digests, opts?.max, opts?.group),
        report: outcomes => { index.report(self, outcomes) }
      }
      this.client = undefined
    } else if (init.scheduler?.address !== undefined) {
      this.client = new SchedulerClient({ libp2p: host }, {
        scheduler: init.scheduler.address,
        zone,
        selfAddrs: () => announceAddrs(host),
        ...(init.scheduler.resolveTimeoutMs !== undefined ? { resolveTimeoutMs: init.scheduler.resolveTimeoutMs } : {}),
        ...(init.scheduler.heartbeatMs !== undefined ? { heartbeatMs: init.scheduler.heartbeatMs } : {}),
        uploadSlots,
        uploadBps: upload ?? 0,
        load: () => ({ activeUploads: this.server.counters.uploadsActive, recentUploadBps: this.recentUploadBps() }),
        ...(logger !== undefined ? { logger } : {})
      })
      this.swarm = this.client
      this.embedded = undefined
    } else {
      this.swarm = NO_HOLDERS
      this.client = undefined
      this.embedded = undefined
    }
    this.resolver = this.claiming()
    const locator = this.have !== undefined
      ? new BlobLocator({
        directory: this.swarm,
        have: this.have,
        self: host.peerId.toString(),
        planned: (hex, cis) => { this.local?.planned(hex, cis) },
        ...(logger !== undefined ? { logger } : {})
      })
      : undefined
    this.prefetchAdvisor = locator
    this.locator = locator
    this.source = new NeighbourSource({ libp2p: host, resolver: this.resolver, ...(locator !== undefined ? { locator } : {}), ...(logger !== undefined ? { logger } : {}) }, {
      ...(init.maxHolders !== undefined ? { maxHolders: init.maxHolders } : {}),
      ...(init.hedgeAfterMs !== undefined ? { hedgeAfterMs: init.hedgeAfterMs } : {}),
      ...(init.requestTimeoutMs !== undefined ? { requestTimeoutMs: init.requestTimeoutMs } : {}),
      ...(init.banThreshold !== undefined ? { banThreshold: init.banThreshold } : {}),
      // the scheduler client answers within its own timeout; this is only the safety net above it
      ...(init.scheduler?.resolveTimeoutMs !== undefined ? { resolveTimeoutMs: init.scheduler.resolveTimeoutMs + 300 } : {})
    })
  }

  /**
   * Starts the host, the chunk server and the scheduler side, then announces what the cache already holds (in the
   * background). Leaves nothing running when it rejects.
   */
  static async start (components: P2PNodeComponents, init: P2PNodeInit = {}): Promise<P2PNode> {
    const host = await createHost({
      ...(init.listen !== undefined ? { listen: init.listen } : {}),
      ...(init.keyFile !== undefined ? { keyFile: init.keyFile } : {}),
      ...(init.maxConnections !== undefined ? { maxConnections: init.maxConnections } : {}),
      ...(init.maxConnectionsPerIp !== undefined ? { maxConnectionsPerIp: init.maxConnectionsPerIp } : {}),
      ...(init.idleConnectionMs !== undefined ? { idleConnectionMs: init.idleConnectionMs } : {})
    })
    const node = new P2PNode(host, components, init)
    try {
      for (const scheduler of schedulerPeers(init.scheduler?.address)) await tagPeer(host, scheduler, SCHEDULER_TAG, KEEP_TAG_VALUE)
      await node.server.start()
      await node.have?.start()
      await node.embedded?.start()
      await node.client?.start()
    } catch (err) {
      await node.stop().catch(() => {})
      throw err
    }
    node.claimTimer = setInterval(() => { void node.releaseLapsedClaims() }, Math.max(250, Math.min(5_000, node.claimTtlMs / 4)))
    node.claimTimer.unref()
    if (node.embedded !== undefined) {
      // registered from the start (so its first look-ups already claim what it will fetch) and kept alive: a node
      // idle past a few heartbeats would otherwise expire in its own index and never be offered as a holder
      node.swarm.announce([])
      node.selfBeat = setInterval(() => { node.swarm.announce([]) }, init.scheduler?.heartbeatMs ?? 5_000)
      node.selfBeat.unref()
    }
    void node.announceHoldings()
    return node
  }

  get peerId (): string { return this.host.peerId.toString() }

  /** Listen addresses as given to others (without `/p2p/`). */
  get addrs (): string[] { return announceAddrs(this.host) }

  /** Full dialable multiaddrs (with `/p2p/<id>`): what other daemons put in `scheduler.address` for an embedded one. */
  get multiaddrs (): string[] { return this.host.getMultiaddrs().map(String) }

  /** What every mount's fetcher reports its chunks in flight to (blob-level directory: our PENDING to neighbours). */
  get fetchActivity (): FlightActivity | undefined { return this.local }

  /** The cache durably holds these digests now: tell the swarm, and wake neighbours waiting for them. */
  onChunksStored (digests: Buffer[]): void {
    if (this.stopped) return
    // at blob level the neighbours hear of chunks over the have protocol; the scheduler knows blobs only
    if (this.have === undefined) this.swarm.announce(digests)
    this.wake(digests)
  }

  /** Wakes neighbour requests waiting for these digests (claims of the chunk-level directory). */
  private wake (digests: Buffer[]): void {
    for (const d of digests) {
      const key = d.toString('hex')
      this.claims.delete(key)
      const ws = this.waiters.get(key)
      if (ws !== undefined) {
        this.waiters.delete(key)
        for (const wake of ws) wake()
      }
    }
  }

  /**
   * Tells the swarm this node holds these digests without their being cache chunks (a registry mirror's piece maps):
   * neighbours resolving them are sent here.
   */
  announce (digests: Buffer[]): void {
    if (this.stopped || digests.length === 0) return
    this.swarm.announce(digests)
    this.wake(digests)
  }

  /** The opposite of `announce`: this node no longer holds these (a mirror's fetch that failed). */
  withdraw (digests: Buffer[]): void {
    if (this.stopped || digests.length === 0) return
    for (const d of digests) this.claims.delete(d.toString('hex'))
    this.swarm.withdraw(digests)
  }

  /**
   * Another neighbour source over this node's host and scheduler, tuned for other payloads (a registry mirror's
   * pieces are megabytes where chunks are kilobytes: it hedges later). It keeps its own scores and bans; `wrap`
   * may add holders the scheduler does not know yet (a mirror knows who lent it a piece map).
   */
  neighbourSource (init: NeighbourSourceInit, logger?: ComponentLogger, wrap?: (swarm: HolderResolver) => HolderResolver): NeighbourSource {
    const resolver = wrap !== undefined ? wrap(this.resolver) : this.resolver
    return new NeighbourSource({ libp2p: this.host, resolver, ...(logger !== undefined ? { logger } : {}) }, init)
  }

  /**
   * Who holds these digests, best first, as the scheduler ranks them. Like a chunk fetch, asking claims them: this
   * node is recorded as their next holder, so a neighbour asking next is sent here while this node gets them.
   */
  async holders (digests: Buffer[], opts: { signal?: AbortSignal, timeoutMs?: number } = {}): Promise<Map<string, ChunkHolder[]>> {
    return await this.resolver.resolve(digests, opts)
  }

  stats (): P2PStats {
    return {
      peerId: this.peerId,
      addrs: this.addrs,
      scheduler: {
        ...(this.client !== undefined ? { address: this.client.address } : {}),
        embedded: this.embedded !== undefined,
        connected: this.embedded !== undefined || this.client?.connected === true
      },
      upload: { ...this.server.counters },
      download: { ...this.source.counters, streams: { ...this.source.streams.counters } },
      ...(this.have !== undefined ? { have: { ...this.have.counters } } : {}),
      ...(this.locator !== undefined ? { registryChunks: { ...this.locator.sourced }, assigneeAsks: this.locator.assigneeAsks, largestSwarm: this.locator.largestSwarm } : {}),
      connections: { open: this.host.getConnections().length, ...this.host.services.guard.counters },
      claims: this.claims.size
    }
  }

  async stop (): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    clearInterval(this.claimTimer)
    clearInterval(this.selfBeat)
    for (const ws of this.waiters.values()) for (const wake of ws) wake()
    this.waiters.clear()
    this.local?.close()
    this.source.close()
    const steps: Array<() => Promise<void>> = [
      async () => { await this.have?.stop() },
      async () => { await this.client?.stop() },
      async () => { await this.embedded?.stop() },
      async () => { await this.server.stop() },
      async () => { await this.host.stop() }
    ]
    let first: unknown
    for (const step of steps) {
      try { await step() } catch (err) { first ??= err; this.log?.error('stopping: %s', describeError(err)) }
    }
    if (first !== undefined) throw first
  }

  /** The resolver the neighbour source uses: the swarm's, recording what this node claims on a miss. */
  private claiming (): HolderResolver {
    return {
      resolve: async (digests: Buffer[], opts?: { signal?: AbortSignal, timeoutMs?: number }): Promise<Map<string, ChunkHolder[]>> => {
        const answer = await this.swarm.resolve(digests, opts)
        // an answer from a scheduler we could not reach claims nothing there
        const reached = this.embedded !== undefined || this.client?.connected === true
        if (reached) {
          const until = Date.now() + this.claimTtlMs
          // the scheduler recorded this node as a holder of everything it asked for (it fetches them next)
          for (const d of digests) {
            const key = d.toString('hex')
            if (!this.claims.has(key)) this.claims.set(key, { digest: d, until })
          }
        }
        return answer
      },
      report: (outcomes: PeerOutcome[]) => {
        for (const o of outcomes) if (o.chunks > 0 && !o.bad) this.valueExchange(o.peerId)
        this.swarm.report(outcomes)
      }
    }
  }

  /** Tags a neighbour we just exchanged chunks with (at most once per tenth of the tag's life). */
  private valueExchange (peer: PeerId | string): void {
    if (this.stopped) return
    const key = peer.toString()
    const now = Date.now()
    const last = this.tagged.get(key)
    if (last !== undefined && now - last < EXCHANGE_TAG_TTL_MS / 10) return
    this.tagged.set(key, now)
    if (this.tagged.size > 4096) {
      for (const [k, at] of this.tagged) if (now - at >= EXCHANGE_TAG_TTL_MS / 10) this.tagged.delete(k)
    }
    let id: PeerId
    try {
      id = typeof peer === 'string' ? peerIdFromString(peer) : peer
    } catch {
      return // not a peer id: nothing to tag
    }
    tagPeer(this.host, id, EXCHANGE_TAG, EXCHANGE_TAG_VALUE, EXCHANGE_TAG_TTL_MS).catch(err => {
      this.log?.debug('tagging %s failed: %s', key, describeError(err))
    })
  }

  /** The cache as the chunk server sees it: a claimed chunk not here yet is waited for, once, for a while. */
  private servable (): ServableCache {
    const cache = this.cache
    return {
      has: (blobId, ci) => cache.has(blobId, ci),
      readChunk: async (blobId, chunk, opts) => await cache.readChunk(blobId, chunk, opts),
      findByDigest: async (digest, opts) => {
        const key = digest.toString('hex')
        if (opts?.exceptBlobId !== undefined || this.claimWaitMs === 0 || !this.claims.has(key)) return await cache.findByDigest(digest, opts)
        // the waiter is in place before the look-up, so a store between the two still wakes it
        const stored = this.waitStored(key, this.claimWaitMs)
        const found = await cache.findByDigest(digest)
        if (found !== undefined) { stored.cancel(); return found }
        await stored.promise
        return await cache.findByDigest(digest)
      }
    }
  }

  private waitStored (key: string, ms: number): { promise: Promise<void>, cancel: () => void } {
    let set = this.waiters.get(key)
    if (set === undefined) this.waiters.set(key, set = new Set())
    const waiters = set
    let wake!: () => void
    const promise = new Promise<void>(resolve => {
      const timer = setTimeout(() => { wake() }, ms)
      wake = () => {
        clearTimeout(timer)
        waiters.delete(wake)
        if (waiters.size === 0 && this.waiters.get(key) === waiters) this.waiters.delete(key)
        resolve()
      }
    })
    waiters.add(wake)
    return { promise, cancel: wake }
  }

  /** Claims whose time ran out without the chunk arriving are given back to the scheduler. */
  private async releaseLapsedClaims (): Promise<void> {
    const now = Date.now()
    const lapsed: Buffer[] = []
    for (const [key, c] of this.claims) {
      if (c.until > now) continue
      this.claims.delete(key)
      try {
        if (await this.cache.findByDigest(c.digest) !== undefined) continue
      } catch { /* a cache that cannot answer holds nothing we can serve */ }
      lapsed.push(c.digest)
    }
    if (lapsed.length > 0 && !this.stopped) {
      this.log?.info('releasing %d claims not fulfilled within %d ms', lapsed.length, this.claimTtlMs)
      this.swarm.releaseClaims?.(lapsed)
    }
  }

  /** Announces every chunk the cache holds, or at blob level every blob (a restarted node serves what it kept). */
  private async announceHoldings (): Promise<void> {
    if (this.have !== undefined) {
      const keys = this.cache.blobIds().filter(id => /^[0-9a-f]{64}$/.test(id)).map(id => Buffer.from(id, 'hex'))
      if (keys.length > 0) {
        this.swarm.announce(keys)
        this.log?.info('announced %d cached blobs', keys.length)
      }
      return
    }
    let batch: Buffer[] = []
    let total = 0
    try {
      for await (const d of this.cache.presentDigests()) {
        if (this.stopped) return
        batch.push(d)
        if (batch.length >= STARTUP_ANNOUNCE_BATCH) {
          this.swarm.announce(batch)
          total += batch.length
          batch = []
          await new Promise<void>(resolve => { setImmediate(resolve) })
        }
      }
      if (batch.length > 0 && !this.stopped) this.swarm.announce(batch)
      total += batch.length
      if (total > 0) this.log?.info('announced %d cached chunks', total)
    } catch (err) {
      if (!this.stopped) this.log?.error('announcing the cached chunks failed: %s', describeError(err))
    }
  }

  private recentUploadBps (): number {
    const now = performance.now()
    const bytes = this.server.counters.bytesServed
    const dt = (now - this.uploadRate.at) / 1000
    if (dt >= 1) {
      const inst = (bytes - this.uploadRate.bytes) / dt
      this.uploadRate = { at: now, bytes, bps: this.uploadRate.bps * 0.5 + inst * 0.5 }
    }
    return Math.round(this.uploadRate.bps)
  }
}

/** The peer ids named by scheduler multiaddrs (`…/p2p/<id>`). */
function schedulerPeers (address: string | readonly string[] | undefined): PeerId[] {
  const out: PeerId[] = []
  for (const a of typeof address === 'string' ? [address] : address ?? []) {
    try {
      const id = multiaddr(a).getComponents().findLast(c => c.name === 'p2p')?.value
      if (id !== undefined) out.push(peerIdFromString(id))
    } catch { /* the scheduler client reports a bad address */ }
  }
  return out
}

function packed (digests: Buffer[]): Buffer {
  return packDigests(digests.filter(d => d.length === DIGEST_BYTES))
}
