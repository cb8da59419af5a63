/**
 * @packageDocumentation
 * The floor every room of rafspeer stands on, and imports nothing of ours: the error base ({@link RafspeerError}),
 * the component logger, the retry backoff, byte-rate limits, file digests, unit parsing and the V8 heap's growth for a long-running process. Each is here because
 * several rooms need the same thing; anything only one room uses lives in that room.
 *
 * @example
 * ```ts
 * import { RafspeerError, createLogger, RateLimiter, parseByteSize } from '../base/index.js'
 * ```
 */
export { RafspeerError, errorCode, describeError } from './errors.js'
export {
  createLogger, silentLogger, LOG_LEVELS, type ComponentLogger, type Logger, type LogFn, type LogLevel, type LogFormat,
  type LoggerInit
} from './logger.js'
export { Backoff, backoffDelay, type BackoffInit } from './backoff.js'
export { TokenBucket, RateLimiter, bucketBurst, limiterBurst, type Clock, type TokenBucketInit } from './rate.js'
export { sha256File } from './hash.js'
export { parseByteSize, parseHostPort, formatBytes } from './units.js'
export { partitionPoint } from './search.js'
export { packageVersion } from './version.js'
export { delay } from './delay.js'
export { headDeadlines, answerClientError } from './http-deadlines.js'
export { mulberry32 } from './random.js'
export { setHeapGrowth, heapGrowingFlag, DEFAULT_HEAP_GROWING_PERCENT, type HeapGrowth, type HeapGrowthInit } from './heap.js'
export { claimUnixSocket, probeUnixSocket, type SocketClaimProblem } from './unix-socket.js'
