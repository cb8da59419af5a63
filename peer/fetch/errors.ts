/**
 * Failures of the fetch pipeline, one class each with a stable `code`. The FUSE layer maps every one of them to
 * EIO and logs the cause; the admin API reports `{ code, message }`.
 */
import { RafspeerError, errorCode } from '../../base/index.js'

export type FetchErrorCode =
  | 'RAFSPEER_ERR_DIGEST_MISMATCH'
  | 'RAFSPEER_ERR_READ_TIMEOUT'
  | 'RAFSPEER_ERR_FETCH_FAILED'
  | 'RAFSPEER_ERR_SOURCE_PROTOCOL'
  | 'RAFSPEER_ERR_ABORTED'

export class FetchError<C extends FetchErrorCode = FetchErrorCode> extends RafspeerError<C> {}

/** A source delivered bytes whose digest is not the chunk's: the bytes are dropped, never cached or returned. */
export class ChunkDigestMismatchError extends FetchError<'RAFSPEER_ERR_DIGEST_MISMATCH'> {
  constructor (readonly source: string, readonly blobId: string, readonly ci: number, expected: Buffer) {
    super('RAFSPEER_ERR_DIGEST_MISMATCH', `chunk ${ci} of blob ${blobId} from ${source}: digest mismatch, the bytes do not hash to ${expected.toString('hex')}`)
  }
}

/** A read could not be served within its deadline. The fetches behind it are aborted unless others still wait. */
export class ReadTimeoutError extends FetchError<'RAFSPEER_ERR_READ_TIMEOUT'> {
  constructor (what: string, readonly deadlineMs: number, options?: { cause?: unknown }) {
    super('RAFSPEER_ERR_READ_TIMEOUT', `${what}: not served within the ${deadlineMs} ms deadline`, options)
  }
}

/** Every source and retry failed without a more specific error to report. */
export class FetchFailedError extends FetchError<'RAFSPEER_ERR_FETCH_FAILED'> {
  constructor (message: string, options?: { cause?: unknown }) {
    super('RAFSPEER_ERR_FETCH_FAILED', message, options)
  }
}

/** A source broke the `ChunkSource` contract: a chunk it was not asked for, twice, wrong size, or missing. */
export class SourceProtocolError extends FetchError<'RAFSPEER_ERR_SOURCE_PROTOCOL'> {
  constructor (readonly source: string, message: string) {
    super('RAFSPEER_ERR_SOURCE_PROTOCOL', `${source}: ${message}`)
  }
}

/** The caller's signal fired (not a deadline of ours). */
export class FetchAbortedError extends FetchError<'RAFSPEER_ERR_ABORTED'> {
  constructor (what: string, options?: { cause?: unknown }) {
    super('RAFSPEER_ERR_ABORTED', `${what}: aborted`, options)
  }
}

const PERMANENT = new Set([
  'RAFSPEER_ERR_REGISTRY_NOT_FOUND', 'RAFSPEER_ERR_REGISTRY_AUTH', 'RAFSPEER_ERR_REGISTRY_TOO_LARGE',
  'RAFSPEER_ERR_ABORTED'
])

/** Worth another attempt: network trouble, timeouts, bad bytes (a corrupt hop may be transient). */
export function isTransient (err: unknown): boolean {
  const code = errorCode(err)
  return code === undefined || !PERMANENT.has(code)
}
