/** The scheduler's vocabulary: what peers tell it, how it ranks and bounds, and the options of its parts. */
import type { PrivateKey } from '@libp2p/interface'
import type { ComponentLogger } from '../base/index.js'
import type { ChunkHolder } from '../p2p/index.js'

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
  /**
   * holders remembered per digest; past it a random holder is replaced, which keeps a fresh sample (default 32). A
   * longer list (a blob's swarm) is ranked on a random sample of this many holders per look-up
   */
  maxHoldersPerDigest?: number
  /**
   * holders remembered per key looked up with a group (a blob at blob level: its swarm), past which a random one is
   * replaced (default `maxPeers`: the whole swarm). Look-ups sample all of it, so each asker follows peers from all
   * over the swarm; a list capped below the swarm holds only its latest joiners, each asker follows peers that asked
   * just before it, and the swarm's follow graph becomes a chain too long for a PENDING to cross in a grace
   */
  maxHoldersPerBlob?: number
  /** heartbeat interval assumed for a peer until it declares its own (default 5000 ms) */
  heartbeatMs?: number
  /** a peer silent for this many of its heartbeat intervals is dropped (default 3) */
  missedHeartbeats?: number
  /**
   * declared heartbeat intervals are clamped to [min, max] (defaults 50 ms, 30 000 ms); the max bounds how long a
   * silent peer stays resolvable (`missedHeartbeats` × max)
   */
  minHeartbeatMs?: number
  maxHeartbeatMs?: number
  /** distinct peers reporting `bad` bytes from one holder before it is banned (default 2) */
  banAfterBadReporters?: number
  /** how long a ban lasts (default 1 h) */
  banMs?: number
  ranking?: Partial<RankingWeights>
  /** how a full index shares its room (see `admission.ts`) */
  admission?: { openFill?: number, provenWeight?: number, minQuota?: number, unprovenMaxDigests?: number }
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
  /** digests refused because a bound was reached (the peer's quota, or a full index nobody holds more of) */
  refused: number
  /** peers whose holdings were evicted to make room for a peer holding less per weight */
  evictions: number
  /** entries those evictions dropped */
  evictedEntries: number
  /** peers dropped from a full peer table to let a newcomer in */
  displacedPeers: number
}

/** Options of the scheduler service (the protocol handler) on top of the index's. */
export interface SchedulerServiceInit extends HolderIndexInit {
  /** how often expired peers are dropped and stale entries swept (default 250 ms) */
  sweepIntervalMs?: number
  /** concurrent scheduler streams per connection (default 4) */
  maxStreamsPerConnection?: number
  logger?: ComponentLogger
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
  /**
   * the scheduler's multiaddr including `/p2p/<peer id>`, or several: one is used at a time, the next (round robin)
   * after a failure; all of them should share one swarm (schedulers over one Redis Cluster)
   */
  scheduler: string | readonly string[]
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
  /** a scheduler that answers nothing this long after a resolve loses the session to the next one (default 10 000 ms) */
  unansweredMs?: number
  logger?: ComponentLogger
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
