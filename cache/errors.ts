/**
 * One error class for the cache, with a stable `code` per failure. Callers branch on `code`:
 * `RAFSPEER_ERR_CACHE_FULL` means "serve this read from the network, the cache could not keep it".
 */

import { RafspeerError } from '../base/index.js'

export type CacheErrorCode =
  /** the on-disk format version is unknown (newer rafspeer, or not our directory): refused, never misread */
  | 'RAFSPEER_ERR_CACHE_VERSION'
  /** ENOSPC, EDQUOT or EIO while writing chunk data: the chunk is not marked, the cache stays usable */
  | 'RAFSPEER_ERR_CACHE_FULL'
  /** another process holds the index (LevelDB lock) */
  | 'RAFSPEER_ERR_CACHE_LOCKED'
  /** a blob id that was never registered */
  | 'RAFSPEER_ERR_CACHE_UNKNOWN_BLOB'
  /** chunk coordinates or plaintext length disagree with the registered blob */
  | 'RAFSPEER_ERR_CACHE_BAD_CHUNK'
  /** a size cap was asked for but holes cannot be punched (`fallocate` from util-linux is missing) */
  | 'RAFSPEER_ERR_CACHE_NO_PUNCH_HOLE'
  /** the cache is closed */
  | 'RAFSPEER_ERR_CACHE_CLOSED'
  /** any other I/O failure on the data files or the index */
  | 'RAFSPEER_ERR_CACHE_IO'

export class CacheError extends RafspeerError<CacheErrorCode> {}

/** errno codes that mean "the disk cannot take this write", as opposed to a bug or a vanished file */
const FULL_ERRNOS = new Set(['ENOSPC', 'EDQUOT', 'EIO', 'EFBIG'])

export function isFullErrno (err: unknown): boolean {
  return FULL_ERRNOS.has((err as NodeJS.ErrnoException | undefined)?.code ?? '')
}
