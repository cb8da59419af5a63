/**
 * The exchange room: chunks between neighbours. The `/rafspeer/chunk/1.0.0` wire format, the {@link ChunkServer}
 * answering neighbours from the cache, the {@link NeighbourSource} the fetcher asks before the registry, and the
 * {@link ChunkStreams} kept open between its requests, and the {@link P2PNode} that holds a daemon's host, server, scheduler side and claims together.
 */
export {
  CHUNK_PROTOCOL, ChunkStatus, ChunkEncoding, AcceptFlags, ChunkProtocolError, ChunkTimeoutError, MAX_CHUNK_BYTES, MAX_CHUNKS_PER_REQUEST,
  MAX_MESSAGE_BYTES, MAX_REDIRECT_BYTES, MAX_REDIRECT_ADDRS, chunkFrameReader, encodeRequest, decodeRequestBody, decodeRequest, readRequest, readChunkRequest, readReply,
  replyHeader, errorReply, redirectReply, exchangeChunks, ChunkChannel, RequestLayout, EntryLayout, ReplyLayout, type ChunkName, type ChunkReply, type ChunkRequest,
  type ChannelExchangeOptions
} from './chunk-protocol.js'
export {
  ChunkStreams, DEFAULT_STREAM_IDLE_MS, DEFAULT_MAX_IDLE_STREAMS_PER_PEER, type ChunkStreamsInit, type ChunkStreamsCounters, type ChunkStreamsComponents
} from './chunk-streams.js'
export {
  ChunkServer, uploadBurst, urgentUploadSlots, takesUrgentSlot, DEFAULT_MAX_CONCURRENT_UPLOADS, PENDING_INTERVAL_MS, FIRST_PENDING_MS, REDIRECTED_WAIT_MS, type ChunkServerCounters, type ChunkServerInit, type ServableCache,
  type ServableChunk
} from './chunk-server.js'
export {
  ChunkReceivers, TAKE_TURN, CHAIN_CROWD, DEFAULT_REDIRECT_ABOVE_UPLOADS, RECEIVER_TTL_MS, MAX_TRACKED_CHUNKS, MAX_RECEIVERS_PER_CHUNK, MAX_REDIRECTS,
  type ChunkReceiversInit
} from './chunk-receivers.js'
export {
  NeighbourSource, DEFAULT_MAX_REQUEST_BYTES as DEFAULT_NEIGHBOUR_REQUEST_BYTES, DEFAULT_STREAMS_PER_HOLDER, REDIRECTED_EXTRA_STREAMS, MAX_REDIRECT_PEERS,
  DEFAULT_MAX_HOLDERS as DEFAULT_HOLDERS_PER_FETCH, DEFAULT_HEDGE_AFTER_MS, DEFAULT_IDLE_FACTOR as DEFAULT_NEIGHBOUR_IDLE_FACTOR, PENDING_HOLD_LIMIT_MS, DEFAULT_BUSY_RETRIES, PROGRESS_STEP_BYTES, PROGRESS_WINDOW_MS, progressAtPace,
  type NeighbourSourceCounters, type NeighbourSourceInit, type NeighbourSourceComponents
} from './neighbour-source.js'
export { DEFAULT_REPLAN_ROUNDS, DEFAULT_BUSY_AFTER_PARK_MS, replanDelayMs } from './busy-replan.js'
export {
  blobGroup, holdersInOrder, chooseHolder, splitRequests, joinsQueued, nextQueued, type QueuedShape, HaveOutbox, prefetchClass, prefetchPick, groupFilling, GROUP_FILL_MS,
  type HolderLoad, type PrefetchClass, type PrefetchPicked
} from './swarm-policy.js'
export { P2PNode, type P2PNodeInit, type P2PNodeComponents, type P2PStats } from './p2p-node.js'
// the blob-level swarm: the have protocol, what neighbours have, back to source, the locator (pure parts take an
// injected clock: `sim/model/` runs them too)
export {
  HAVE_PROTOCOL, HaveProtocolError, encodeHave, decodeHave, newBits, setBit, getBit, clearBit, MAX_INDEXES_PER_MESSAGE,
  type HaveMessage
} from './have-protocol.js'
export { HaveTable, DEFAULT_PENDING_TTL_MS, type ChunkSources } from './have-table.js'
export { planChunk, runStarts, rendezvousScore, backToSourceAssignee, NEAR_WINDOW, BEHIND_MARGIN, OUTSIDE_GROUP_GRACE_FACTOR, groupStale, INCOMPLETE_GROUP_REFRESH_MS, type ChunkPlan, type PlanInput as ChunkPlanInput, type SourceReason } from './back-to-source.js'
export {
  BlobLocator, DEFAULT_GROUP_SIZE, DEFAULT_GRACE_MS, DEFAULT_BITFIELD_WAIT_MS, DEFAULT_REFRESH_MS,
  DEFAULT_MAX_HOLDERS as DEFAULT_LOCATOR_MAX_HOLDERS, DEFAULT_LOOKUP_HOLDERS, type ChunkLocator, type BlobLocatorInit
} from './blob-locator.js'
export {
  HaveService, DEFAULT_FLUSH_MS as DEFAULT_HAVE_FLUSH_MS, DEFAULT_MAX_SESSIONS as DEFAULT_HAVE_MAX_SESSIONS,
  type LocalChunks, type LocalListener, type HaveCounters
} from './have-service.js'
export { CacheChunks, waitingForFlights } from './local-chunks.js'
