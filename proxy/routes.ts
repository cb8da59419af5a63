/**
 * What a mirror request asks for, read from its method, path and query and validated against the OCI distribution
 * grammar before anything else happens: a bad name, tag, digest or upstream is a 4xx here, never a request
 * upstream. Names of several segments are accepted (`team/app/api`); `.`/`..` segments, percent-escapes and
 * anything outside the grammar are not.
 *
 * @example
 * ```ts
 * const r = parseRoute('GET', '/v2/library/alpine/manifests/3.19?ns=docker.io')
 * // { kind: 'manifest', name: 'library/alpine', reference: '3.19', byDigest: false, ns: 'docker.io' }
 * ```
 */
import { validateDigest, validateRepository, validateTag } from '../registry/index.js'
import { ociAnswer, type OciAnswer } from './errors.js'

export type Route =
  | { kind: 'base' }
  | { kind: 'manifest', name: string, reference: string, byDigest: boolean, ns: string | undefined }
  | { kind: 'blob', name: string, digest: string, ns: string | undefined }

/** the longest request target accepted (names are ≤ 255, digests ≤ 135, a query with `ns=`) */
export const MAX_URL_BYTES = 2048

const HOST_PORT = /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?$/

/** The route of a request, or the 4xx answer it gets. */
export function parseRoute (method: string | undefined, rawUrl: string | undefined): Route | OciAnswer {
  if (method !== 'GET' && method !== 'HEAD') {
    return ociAnswer(405, 'UNSUPPORTED', `${method ?? 'no method'}: this mirror serves GET and HEAD only`, { allow: 'GET, HEAD' })
  }
  const url = rawUrl ?? ''
  if (url.length > MAX_URL_BYTES) return ociAnswer(414, 'NAME_INVALID', `request target longer than ${MAX_URL_BYTES} bytes`)
  const q = url.indexOf('?')
  const path = q < 0 ? url : url.slice(0, q)
  const query = q < 0 ? '' : url.slice(q + 1)
  if (path === '/v2' || path === '/v2/') return { kind: 'base' }
  if (!path.startsWith('/v2/')) return ociAnswer(404, 'NAME_UNKNOWN', `${clip(path)}: not a registry API path`)

  let ns: string | undefined
  for (const kv of query.split('&')) {
    if (!kv.startsWith('ns=')) continue
    let v: string
    try { v = decodeURIComponent(kv.slice(3)) } catch { return ociAnswer(400, 'NAME_INVALID', 'ns= is not valid percent-encoding') }
    if (!HOST_PORT.test(v) || !validPort(v)) return ociAnswer(400, 'NAME_INVALID', `ns=${clip(v)} is not a registry host[:port]`)
    ns = v.toLowerCase()
  }

  const segments = path.slice(4).split('/')
  if (segments.length < 3) return ociAnswer(404, 'NAME_UNKNOWN', `${clip(path)}: expected /v2/<name>/manifests/<reference> or /v2/<name>/blobs/<digest>`)
  const last = segments.pop()!
  const kind = segments.pop()!
  const name = segments.join('/')
  if (segments.some(s => s === '.' || s === '..' || s === '')) return ociAnswer(400, 'NAME_INVALID', `${clip(name)}: empty, . or .. path segments`)
  try {
    validateRepository(name)
  } catch (err) {
    return ociAnswer(400, 'NAME_INVALID', (err as Error).message)
  }
  if (kind === 'blobs') {
    try { validateDigest(last) } catch (err) { return ociAnswer(400, 'DIGEST_INVALID', (err as Error).message) }
    return { kind: 'blob', name, digest: last, ns }
  }
  if (kind === 'manifests') {
    const byDigest = last.includes(':')
    try {
      if (byDigest) validateDigest(last)
      else validateTag(last)
    } catch (err) {
      return ociAnswer(400, byDigest ? 'DIGEST_INVALID' : 'TAG_INVALID', (err as Error).message)
    }
    return { kind: 'manifest', name, reference: last, byDigest, ns }
  }
  return ociAnswer(404, 'NAME_UNKNOWN', `${clip(path)}: expected /v2/<name>/manifests/<reference> or /v2/<name>/blobs/<digest>`)
}

function validPort (hostPort: string): boolean {
  const m = /:(\d+)$/.exec(hostPort.startsWith('[') ? hostPort.slice(hostPort.indexOf(']')) : hostPort)
  return m === null || (Number(m[1]) >= 1 && Number(m[1]) <= 65535)
}

/** What of a client's string goes into a message: short and printable. */
function clip (s: string): string {
  const t = s.replace(/[^\x20-\x7e]/g, '?')
  return t.length > 120 ? `${t.slice(0, 117)}...` : t
}

/** A parsed `Range` header: `bytes=N-`, `bytes=N-M` or `bytes=-N`, resolved against the blob's size. */
export type RangeAsk = { start: number, end: number } | 'none' | 'unsatisfiable'

/**
 * Resolves a `Range` header against a blob of `size` bytes: 'none' without one, `{start, end}` (end exclusive) for a
 * single satisfiable byte range, 'unsatisfiable' for anything else (several ranges, bad syntax, past the end), which
 * is answered 416 with `Content-Range: bytes * /size`.
 */
export function resolveRange (header: string | undefined, size: number): RangeAsk {
  if (header === undefined) return 'none'
  const m = /^bytes=(\d{0,16})-(\d{0,16})$/.exec(header.trim())
  if (m === null) return 'unsatisfiable'
  const [, a = '', b = ''] = m
  if (a === '' && b === '') return 'unsatisfiable'
  if (a === '') {
    const n = Number(b)
    if (n === 0 || size === 0) return 'unsatisfiable'
    return { start: Math.max(0, size - n), end: size }
  }
  const start = Number(a)
  const endIncl = b === '' ? size - 1 : Math.min(Number(b), size - 1)
  if (start >= size || (b !== '' && Number(b) < start)) return 'unsatisfiable'
  return { start, end: endIncl + 1 }
}
