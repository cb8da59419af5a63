/**
 * The fetch room: where chunk bytes come from and how a read gets them. {@link Fetcher} (single-flight, batching,
 * priorities, the read deadline, one digest check per chunk) over {@link ChunkSource}s: the registry
 * ({@link RegistrySource}), a local blob directory ({@link LocalBlobSource}) and, from `exchange/`, neighbours.
 */
export {
  Fetcher, DEFAULT_AMPLIFY_BYTES, DEFAULT_CONCURRENCY, DEFAULT_DEADLINE_MS, DEFAULT_RETRIES, DEFAULT_TIMEOUT_MS,
  DEFAULT_MAX_BATCH_BYTES, defaultReadHandOffMs
} from './fetcher.js'
export { RegistrySource, DEFAULT_MAX_REQUEST_BYTES, type RegistrySourceComponents, type RegistrySourceInit } from './registry-source.js'
export { LocalBlobSource } from './local-source.js'
export { spreading } from './swarm-wait.js'
export { contiguousRuns, sourceKind, type ByteRun, type ChunkSource, type ChunkSourceFetchOptions, type FetchedChunk } from './source.js'
export {
  FetchError, ChunkDigestMismatchError, ReadTimeoutError, FetchFailedError, SourceProtocolError, FetchAbortedError,
  isTransient, type FetchErrorCode
} from './errors.js'
export { planBatches, type PlanInput, type PlannedBatch } from './plan.js'
export { FetchQueue, defaultPrefetchSlots, type FetchPriority, type QueueJob } from './queue.js'
export type {
  ChunkCache, CopySource, FetchImage, ReadOptions, EnsureOptions, FetcherComponents, FetcherInit, FetchSample, FetchCounters, FlightActivity, PrefetchAdvisor,
  MappedPiece
} from './types.js'
export {
  PREFETCH_SLICE_CHUNKS, PREFETCH_SLICES_IN_FLIGHT, SWARM_SOURCE_SLICE_BYTES, SWARM_PREFETCH_PATIENCE_MS, SWARM_PREFETCH_RECHECK_MS, swarmPickLimits, swarmPrefetchWait, swarmQuietTake
} from './prefetch-policy.js'
