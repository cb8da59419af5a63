/**
 * HTTP plumbing of the embedded registry: spec error codes, request-target parsing that never decodes or
 * normalises (so `..` and `%2F` cannot sneak into a repository name), and Range / Content-Range parsing.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { RafspeerError } from '../base/index.js'

/** Error codes of the OCI distribution spec, each with the status the spec pairs it with. */
export const ERROR_STATUS = {
  BLOB_UNKNOWN: 404,
  BLOB_UPLOAD_INVALID: 400,
  BLOB_UPLOAD_UNKNOWN: 404,
  DIGEST_INVALID: 400,
  MANIFEST_BLOB_UNKNOWN: 400,
  MANIFEST_INVALID: 400,
  MANIFEST_UNKNOWN: 404,
  NAME_INVALID: 400,
  NAME_UNKNOWN: 404,
  SIZE_INVALID: 400,
  UNAUTHORIZED: 401,
  DENIED: 403,
  UNSUPPORTED: 405,
  TOOMANYREQUESTS: 429,
  RANGE_INVALID: 416,
  PAGINATION_NUMBER_INVALID: 400,
  NOT_FOUND: 404,
  UNKNOWN: 500
} as const

/** The error codes of the OCI distribution spec (what a client reads in `errors[].code`). */
export type DistributionErrorCode = keyof typeof ERROR_STATUS

/** A failure that becomes one `{"errors":[…]}` response; `status` defaults to the code's spec status. */
export class DistributionError extends RafspeerError<DistributionErrorCode> {
  readonly status: number
  readonly detail: unknown
  readonly headers: Record<string, string>

  constructor (code: DistributionErrorCode, message: string, init: { status?: number, detail?: unknown, headers?: Record<string, string> } = {}) {
    super(code, message)
    this.status = init.status ?? ERROR_STATUS[code]
    this.detail = init.detail
    this.headers = init.headers ?? {}
  }
}

export const API_VERSION_HEADER = { 'Docker-Distribution-API-Version': 'registry/2.0' }

export function sendError (req: IncomingMessage, res: ServerResponse, err: DistributionError): void {
  if (res.headersSent) { res.destroy(); return }
  const body = JSON.stringify({ errors: [{ code: err.code, message: err.message, detail: err.detail ?? null }] })
  const headers: Record<string, string | number> = {
    ...API_VERSION_HEADER,
    ...err.headers,
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(body)
  }
  // An unread request body would otherwise be drained (or block) before the socket can be reused.
  if (!req.complete && hasBody(req)) headers.Connection = 'close'
  res.writeHead(err.status, headers)
  res.end(req.method === 'HEAD' ? undefined : body)
}

export function sendJson (req: IncomingMessage, res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): number {
  const body = Buffer.from(JSON.stringify(value))
  res.writeHead(status, { ...API_VERSION_HEADER, ...headers, 'Content-Type': 'application/json', 'Content-Length': body.length })
  res.end(req.method === 'HEAD' ? undefined : body)
  return req.method === 'HEAD' ? 0 : body.length
}

export function sendEmpty (res: ServerResponse, status: number, headers: Record<string, string | number> = {}): void {
  res.writeHead(status, { ...API_VERSION_HEADER, 'Content-Length': 0, ...headers })
  res.end()
}

export function hasBody (req: IncomingMessage): boolean {
  const len = req.headers['content-length']
  return (len !== undefined && len !== '0') || req.headers['transfer-encoding'] !== undefined
}

/** Repository name grammar of the distribution spec: lowercase components joined by `/`. */
const NAME_RE = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/
const DIGEST_RE = /^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const MAX_NAME_LENGTH = 255

export function isDigest (s: string): boolean { return DIGEST_RE.test(s) }
export function isTag (s: string): boolean { return TAG_RE.test(s) }
export function isUploadId (s: string): boolean { return UUID_RE.test(s) }
export function isName (s: string): boolean { return s.length <= MAX_NAME_LENGTH && NAME_RE.test(s) }

export type Route =
  | { kind: 'base' }
  | { kind: 'token' }
  | { kind: 'blob', name: string, digest: string }
  | { kind: 'upload', name: string, id: string | undefined }
  | { kind: 'manifest', name: string, reference: string }
  | { kind: 'tags', name: string }

export interface Target { route: Route, query: URLSearchParams, path: string }

/**
 * Splits the raw request target. Percent-escapes are refused in the path rather than decoded: nothing in the
 * spec's grammar needs them, and decoding is how `%2e%2e` or `%2F` would turn into traversal.
 */
export function parseTarget (url: string | undefined): Target {
  const raw = url ?? ''
  const q = raw.indexOf('?')
  const path = q < 0 ? raw : raw.slice(0, q)
  let query: URLSearchParams
  try { query = new URLSearchParams(q < 0 ? '' : raw.slice(q + 1)) } catch { query = new URLSearchParams() }
  if (!path.startsWith('/')) throw new DistributionError('NOT_FOUND', 'request target must be an absolute path', { status: 400 })
  if (path.includes('%') || path.includes('\\') || path.includes('//')) {
    throw new DistributionError('NAME_INVALID', 'escaped or empty path segments are not accepted', { detail: { path } })
  }
  if (path === '/v2' || path === '/v2/') return { route: { kind: 'base' }, query, path }
  if (path === '/token') return { route: { kind: 'token' }, query, path }
  let m: RegExpExecArray | null
  let route: Extract<Route, { name: string }> | undefined
  if ((m = /^\/v2\/(.+)\/blobs\/uploads\/?([^/]*)$/.exec(path)) !== null) {
    const id = m[2] === '' ? undefined : m[2]
    if (id !== undefined && !isUploadId(id)) throw new DistributionError('BLOB_UPLOAD_UNKNOWN', 'no such upload', { detail: { id } })
    route = { kind: 'upload', name: m[1], id }
  } else if ((m = /^\/v2\/(.+)\/blobs\/([^/]+)$/.exec(path)) !== null) {
    if (!isDigest(m[2])) throw new DistributionError('DIGEST_INVALID', 'invalid digest', { detail: { digest: m[2] } })
    route = { kind: 'blob', name: m[1], digest: m[2] }
  } else if ((m = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(path)) !== null) {
    if (!isDigest(m[2]) && !isTag(m[2])) {
      throw new DistributionError(m[2].includes(':') ? 'DIGEST_INVALID' : 'MANIFEST_INVALID', 'invalid reference', { detail: { reference: m[2] } })
    }
    route = { kind: 'manifest', name: m[1], reference: m[2] }
  } else if ((m = /^\/v2\/(.+)\/tags\/list$/.exec(path)) !== null) {
    route = { kind: 'tags', name: m[1] }
  }
  if (route === undefined) throw new DistributionError('NOT_FOUND', 'no such endpoint', { detail: { path } })
  if (!isName(route.name)) throw new DistributionError('NAME_INVALID', 'invalid repository name', { detail: { name: route.name } })
  return { route, query, path }
}

/** Inclusive byte range. */
export interface ByteRange { start: number, end: number }

/**
 * Parses a `Range` request header against a body of `size` bytes. Returns undefined when the header should be
 * ignored (absent, another unit, several ranges, syntax RFC 9110 says to ignore), 'unsatisfiable' for a range
 * that lies past the end, else the single range clamped to the body.
 */
export function parseRange (header: string | undefined, size: number): ByteRange | 'unsatisfiable' | undefined {
  if (header === undefined) return undefined
  const m = /^bytes=\s*(\d*)-(\d*)\s*$/.exec(header)
  if (m === null) return undefined
  const [, a, b] = m
  if (a === '' && b === '') return undefined
  if (a === '') {
    const n = Number(b)
    if (n === 0 || size === 0) return 'unsatisfiable'
    return { start: Math.max(0, size - n), end: size - 1 }
  }
  const start = Number(a)
  const end = b === '' ? size - 1 : Number(b)
  if (!Number.isSafeInteger(start) || !Number.isFinite(end)) return 'unsatisfiable'
  if (b !== '' && end < start) return undefined
  if (start >= size) return 'unsatisfiable'
  return { start, end: Math.min(end, size - 1) }
}

/**
 * Parses an upload chunk's `Content-Range` (`start-end`, inclusive; `bytes ` prefix and `/total` tolerated
 * since some clients send the RFC form). Throws a 416 on anything unreadable.
 */
export function parseContentRange (header: string | undefined): ByteRange | undefined {
  if (header === undefined) return undefined
  const m = /^(?:bytes[ =])?\s*(\d+)-(\d+)(?:\/(?:\d+|\*))?\s*$/.exec(header)
  const start = m === null ? NaN : Number(m[1])
  const end = m === null ? NaN : Number(m[2])
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || end < start) {
    throw new DistributionError('RANGE_INVALID', 'invalid Content-Range', { detail: { contentRange: header } })
  }
  return { start, end }
}

/** `Range` header value of an upload holding `size` bytes (`0-0` when empty, as distribution answers). */
export function uploadRange (size: number): string {
  return `0-${size > 0 ? size - 1 : 0}`
}
