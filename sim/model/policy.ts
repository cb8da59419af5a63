/**
 * The daemon's own policy code the model runs, imported from one place. These modules are pure (no sockets, no
 * timers of their own; clocks and randomness injected), so the model runs exactly what a daemon runs:
 * - the scheduler's holder index (blob-level keys, claims, ranking, expiry), through the scheduler's face;
 * - a node's view of its neighbours' bitfields and PENDING promises ({@link HaveTable}) and the have protocol's
 *   messages, whose real encoder also measures the control bytes;
 * - back-to-source by rendezvous hash ({@link planChunk}) and the blob locator's defaults;
 * - what the daemon's timer-driven classes decide ({@link blobGroup}, {@link chooseHolder}, {@link splitRequests},
 *   {@link HaveOutbox}, a swarm prefetch's picks: {@link prefetchPick}, {@link prefetchClass}, {@link swarmPickLimits},
 *   {@link swarmPrefetchWait}, {@link swarmQuietTake}), through the pure module they call;
 * - whom a busy chunk server sends an asker to ({@link ChunkReceivers}) and how often an asker follows;
 * - the chunk protocol's declared layouts, for the bytes of requests and reply headers;
 * - the bursts of the rate limits capping a daemon's downloads and uploads and the registry's egress.
 *
 * Everything comes through the faces of `base/`, `scheduler/` and `peer/` (the daemon's heavy parts load lazily, so the
 * face costs the model little); this file is the one place that names them.
 */
export { bucketBurst, limiterBurst } from '../../base/index.js'
export { HolderIndex, HARD_MAX_PEERS, packDigests, encodeMessage, type PeerInfo, type IndexStats } from '../../scheduler/index.js'
export {
  HaveTable, DEFAULT_PENDING_TTL_MS, encodeHave, newBits, setBit, getBit, MAX_INDEXES_PER_MESSAGE, type HaveMessage,
  planChunk, runStarts, rendezvousScore, backToSourceAssignee, NEAR_WINDOW, groupStale,
  DEFAULT_GROUP_SIZE, DEFAULT_GRACE_MS, DEFAULT_BITFIELD_WAIT_MS, DEFAULT_REFRESH_MS, DEFAULT_LOCATOR_MAX_HOLDERS as DEFAULT_MAX_HOLDERS, DEFAULT_LOOKUP_HOLDERS, DEFAULT_BUSY_RETRIES, DEFAULT_REPLAN_ROUNDS, DEFAULT_BUSY_AFTER_PARK_MS, replanDelayMs,
  blobGroup, holdersInOrder, chooseHolder, splitRequests, joinsQueued, nextQueued, spreading, type QueuedShape, HaveOutbox,
  PROGRESS_STEP_BYTES, PROGRESS_WINDOW_MS, prefetchClass, prefetchPick, swarmPickLimits, swarmPrefetchWait, swarmQuietTake, groupFilling, PREFETCH_SLICES_IN_FLIGHT, defaultPrefetchSlots, type PrefetchClass,
  DEFAULT_HAVE_FLUSH_MS as DEFAULT_FLUSH_MS, DEFAULT_HAVE_MAX_SESSIONS as DEFAULT_MAX_SESSIONS,
  DEFAULT_HOLDERS_PER_FETCH, DEFAULT_HEDGE_AFTER_MS, DEFAULT_NEIGHBOUR_REQUEST_BYTES as DEFAULT_MAX_REQUEST_BYTES, DEFAULT_STREAMS_PER_HOLDER,
  DEFAULT_MAX_CONCURRENT_UPLOADS, urgentUploadSlots, takesUrgentSlot, uploadBurst, PENDING_INTERVAL_MS, FIRST_PENDING_MS, REDIRECTED_WAIT_MS, MAX_CHUNKS_PER_REQUEST, ChunkReceivers, TAKE_TURN, MAX_REDIRECTS, REDIRECTED_EXTRA_STREAMS, RequestLayout, EntryLayout, ReplyLayout,
  DEFAULT_CONCURRENCY, DEFAULT_MAX_BATCH_BYTES, DEFAULT_READAHEAD_BYTES, DEFAULT_TIMEOUT_MS as DEFAULT_FETCH_IDLE_MS, DEFAULT_NEIGHBOUR_IDLE_FACTOR,
  DEFAULT_DEADLINE_MS, defaultReadHandOffMs
} from '../../peer/index.js'
