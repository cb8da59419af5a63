/**
 * One error class per registry failure. Callers branch on the stable `code`; the message always says which
 * registry, repository and digest or tag were involved, because a convert or a pull touches many of each.
 */

import { RafspeerError } from '../base/index.js'

/** Where a failure happened. `target` is the digest or tag being read or written. */
export interface RegistryErrorContext {
  host: string
  repository?: string
  target?: string
  /** the HTTP status that caused the error, when there was one */
  status?: number
  /** a 401's `WWW-Authenticate`, as the registry sent it */
  challenge?: string
}

export type RegistryErrorCode =
  | 'RAFSPEER_ERR_REGISTRY_AUTH'
  | 'RAFSPEER_ERR_REGISTRY_NOT_FOUND'
  | 'RAFSPEER_ERR_DIGEST_MISMATCH'
  | 'RAFSPEER_ERR_REGISTRY_RANGE'
  | 'RAFSPEER_ERR_REGISTRY_TOO_LARGE'
  | 'RAFSPEER_ERR_REGISTRY_UNSUPPORTED_MEDIA_TYPE'
  | 'RAFSPEER_ERR_REGISTRY_MANIFEST_INVALID'
  | 'RAFSPEER_ERR_REGISTRY_HTTP'
  | 'RAFSPEER_ERR_REGISTRY_NETWORK'
  | 'RAFSPEER_ERR_REGISTRY_TRUNCATED'
  | 'RAFSPEER_ERR_REGISTRY_UPLOAD'

function where (ctx: RegistryErrorContext): string {
  const parts = [`registry ${ctx.host}`]
  if (ctx.repository !== undefined) parts.push(`repository ${ctx.repository}`)
  if (ctx.target !== undefined) parts.push(ctx.target.includes(':') ? `digest ${ctx.target}` : `tag ${ctx.target}`)
  if (ctx.status !== undefined) parts.push(`HTTP ${ctx.status}`)
  return parts.join(', ')
}

export class RegistryError extends RafspeerError<RegistryErrorCode> {
  readonly host: string
  readonly repository: string | undefined
  readonly target: string | undefined
  readonly status: number | undefined
  /** a 401's `WWW-Authenticate`, as the registry sent it (a mirror relays it to its client) */
  readonly challenge: string | undefined

  constructor (code: RegistryErrorCode, what: string, ctx: RegistryErrorContext, options?: { cause?: unknown }) {
    super(code, `${what} (${where(ctx)})`, options)
    this.host = ctx.host
    this.repository = ctx.repository
    this.target = ctx.target
    this.status = ctx.status
    this.challenge = ctx.challenge
  }

  /** A base for a registry error class with one code: its constructor takes what failed and where. */
  static withCode (code: RegistryErrorCode): new (what: string, ctx: RegistryErrorContext, options?: { cause?: unknown }) => RegistryError {
    return class extends RegistryError {
      constructor (what: string, ctx: RegistryErrorContext, options?: { cause?: unknown }) { super(code, what, ctx, options) }
    }
  }
}

/** 401/403: no credentials, rejected credentials, a token that could not be obtained, or access denied. */
export class RegistryAuthError extends RegistryError.withCode('RAFSPEER_ERR_REGISTRY_AUTH') {}

/** 404 on a manifest or blob (or no index entry for the asked platform). */
export class RegistryNotFoundError extends RegistryError.withCode('RAFSPEER_ERR_REGISTRY_NOT_FOUND') {}

/** Bytes fetched (or about to be pushed) by digest do not hash to that digest. */
export class DigestMismatchError extends RegistryError {
  readonly expected: string
  readonly actual: string
  constructor (expected: string, actual: string, ctx: RegistryErrorContext, options?: { cause?: unknown }) {
    super('RAFSPEER_ERR_DIGEST_MISMATCH', `content digest mismatch: expected ${expected}, got ${actual}`,
      { ...ctx, target: ctx.target ?? expected }, options)
    this.expected = expected
    this.actual = actual
  }
}

/** A Range request answered with the wrong status, `Content-Range` or length. */
export class RegistryRangeError extends RegistryError.withCode('RAFSPEER_ERR_REGISTRY_RANGE') {}

/** A manifest (or a ranged read) above the size the client accepts. */
export class RegistryTooLargeError extends RegistryError {
  readonly limit: number
  constructor (what: string, limit: number, ctx: RegistryErrorContext, options?: { cause?: unknown }) {
    super('RAFSPEER_ERR_REGISTRY_TOO_LARGE', `${what} exceeds the ${limit}-byte limit`, ctx, options)
    this.limit = limit
  }
}

export class UnsupportedMediaTypeError extends RegistryError {
  readonly mediaType: string
  constructor (mediaType: string, ctx: RegistryErrorContext, options?: { cause?: unknown }) {
    super('RAFSPEER_ERR_REGISTRY_UNSUPPORTED_MEDIA_TYPE', `unsupported manifest media type "${mediaType}"`, ctx, options)
    this.mediaType = mediaType
  }
}

/** A manifest or index that is not valid JSON or lacks required fields. */
export class ManifestInvalidError extends RegistryError.withCode('RAFSPEER_ERR_REGISTRY_MANIFEST_INVALID') {}

/** An unexpected HTTP status (5xx and 429 once retries are spent, 400, 405, …). */
export class RegistryHttpError extends RegistryError.withCode('RAFSPEER_ERR_REGISTRY_HTTP') {}

/** Connection refused, reset or timed out, once retries are spent. */
export class RegistryNetworkError extends RegistryError.withCode('RAFSPEER_ERR_REGISTRY_NETWORK') {}

/** A body that ended before its announced length and could not be resumed. */
export class RegistryTruncatedError extends RegistryError.withCode('RAFSPEER_ERR_REGISTRY_TRUNCATED') {}

/** The registry refused or lost an upload session (bad Location, wrong Range echo, final PUT rejected). */
export class RegistryUploadError extends RegistryError.withCode('RAFSPEER_ERR_REGISTRY_UPLOAD') {}

/** An image reference, repository name, tag, digest or platform string that does not parse. */
export class InvalidReferenceError extends RafspeerError<'RAFSPEER_ERR_INVALID_REFERENCE'> {
  readonly input: string
  constructor (input: string, reason: string) {
    super('RAFSPEER_ERR_INVALID_REFERENCE', `invalid image reference "${input}": ${reason}`)
    this.input = input
  }
}
