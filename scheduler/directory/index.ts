/**
 * @packageDocumentation
 * The swarm directory: who is in which swarm. A swarm is one RAFS blob (or an opaque layer's piece map), so the
 * directory records (blob id → holder peers), never chunks: 10k peers × 50 images is ~10⁶ records, not ~10⁸
 * (which chunks a neighbour has travels between neighbours as have-bitfields). One interface,
 * {@link SwarmDirectory}, with one conformance suite (`conformance.ts`) and two implementations:
 *
 * - in memory (`memory.ts`): zero setup, enough for one scheduler;
 * - Redis Cluster (`redis.ts`): many stateless schedulers in front of it, any of which can die. Also a single
 *   non-cluster Redis, for small setups and tests.
 *
 * Contracts shared by both:
 * - A peer is live from its `announce` until its TTL runs out without a `heartbeat` or `announce`, or it leaves.
 *   A dead peer is never answered; its records are dropped when a lookup meets them (and by `expire()`).
 * - `lookup` ranks holders with `scheduler/ranking.ts` (load, reported success, latency, zone affinity with the
 *   asker, jitter so near-equal holders share the load); the asker, dead, banned and address-less peers are
 *   never answered. Each answer charges its first holder as pending load until its next heartbeats say better.
 * - Reputation outlives registration: a peer reported as sending bad bytes by `banAfterBadReporters` distinct
 *   live peers is banned for `banMs`, across leave and re-join. Only live, unbanned reporters are heard.
 * - A blob's group (`lookupGroup`) is its first live holders in join order, named alike to every asker (the asker
 *   included), so that they agree on who fetches which chunk from the source. A holder keeps its place while it
 *   stays registered (a reset announce that names the blob again keeps it); one that withdraws, leaves or expires
 *   loses it and the next in order moves up; one that comes back joins at the end.
 * - A blob keeps its whole swarm, and a lookup ranks a uniform random sample of it (memory: `max(32, 3 × max)` live
 *   holders, drawn without replacement; Redis: `max × lookupOversample` members by SRANDMEMBER), so its answers come
 *   from all over the swarm at a cost that does not grow with it. A list capped below the swarm, with random
 *   replacement, holds mostly its latest joiners, who have the least of the blob: each asker would follow peers that
 *   joined just before it, and the swarm's follow graph would become a chain (the chunk index had that bug: 10,000
 *   nodes pulled 6.45 copies of an image from the registry).
 * - Bounds: `maxBlobsPerPeer` (the rest of an announce is refused and counted), `maxHoldersPerBlob` (default: the
 *   whole swarm; set lower, past it a newcomer replaces a random holder, never one of the first `MAX_GROUP` in join
 *   order: they are the group for as long as they live), and the wire bounds on ids, addresses and zones
 *   (`RAFSPEER_ERR_DIRECTORY_INVALID`).
 * - Every call is async, takes `{ signal }`, and settles within `timeoutMs` (default 1000 ms): a Redis that is
 *   unreachable or failing over rejects with `RAFSPEER_ERR_DIRECTORY_UNAVAILABLE`, never hangs. The caller
 *   falls back (its peers go to the registry) and tries again later.
 *
 * @example
 * ```ts
 * import { createDirectory } from './scheduler/directory/index.js'
 * const dir = await createDirectory({ redis: ['10.0.0.1:7000', '10.0.0.2:7000'] })   // no `redis`: in memory
 * await dir.announce({ id: peerId, addrs: ['/ip4/10.1.2.3/tcp/4001'], zone: 'eu|fra|r3', uploadSlots: 8, uploadBps: 0 }, [blobId])
 * await dir.heartbeat(peerId, { activeUploads: 2, recentUploadBps: 30e6 }, 15_000)        // every ttl / 3
 * const holders = await dir.lookup(blobId, { asker: otherPeerId, max: 4 })                // best first
 * const { group } = await dir.lookupGroup(blobId, { asker: otherPeerId, group: 8 })       // join order
 * await dir.report(otherPeerId, [{ peerId, chunks: 12, bytes: 12 << 20, ms: 80, failed: false, bad: false }])
 * await dir.close()
 * ```
 */
import type { ComponentLogger } from '../../base/index.js'
import type { ChunkHolder, PeerOutcome } from '../../p2p/index.js'
import type { PeerInfo, PeerLoad, RankingWeights } from '../types.js'
import { MemoryDirectory } from './memory.js'

export type { PeerLoad, PeerOutcome, RankingWeights }
export { DirectoryError, type DirectoryErrorCode } from './errors.js'
export { MemoryDirectory }
export type { RedisDirectory } from './redis.js'
export { DIRECTORY_DEFAULTS, MAX_BLOB_ID_BYTES } from './bounds.js'
export { MAX_GROUP } from '../protocol.js'
export { parseSeed as parseRedisSeed, type Seed as RedisSeed } from './seeds.js'

/** What a peer tells the directory about itself: its id and {@link PeerInfo} (addresses, zone, capacity). */
export interface PeerEntry extends PeerInfo {
  /** libp2p peer id (the scheduler takes it from the connection, never from a message) */
  id: string
}

export interface CallOptions {
  signal?: AbortSignal
}

export interface AnnounceOptions extends CallOptions {
  /**
   * Drop everything the peer held before recording `blobIds` (a client's full re-announce after a reconnect): in
   * O(1), the peer's old records all go stale at once.
   */
  reset?: boolean
  /** how long the peer stays live without a heartbeat (default: the TTL of its last heartbeat, else `peerTtlMs`) */
  ttlMs?: number
}

export interface AnnounceResult {
  /** blob ids the peer is now recorded as holding (newly or already) */
  accepted: number
  /** blob ids not recorded: past `maxBlobsPerPeer` (or `maxEntries` in memory), or all of them when banned */
  refused: number
  /** the peer is banned: nothing was recorded */
  banned: boolean
}

export interface LookupOptions extends CallOptions {
  /** the asking peer: never answered, and its announced zone is the default `askerZone` */
  asker?: string
  /** locality of the asker (see {@link PeerInfo.zone}) */
  askerZone?: string
  /** holders to answer, at most `MAX_HOLDERS_PER_ANSWER` (default 4) */
  max?: number
}

export interface GroupLookupOptions extends LookupOptions {
  /** group members to name, at most `MAX_GROUP` (8); 0 names none */
  group: number
}

/** A member of a blob's group: how to reach it (the group is in join order, not ranked). */
export interface GroupMember extends ChunkHolder {
  zone: string
}

export interface GroupLookup {
  /**
   * the blob's first `group` live holders in join order, the asker included when it holds the blob; banned and
   * address-less peers are passed over
   */
  group: GroupMember[]
  /** what {@link SwarmDirectory.lookup} answers (a group member may be among them too) */
  holders: BlobHolder[]
  /**
   * with a group asked for, how many holders the blob has on record (its swarm, the asker included, and dead
   * holders no look-up met yet); 0 without a group, or when the count could not be read in time
   */
  swarm: number
}

/** A holder as a lookup answers it: how to reach it, and what it was ranked on. */
export interface BlobHolder extends ChunkHolder {
  zone: string
  /** the score the answer is ordered by (higher is better; comparable within one answer only) */
  score: number
}

/** What the directory knows about one live peer. */
export interface PeerView extends PeerEntry, PeerLoad {
  /** how long the peer stays live without a heartbeat */
  ttlMs: number
  /** blobs it is recorded as holding */
  blobs: number
  banned: boolean
}

export interface DirectoryStats {
  /** live peers */
  peers: number
  /** blobs with at least one record */
  blobs: number
  /** (blob, holder) records, including those of dead peers that no lookup met yet */
  entries: number
  /** peers banned now (registered or not) */
  banned: number
}

/**
 * Who is in which swarm: blob id → the live peers holding it, ranked for an asker. Implemented in memory
 * ({@link MemoryDirectory}) and on Redis Cluster (`RedisDirectory`); both pass `conformance.ts`.
 */
export interface SwarmDirectory {
  /** which implementation this is */
  readonly kind: 'memory' | 'redis'

  /**
   * Records `peer` as a holder of `blobIds` and makes it live for its TTL (registering it, or refreshing its
   * addresses, zone and capacity). A banned peer is refused whole.
   */
  announce: (peer: PeerEntry, blobIds: readonly string[], opts?: AnnounceOptions) => Promise<AnnounceResult>

  /** The peer no longer holds `blobIds`. Unknown peers and blobs are ignored. */
  withdraw: (peerId: string, blobIds: readonly string[], opts?: CallOptions) => Promise<void>

  /** The peer is gone: drops it and all it held at once (its reputation stays). */
  leave: (peerId: string, opts?: CallOptions) => Promise<void>

  /**
   * Keeps the peer live for another `ttlMs` (clamped to the directory's bounds) and records its load. False when
   * the directory does not know the peer (never announced, expired or left): it must announce again, in full.
   */
  heartbeat: (peerId: string, load: PeerLoad, ttlMs: number, opts?: CallOptions) => Promise<boolean>

  /**
   * Up to `max` live holders of `blobId`, best first, never the asker, nor dead, banned or address-less peers.
   * Dead holders met on the way are dropped from the blob's records. A blob nobody holds answers `[]`.
   */
  lookup: (blobId: string, opts?: LookupOptions) => Promise<BlobHolder[]>

  /**
   * {@link lookup}, and the blob's group: its first `opts.group` (at most `MAX_GROUP`) live holders in join order,
   * the same for every asker, the asker included when it holds the blob (a scheduler records an asker's claim
   * before it looks up, so that a newcomer to a small swarm is told its own place in the group). Dead members met
   * on the way are dropped, and the next in order moves up.
   */
  lookupGroup: (blobId: string, opts: GroupLookupOptions) => Promise<GroupLookup>

  /**
   * Applies outcomes `reporter` observed (successes, failures, latency, bad bytes) to the reputations of the peers
   * they name; returns the peers these reports banned. Not heard: a reporter that is not live or is banned, reports
   * about itself, and reports about peers that are neither live nor already known.
   */
  report: (reporter: string, outcomes: readonly PeerOutcome[], opts?: CallOptions) => Promise<string[]>

  /** What the directory knows about a live peer, or undefined. */
  peer: (peerId: string, opts?: CallOptions) => Promise<PeerView | undefined>

  /**
   * Drops peers whose TTL ran out, with their records; returns how many. The memory directory needs it called
   * every few seconds (the scheduler's sweep); Redis expires keys itself and answers 0.
   */
  expire: (opts?: CallOptions) => Promise<number>

  /** Counts; O(records) on Redis (it scans the keys), meant for tests and operators, not the hot path. */
  stats: (opts?: CallOptions) => Promise<DirectoryStats>

  /** Releases the connection; every later call rejects with `RAFSPEER_ERR_DIRECTORY_CLOSED`. */
  close: () => Promise<void>
}

/** Bounds and policy shared by both implementations. Every field has a default ({@link DIRECTORY_DEFAULTS}). */
export interface DirectoryPolicyInit {
  /** blobs one peer may be recorded as holding (default 10 000) */
  maxBlobsPerPeer?: number
  /**
   * holders kept per blob (default: the whole swarm, `maxPeers` in memory and 100 000 on Redis). Set lower, past it
   * a newcomer replaces a random holder, never one of the group; a bound well below the swarm leaves mostly its
   * latest joiners, and look-ups that answer only those make the swarm follow a chain of laggards
   */
  maxHoldersPerBlob?: number
  /** TTL of a peer that never sent a heartbeat (default 15 000 ms: three missed 5 s heartbeats) */
  peerTtlMs?: number
  /** TTLs asked for are clamped to [min, max] (defaults 100 ms, 120 000 ms) */
  minTtlMs?: number
  maxTtlMs?: number
  /** distinct live peers reporting bad bytes from one peer before it is banned (default 2) */
  banAfterBadReporters?: number
  /** how long a ban lasts (default 1 h) */
  banMs?: number
  ranking?: Partial<RankingWeights>
  /**
   * deadline of every call on Redis (default 1000 ms); a lookup leaves out a holder whose record it could not read
   * within half of it
   */
  timeoutMs?: number
  /** clock (default `Date.now`); Redis expires keys by its own clock, so tests of expiry use real time */
  now?: () => number
  /** randomness in [0, 1) (default `Math.random`) */
  random?: () => number
}

/** Options of the in-memory directory. */
export interface MemoryDirectoryInit extends DirectoryPolicyInit {
  /** live peers at once; a newcomer past it is refused (default 100 000); the default of `maxHoldersPerBlob` */
  maxPeers?: number
  /** (blob, holder) records in total; announces past it are refused (default 10 000 000) */
  maxEntries?: number
}

/** Options of the Redis directory. */
export interface RedisDirectoryInit extends DirectoryPolicyInit {
  /**
   * Where Redis is: cluster seeds (`host:port`, any few nodes of the cluster), or one `redis://[user:pass@]host:port`
   * URL. A comma-separated string is a list.
   */
  redis: string | string[]
  /**
   * `cluster`, `standalone` (one non-cluster server), or `auto` (default): the first seed that answers says
   * whether it runs in cluster mode.
   */
  redisMode?: 'auto' | 'cluster' | 'standalone'
  /** prefix of every key, so several directories can share a Redis (default `rs:`) */
  keyPrefix?: string
  /** how long `createDirectory` waits for the first connection (default 5000 ms) */
  connectTimeoutMs?: number
  /**
   * a blob's holder set expires this long after its last announce (default 24 h); answered lookups refresh it too,
   * one in sixteen, so a blob in use keeps its set
   */
  blobTtlMs?: number
  /** a reputation expires this long after its last report, or after its ban ends (default 1 h) */
  reputationTtlMs?: number
  /**
   * candidates a lookup reads per holder it answers (default 3: 12 read for `max` 4), a uniform sample of the blob's
   * whole set: each costs the read of a peer's hash
   */
  lookupOversample?: number
}

export type DirectoryInit = MemoryDirectoryInit & Partial<Pick<RedisDirectoryInit, 'redis'>> & Omit<RedisDirectoryInit, 'redis'>

export interface DirectoryComponents {
  logger?: ComponentLogger
}

/**
 * The directory `init` asks for: on Redis when `init.redis` names servers (connected before this resolves, or
 * rejected with `RAFSPEER_ERR_DIRECTORY_UNAVAILABLE` after `connectTimeoutMs`), else in memory.
 */
export async function createDirectory (init: DirectoryInit = {}, components: DirectoryComponents = {}): Promise<SwarmDirectory> {
  const seeds = init.redis
  if (seeds === undefined || (Array.isArray(seeds) ? seeds.length === 0 : seeds.trim() === '')) return new MemoryDirectory(components, init)
  // loaded only when asked for: a scheduler in memory never loads the Redis client
  const { RedisDirectory } = await import('./redis.js')
  return await RedisDirectory.connect(components, { ...init, redis: seeds })
}
