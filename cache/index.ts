/**
 * @packageDocumentation
 * The blob cache: one sparse `<blob-id>.blob.data` file per blob in the uncompressed-view layout (every chunk's
 * plaintext at its 4 KiB-aligned uncompressed offset, zeros after short chunks), so a complete file is
 * byte-identical to what `rafspeer build --blob-cache-dir` writes and mounts as an EROFS device; plus an index
 * (LevelDB via `level`, sublevels `meta!`, `blob!`, `chunk!`, `dig!`, `image!`) of present chunks, blobs, images
 * and last access.
 *
 * Contracts:
 * - `readChunk` is the hot path: an in-memory presence check and one pread. `{ verify: true }` never returns
 *   bytes that fail their digest (the chunk is unmarked, `undefined` → refetch).
 * - `putChunk` takes plaintext the caller verified; data is written before the chunk is marked. On
 *   `RAFSPEER_ERR_CACHE_FULL` (ENOSPC, EDQUOT, EIO) nothing is marked and the cache stays usable: the caller
 *   answers its reader from the plaintext it holds and moves on.
 * - After an unclean shutdown, `open` re-verifies every chunk marked since the last clean checkpoint.
 * - With `capBytes`, least-recently-used 16 MiB ranges of unpinned blobs are evicted (holes punched with
 *   `fallocate`); `pin` a blob while a kernel mount uses it.
 * - The index format is versioned; another version is refused with `RAFSPEER_ERR_CACHE_VERSION`.
 *
 * @example
 * ```ts
 * import { BlobCache } from './cache/index.js'
 * const cache = await BlobCache.open('/var/lib/rafspeer/cache', { capBytes: 20 << 30 })
 * await cache.registerBlob(blob)                        // RafsBlobInfo from the bootstrap
 * let data = await cache.readChunk(blob.blobId, chunk)  // ChunkInfo from RafsReader.mapRange
 * if (data === undefined) {
 *   const local = await cache.findByDigest(chunk.digest, { exceptBlobId: blob.blobId })
 *   if (local === undefined || !(await cache.copyChunk(local, { blobId: blob.blobId, chunk }))) {
 *     data = await fetchAndVerify(chunk)                // peers, then the registry
 *     await cache.putChunk(blob.blobId, chunk, data).catch(err => { if (err.code !== 'RAFSPEER_ERR_CACHE_FULL') throw err })
 *   }
 * }
 * if (cache.isComplete(blob.blobId)) cache.pin(blob.blobId) // then mount cache.blobPath(blob.blobId) as a device
 * await cache.close()
 * ```
 */
export { BlobCache, type BlobCacheEvents } from './blob-cache.js'
export type { ChunkWatcher } from './blob-state.js'
export {
  CACHE_FORMAT_VERSION, DEFAULT_EVICTION_RANGE_BYTES, type BlobCacheInit, type CacheStats, type CachedChunk, type VerifyReport
} from './types.js'
export {
  MemoryCacheIndex, MetaKey, type CacheIndex, type BlobRecord, type ChunkRecord, type ImageRecord, type ChunkMark,
  type ChunkUnmark, type ChunkQuery, type DigestHolder
} from './cache-index.js'
export { LevelCacheIndex } from './level-index.js'
export { CacheError, type CacheErrorCode } from './errors.js'
