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
 *   re-announces its full holdings, and what it claimed by asking, after every reconnect (the first frame resets
 *   what the scheduler had).
 * - A client given several schedulers uses one at a time and moves to the next, round robin with backoff, when
 *   its session breaks, a dial fails or the scheduler leaves a resolve unanswered for `unansweredMs`.
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
 *   scheduler: sched.multiaddrs[0],                 // includes /p2p/<scheduler peer id>; or a list of several
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
export { SCHEDULER_PROTOCOL } from '../p2p/index.js'
export type { ChunkHolder, PeerOutcome, HolderResolver, ChunkAnnouncer } from '../p2p/index.js'

export type {
  PeerInfo, PeerLoad, RankingWeights, HolderIndexInit, IndexStats, SchedulerServiceInit, SchedulerNodeInit, SchedulerClientInit, ResolveAnswer
} from './types.js'
export { HolderIndex, HARD_MAX_PEERS, type AnnounceResult } from './index-store.js'
export { zoneAffinity, DEFAULT_WEIGHTS } from './ranking.js'
export {
  SchedulerService, startSchedulerNode, loadOrCreatePeerKey, type SchedulerNode, type SchedulerServiceComponents
} from './server.js'
export { SchedulerClient, type SchedulerClientComponents } from './client.js'
export {
  SchedulerError, type SchedulerErrorCode, MAX_FRAME_BYTES, MAX_DIGESTS_PER_FRAME, DIGEST_BYTES, packDigests, encodeMessage
} from './protocol.js'
// the blob-level swarm directory (issue 13): in memory or on Redis Cluster, see ./directory/index.ts
export {
  createDirectory, MemoryDirectory, DirectoryError, DIRECTORY_DEFAULTS, MAX_BLOB_ID_BYTES, parseRedisSeed, type RedisSeed, type DirectoryErrorCode,
  type SwarmDirectory, type RedisDirectory, type PeerEntry, type BlobHolder, type PeerView, type AnnounceResult as DirectoryAnnounceResult,
  type AnnounceOptions, type LookupOptions, type GroupLookupOptions, type GroupLookup, type GroupMember, type CallOptions, type DirectoryStats, type DirectoryInit,
  type DirectoryPolicyInit, type MemoryDirectoryInit, type RedisDirectoryInit, type DirectoryComponents
} from './directory/index.js'
export {
  DirectorySchedulerService, startDirectorySchedulerNode, DEFAULT_MAX_KEYS_PER_RESOLVE, type DirectorySchedulerNode,
  type DirectoryServiceComponents, type DirectoryServiceInit
} from './directory-service.js'
