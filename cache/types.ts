/**
 * Public types and defaults of the blob cache.
 */
import type { ChunkInfo } from '../rafs/index.js'
import type { CacheIndex } from './cache-index.js'
import type { ComponentLogger } from '../base/index.js'

/** The on-disk format this code reads and writes (`meta!version`). */
export const CACHE_FORMAT_VERSION = 1
/** default eviction unit: a span of a blob's uncompressed view */
export const DEFAULT_EVICTION_RANGE_BYTES = 16 << 20

/** The fields of a chunk the cache needs; a `ChunkInfo` fits. */
export type CachedChunk = Pick<ChunkInfo, 'index' | 'digest' | 'uncompressedOffset' | 'uncompressedSize'>

export interface BlobCacheInit {
  /** total 4 KiB-aligned bytes of present chunks to keep; LRU ranges of unpinned blobs are evicted above it */
  capBytes?: number
  /** eviction unit (default 16 MiB of a blob's uncompressed view) */
  evictionRangeBytes?: number
  logger?: ComponentLogger
  /** the index to use; default: LevelDB in `<dir>/index` */
  index?: CacheIndex
}

export interface VerifyReport { checked: number, bad: number, bytes: number }

export interface CacheStats {
  blobs: number
  completeBlobs: number
  pinnedBlobs: number
  images: number
  chunksPresent: number
  /** plaintext bytes of present chunks */
  bytesPresent: number
  /** 4 KiB-aligned bytes of present chunks: what the cap counts */
  diskBytes: number
  capBytes: number | undefined
  hits: number
  misses: number
  verifyFailures: number
  /** chunks evicted, and their aligned bytes */
  evictions: number
  evictedBytes: number
  /** puts refused with RAFSPEER_ERR_CACHE_FULL */
  writeFailures: number
  /** chunks re-verified at open after an unclean shutdown, and how many of them failed */
  recoveryChecked: number
  recoveryBad: number
  generation: number
}
