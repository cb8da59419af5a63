/**
 * The directory's one error class. Callers branch on `code`: `RAFSPEER_ERR_DIRECTORY_UNAVAILABLE` means "the
 * directory cannot answer now, fall back (the peers go to the registry) and try again later".
 */
import { RafspeerError } from '../../base/index.js'

export type DirectoryErrorCode =
  /** Redis is unreachable, failing over, or did not answer within the call's deadline */
  | 'RAFSPEER_ERR_DIRECTORY_UNAVAILABLE'
  /** an argument broke a bound (an empty or over-long id, address or zone): a caller's bug or a hostile peer */
  | 'RAFSPEER_ERR_DIRECTORY_INVALID'
  /** the directory was closed */
  | 'RAFSPEER_ERR_DIRECTORY_CLOSED'
  /** bad options (no seeds, a seed that does not parse, a cluster-only option on a plain server) */
  | 'RAFSPEER_ERR_DIRECTORY_CONFIG'

export class DirectoryError extends RafspeerError<DirectoryErrorCode> {}
