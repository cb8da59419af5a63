/**
 * @packageDocumentation
 * The libp2p floor shared by the scheduler and the node daemon, and nothing else of ours above `base/`: the host
 * (identity, TCP + noise + yamux, limits and the connection guard that keeps room for honest neighbours), the
 * swarm's shared types (holders, outcomes, resolver, announcer, protocol ids) and the one framing every protocol of
 * ours speaks (varint-length frames, bounded, with deadlines and backpressure).
 *
 * @example
 * ```ts
 * import '../polyfill.js'
 * import { createHost, announceAddrs, FrameReader, encodeFrame } from '../p2p/index.js'
 * const host = await createHost({ listen: ['/ip4/0.0.0.0/tcp/0'], keyFile: '/var/lib/rafspeer/peer.key' })
 * ```
 */
export {
  createHost, announceAddrs, DEFAULT_LISTEN, DEFAULT_MAX_CONNECTIONS, YAMUX_MAX_MESSAGE_BYTES, P2P_CODE,
  type Host, type HostInit
} from './host.js'
export { loadOrCreateKey, PeerKeyError } from './key.js'
export {
  ConnectionGuard, tagPeer, KEEP_TAG_VALUE, DEFAULT_IDLE_CONNECTION_MS, DEFAULT_MAX_CONNECTION_WRITE_BUFFER_BYTES,
  type ConnectionGuardInit, type ConnectionGuardCounters
} from './connection-guard.js'
export {
  CHUNK_PROTOCOL, PIECEMAP_PROTOCOL, SCHEDULER_PROTOCOL, SCHEDULER_PROTOCOL_1_0, SCHEDULER_PROTOCOLS, type ChunkHolder, type PeerOutcome, type HolderResolver, type ResolvedHolders, type ChunkAnnouncer
} from './types.js'
export {
  FrameReader, encodeFrame, frameHeader, sendWithBackpressure, FramingError, StreamTimeoutError, StreamClosedError, DEFAULT_HIGH_WATER_BYTES,
  type FrameReaderInit, type SendOptions
} from './framing.js'
