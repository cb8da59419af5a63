/**
 * @packageDocumentation
 * The scheduler: who holds which chunk. An in-memory index of chunk digest → holders, peer health and load, and a
 * ranking of candidate parents in the spirit of Dragonfly's evaluator (load, success rate, latency, zone affinity;
 * peers reported as sending bad bytes drop sharply and are banned past a threshold). It runs as a libp2p service
 * speaking {@link SCHEDULER_PROTOCOL}, standalone (`rafspeer scheduler`) or inside any libp2p node, and peers reach
 * it through {@link SchedulerClient}, which implements the fetcher's `HolderResolver` and `ChunkAnnouncer`.
 *
 * Contracts:
 * - A peer is identified by its connection's remote peer id, never by a field of a message.
 * - `resolve` on the client never rejects and never stalls a read: it answers what it has within
 *   `resolveTimeoutMs` (empty when the scheduler is down) and keeps working once the scheduler is back.
 * - A peer silent for `missedHeartbeats` of its heartbeat intervals is dropped with all its entries; a client
 *   re-announces its full holdings after every reconnect (the first frame resets what the scheduler had).
 * - Every frame is length-checked and bounded (`MAX_FRAME_BYTES`, `MAX_DIGESTS_PER_FRAME`); a malformed frame
 *   closes that stream only.
 * - `ChunkHolder` objects in answers are shared between digests and answers: read them, do not mutate them.
 *
 * Embedding: `new SchedulerService({ libp2p: node }, init).start()` serves the protocol from an existing node; the
 * node's own fetcher then uses `service.index.asPeer(node.peerId.toString(), info)` (a node cannot dial itself).
 *
 * @example
 * ```ts
 * import { startSchedulerNode, SchedulerClient } from './scheduler/index.js'
 * const sched = await startSchedulerNode({ listen: ['/ip4/127.0.0.1/tcp/0'] })
 * const client = new SchedulerClient({ libp2p: peerNode }, {
 *   scheduler: sched.multiaddrs[0],                 // includes /p2p/<scheduler peer id>
 *   zone: 'eu|fra|rack-3',
 *   selfAddrs: () => peerNode.getMultiaddrs().map(String)
 * })
 * await client.start()
 * client.announce([digest])                          // batched, fire and forget
 * const holders = await client.resolve([digest])     // Map<hex digest, ChunkHolder[]>, best first
 * client.report([{ peerId, chunks: 1, bytes: 1 << 20, ms: 12, failed: false, bad: false }])
 * await client.stop(); await sched.stop()
 * ```
 */
import type { PrivateKey } from '@libp2p/interface'
import type { ChunkHolder } from '../peer/p2p-types.js'

export { SCHEDULER_PROTOCOL } from '../peer/p2p-types.js'
export type { ChunkHolder, PeerOutcome, HolderResolver, ChunkAnnouncer } from '../peer/p2p-types.js'

/** What a peer tells the scheduler about itself when it announces. */
export interface PeerInfo {
  /** listen multiaddrs (a trailing `/p2p/<id>` is stripped by the scheduler) */
  addrs: string[]
  /** locality label, `|`-separated from wide to narrow (`country|region|zone|rack`); '' when unknown */
  zone: string
  /** concurrent uploads the peer is willing to serve; 0 when unknown */
  uploadSlots: number
  /** upload capacity in bytes/s; 0 when unknown */
  uploadBps: number
}

/** A peer's current load, sent with every heartbeat. */
export interface PeerLoad {
  activeUploads: number
  /** bytes/s uploaded recently (the peer's own moving average) */
  recentUploadBps: number
}

/** Weights of the ranking (they need not sum to 1; only the order matters). */
export interface RankingWeights {
  /** free upload slots, free bandwidth and chunks recently handed out by this scheduler (default 0.4) */
  load: number
  /** share of successful outcomes reported by other peers (default 0.25) */
  success: number
  /** per-chunk latency from reports (default 0.15) */
  latency: number
  /** zone affinity with the asker (default 0.2) */
  zone: number
  /** random spread added to each score once per resolve, so near-equal peers share the load (default 0.05) */
  jitter: number
}

/** Bounds and policy of the holder index. Every field has a default. */
export interface HolderIndexInit {
  /** peers registered at once (default 10 000, at most 65 536) */
  maxPeers?: number
  /** (digest, holder) entries in total, stale ones included (default 10 000 000: about 0.4–0.8 GB of heap) */
  maxEntries?: number
  /** digests one peer may hold in the index (default 4 000 000) */
  maxDigestsPerPeer?: number
  /** holders remembered per digest; past it a random holder is replaced, which keeps a fresh sample (default 32) */
  maxHoldersPerDigest?: number
  /** heartbeat interval assumed for a peer until it declares its own (default 5000 ms) */
  heartbeatMs?: number
  /** a peer silent for this many of its heartbeat intervals is dropped (default 3) */
  missedHeartbeats?: number
  /** declared heartbeat intervals are clamped to [min, max] (defaults 50 ms, 60 000 ms) */
  minHeartbeatMs?: number
  maxHeartbeatMs?: number
  /** distinct peers reporting `bad` bytes from one holder before it is banned (default 2) */
  banAfterBadReporters?: number
  /** how long a ban lasts (default 1 h) */
  banMs?: number
  ranking?: Partial<RankingWeights>
  /**
   * A resolve records the asker as a holder of every digest it asked for, at once, since it fetches those chunks
   * next. On a miss (no holder to offer) the peers asking after it are sent to it, not to the source, so the
   * source serves each chunk about once however many peers start together (Dragonfly's "back-to-source" peer, per
   * chunk); otherwise later askers spread over it and the earlier holders (ranked by the load handed to each), so
   * a chunk wanted by many flows down a tree of peers. The asker's chunk server makes a neighbour wait for its own
   * fetch; a peer that did not get a chunk withdraws it (default true).
   */
  claimMisses?: boolean
  /** clock, for tests (default `Date.now`) */
  now?: () => number
  /** randomness in [0, 1), for tests (default `Math.random`) */
  random?: () => number
}

export interface IndexStats {
  peers: number
  digests: number
  /** live (digest, holder) entries */
  entries: number
  /** entries of dropped peers not yet swept */
  staleEntries: number
  banned: number
  /** digests refused because a bound was reached */
  refused: number
}

/** A namespaced logger, shaped like libp2p's (`logger.forComponent('rafspeer:scheduler')`); silent by default. */
export interface SchedulerLogger {
  (formatter: string, ...args: unknown[]): void
  error: (formatter: string, ...args: unknown[]) => void
}

export interface SchedulerComponentLogger {
  forComponent: (name: string) => SchedulerLogger
}

/** Options of the scheduler service (the protocol handler) on top of the index's. */
export interface SchedulerServiceInit extends HolderIndexInit {
  /** how often expired peers are dropped and stale entries swept (default 250 ms) */
  sweepIntervalMs?: number
  /** concurrent scheduler streams per connection (default 4) */
  maxStreamsPerConnection?: number
  logger?: SchedulerComponentLogger
}

/** A standalone scheduler: a libp2p node (TCP + noise + yamux) running the service. */
export interface SchedulerNodeInit extends SchedulerServiceInit {
  /** listen multiaddrs (default `/ip4/127.0.0.1/tcp/0`) */
  listen?: string[]
  /** the node's identity (default: a fresh Ed25519 key; see `loadOrCreatePeerKey`) */
  privateKey?: PrivateKey
}

/** Options of {@link SchedulerClient}. */
export interface SchedulerClientInit {
  /** the scheduler's multiaddr including `/p2p/<peer id>` */
  scheduler: string
  /** this peer's locality label (see {@link PeerInfo.zone}) */
  zone?: string
  /** this peer's listen multiaddrs, asked at every (re)connect and heartbeat */
  selfAddrs: () => string[]
  /** default 200 ms */
  resolveTimeoutMs?: number
  /** default 5000 ms */
  heartbeatMs?: number
  /** flush batched announces, withdraws and reports this often (default 50 ms) or at `flushDigests` (4096) */
  flushMs?: number
  flushDigests?: number
  /** default 0 (unknown) */
  uploadSlots?: number
  /** default 0 (unknown) */
  uploadBps?: number
  /** current load, sampled at each heartbeat (default: idle) */
  load?: () => PeerLoad
  /** dial timeout of one connection attempt (default 2000 ms) */
  dialTimeoutMs?: number
  /** reconnect backoff bounds (defaults 100 ms, min(5000, heartbeatMs) ms) */
  minReconnectMs?: number
  maxReconnectMs?: number
  logger?: SchedulerComponentLogger
}

/** A resolve answer as the index computes it: a table of peers and, per asked digest, indexes into it. */
export interface ResolveAnswer {
  /** distinct holders appearing in the answer */
  peers: ChunkHolder[]
  /** per asked digest, how many holders follow in `refs` */
  counts: Uint8Array
  /** indexes into `peers`, digest after digest, best first */
  refs: Uint16Array
}

export { HolderIndex, HARD_MAX_PEERS, type AnnounceResult } from './index-store.js'
export { zoneAffinity, DEFAULT_WEIGHTS } from './ranking.js'
export {
  SchedulerService, startSchedulerNode, loadOrCreatePeerKey, type SchedulerNode, type SchedulerServiceComponents
} from './server.js'
export { SchedulerClient, type SchedulerClientComponents } from './client.js'
export {
  SchedulerError, type SchedulerErrorCode, MAX_FRAME_BYTES, MAX_DIGESTS_PER_FRAME, DIGEST_BYTES, packDigests
} from './protocol.js'
