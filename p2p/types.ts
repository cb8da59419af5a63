/**
 * The swarm's shared vocabulary, used by both the scheduler and the node: who holds a chunk, how asking a holder
 * went, who resolves holders and who announces holdings, and the protocol ids. Chunks are named by digest; a blob
 * id and ci index only help a holder find them fast. Nothing a peer sends is trusted.
 */

/** Asking a neighbour for chunks. */
export const CHUNK_PROTOCOL = '/rafspeer/chunk/1.0.0'
/** Asking a neighbour for the piece map of an opaque blob (a registry mirror's layer). */
export const PIECEMAP_PROTOCOL = '/rafspeer/piecemap/1.0.0'
/** Talking to the scheduler (1.1: an answer with groups tells each key's swarm size too). */
export const SCHEDULER_PROTOCOL = '/rafspeer/scheduler/1.1.0'
/** The scheduler protocol before swarm sizes: still served, and still spoken to a scheduler that knows no other. */
export const SCHEDULER_PROTOCOL_1_0 = '/rafspeer/scheduler/1.0.0'
/** what a client offers and a scheduler serves, newest first */
export const SCHEDULER_PROTOCOLS = [SCHEDULER_PROTOCOL, SCHEDULER_PROTOCOL_1_0]

/** A peer that (the scheduler believes) holds a chunk, and how to reach it. */
export interface ChunkHolder {
  /** libp2p peer id (base58btc string) */
  peerId: string
  /** its listen multiaddrs, e.g. `/ip4/127.0.0.1/tcp/4001` (without `/p2p/...`) */
  addrs: string[]
  /**
   * one of the key's group (a resolve that asked for `group`): the blob's first holders, named alike to every asker,
   * among whom chunks nobody has yet are shared out for the source (this peer itself may be one)
   */
  group?: boolean
  /**
   * for one chunk: the peer said it is fetching it (PENDING) and not that it has it — it answers once the chunk
   * lands, so a request carries that chunk alone
   */
  fetching?: boolean
}

/** The outcome of asking one holder for some chunks, for ranking. */
export interface PeerOutcome {
  peerId: string
  /** chunks delivered and verified */
  chunks: number
  bytes: number
  ms: number
  /** the peer failed (refused, timed out, reset) */
  failed: boolean
  /** the peer sent bytes that failed their digest */
  bad: boolean
}

/**
 * What {@link HolderResolver.resolve} answers: holders per hex key, and (when a `group` was asked for and the
 * scheduler tells it) per key how many peers hold it on record — the blob's swarm, the asker included.
 */
export type ResolvedHolders = Map<string, ChunkHolder[]> & { swarms?: Map<string, number> }

/** Who holds which chunks: the scheduler client, or any stand-in (a static list of neighbours). */
export interface HolderResolver {
  /**
   * Holders per chunk digest (hex key), best first, at most a few each; digests nobody holds are absent. Must answer
   * within its own short timeout (≤ 200 ms, or `timeoutMs` for a caller that would rather wait than go to the
   * registry): on failure it resolves with what it knows (possibly nothing), never rejects and never stalls a read.
   */
  resolve: (digests: Buffer[], opts?: { signal?: AbortSignal, timeoutMs?: number, max?: number, group?: number }) => Promise<ResolvedHolders>
  /** fire and forget */
  report: (outcomes: PeerOutcome[]) => void
}

/** Tells the swarm which chunks this node now holds (or no longer holds). Fire and forget; batched inside. */
export interface ChunkAnnouncer {
  announce: (digests: Buffer[]) => void
  withdraw: (digests: Buffer[]) => void
}
