/**
 * The mirror's errors: what went wrong inside (a `ProxyError` with a stable code) and what a client is told (an
 * `OciAnswer`: an HTTP status with an OCI distribution error body, which containerd, docker and skopeo read).
 */
import { RafspeerError } from '../base/index.js'

export type ProxyErrorCode =
  /** a piece map that does not fit its blob, or a blob that cannot be cut */
  | 'RAFSPEER_ERR_PROXY_PIECES'
  /** a neighbour broke `/rafspeer/piecemap/1.0.0` */
  | 'RAFSPEER_ERR_PROXY_MAP_PROTOCOL'
  /** the whole blob did not hash to its digest (a forged piece map, or an upstream sending wrong bytes) */
  | 'RAFSPEER_ERR_PROXY_DIGEST'
  /** no source could deliver (upstream unreachable and nothing cached or held by neighbours) */
  | 'RAFSPEER_ERR_PROXY_UNAVAILABLE'
  /** the mirror cannot listen on its address */
  | 'RAFSPEER_ERR_PROXY_LISTEN'

export class ProxyError extends RafspeerError<ProxyErrorCode> {}

/** The codes of the OCI distribution spec this mirror answers with. */
export type OciErrorCode =
  | 'BLOB_UNKNOWN' | 'MANIFEST_UNKNOWN' | 'NAME_INVALID' | 'NAME_UNKNOWN' | 'DIGEST_INVALID' | 'TAG_INVALID'
  | 'MANIFEST_INVALID' | 'UNAUTHORIZED' | 'DENIED' | 'UNSUPPORTED' | 'TOOMANYREQUESTS' | 'RANGE_INVALID'

/** An answer that is not content: status, OCI error, and headers (a 401's challenge, a 405's Allow). */
export interface OciAnswer {
  status: number
  code: OciErrorCode
  message: string
  headers?: Record<string, string>
}

export function ociAnswer (status: number, code: OciErrorCode, message: string, headers?: Record<string, string>): OciAnswer {
  return { status, code, message, ...(headers !== undefined ? { headers } : {}) }
}

/** The JSON body of an OCI error. */
export function ociErrorBody (a: OciAnswer): string {
  return JSON.stringify({ errors: [{ code: a.code, message: a.message }] })
}
