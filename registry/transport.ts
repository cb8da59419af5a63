/**
 * One HTTP exchange with a registry, the way every method of the client needs it: scheme choice (plain HTTP only
 * for loopback or when asked), authentication on 401, redirects followed by hand (so `Authorization` never leaves
 * the registry's host), deadlines, retries with backoff on 5xx/429/resets, and the mapping of failure statuses to
 * the error classes. Bodies are handed back unread; the caller reads, counts and verifies them.
 */
import type { IncomingHttpHeaders } from 'node:http'
import { Readable } from 'node:stream'
import type { Dispatcher } from 'undici'
import { backoffDelay, delay } from '../base/index.js'
import type { Authenticator } from './auth.js'
import {
  RegistryAuthError, RegistryError, RegistryHttpError, RegistryNetworkError, RegistryNotFoundError, RegistryRangeError,
  RegistryTooLargeError, type RegistryErrorContext
} from './errors.js'
import { isLoopbackHost } from './reference.js'

export type HttpMethod = 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE'
/** A request body: bytes, or a factory so that a retry or an auth round can send it again. */
export type RequestBody = Buffer | (() => AsyncIterable<Uint8Array>)
type BodyReadable = Dispatcher.ResponseData['body']

export interface Response {
  status: number
  headers: IncomingHttpHeaders
  body: BodyReadable
  /** the URL that answered, after redirects */
  url: string
}

export interface SendOptions {
  method: HttpMethod
  /** the registry's `host[:port]` */
  host: string
  /** `/v2/...` on the registry, or an absolute URL (an upload Location) */
  url: string
  ctx: RegistryErrorContext
  /** token scopes the request needs (`repository:NAME:pull`) */
  scopes: string[]
  headers?: Record<string, string>
  body?: RequestBody
  /** statuses handed back to the caller; any other one becomes an error */
  expect: number[]
  /** false for requests that must not be repeated blindly (PATCH of an upload chunk) */
  retry?: boolean
  /** long bodies: no overall deadline, only idle timeouts on headers and body */
  stream?: boolean
  /** what a 404 means, for the message: `blob`, `manifest` */
  notFound?: string
  /**
   * Another client's credentials, passed through as they came (a registry mirror relays its client's
   * `Authorization`): sent as is to the registry's host (null: nothing), with no token negotiation of ours; a 401
   * is then the answer, with its challenge, for that client to handle.
   */
  authorization?: string | null
  signal?: AbortSignal
}

/** Per-host byte counts, for metrics (bytes from the registry, bytes pushed). Redirected bytes count to the registry. */
export class TrafficCounters {
  private readonly hosts = new Map<string, { downloaded: number, uploaded: number }>()

  private entry (host: string): { downloaded: number, uploaded: number } {
    let e = this.hosts.get(host)
    if (e === undefined) { e = { downloaded: 0, uploaded: 0 }; this.hosts.set(host, e) }
    return e
  }

  addDownloaded (host: string, n: number): void { this.entry(host).downloaded += n }
  addUploaded (host: string, n: number): void { this.entry(host).uploaded += n }
  downloaded (host?: string): number { return this.sum('downloaded', host) }
  uploaded (host?: string): number { return this.sum('uploaded', host) }
  snapshot (): Record<string, { downloaded: number, uploaded: number }> {
    return Object.fromEntries([...this.hosts].map(([h, e]) => [h, { ...e }]))
  }

  private sum (k: 'downloaded' | 'uploaded', host?: string): number {
    if (host !== undefined) return this.hosts.get(host)?.[k] ?? 0
    let n = 0
    for (const e of this.hosts.values()) n += e[k]
    return n
  }
}

export interface TransportInit {
  plainHttp: boolean | 'auto' | ((host: string) => boolean)
  /** resolved at each request: undici is loaded with the first one, not with the module */
  dispatcher: () => Promise<Dispatcher>
  auth: Authenticator
  counters: TrafficCounters
  retries: number
  timeoutMs: number
  retryBaseMs: number
  retryMaxMs: number
  /** a Retry-After above this fails at once instead of stalling the caller */
  maxRetryAfterMs: number
  userAgent: string
}

/**
 * undici, loaded with the first request: it was the largest part of a new CLI process's start, and commands that
 * parse references but send nothing to a registry (`rafspeer rpull`, the snapshotter's CRI side) need none of it.
 * Through `default` (module.exports), the one shape both Node and a bundle give a CommonJS module's `import()`.
 */
export const undici = async (): Promise<typeof import('undici').default> => (await import('undici')).default

/**
 * Loads undici now. A long-running process calls it once it is idle after its start (the daemon does, once
 * ready): compiling undici blocks the event loop for 0.1–0.2 s, which a daemon's first mount would otherwise pay
 * in the middle of a container's pull.
 */
export const preloadHttpClient = async (): Promise<void> => { await undici() }

const RETRY_STATUSES = new Set([408, 429, 500, 502, 503, 504])
const REDIRECTS = new Set([301, 302, 303, 307, 308])
const MAX_REDIRECTS = 5
const ERROR_BODY_LIMIT = 64 << 10
const RETRYABLE_CODES = new Set([
  'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ECONNABORTED', 'ENETUNREACH', 'EHOSTUNREACH', 'EAI_AGAIN',
  'UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_RES_CONTENT_LENGTH_MISMATCH'
])

/** Resets, socket errors and timeouts are worth another try; a refused connection or a user abort is not. */
export function isRetryableNetworkError (err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 4; e = e.cause, depth++) {
    if (e instanceof RegistryError) return false
    if (e.name === 'TimeoutError') return true
    const code = (e as { code?: unknown }).code
    if (typeof code === 'string' && RETRYABLE_CODES.has(code)) return true
  }
  return false
}

/** Seconds or an HTTP date, as milliseconds from now; undefined when absent or unreadable. */
export function parseRetryAfter (value: string | string[] | undefined, now = Date.now()): number | undefined {
  const v = Array.isArray(value) ? value[0] : value
  if (v === undefined || v.trim() === '') return undefined
  if (/^\d+$/.test(v.trim())) return Number(v.trim()) * 1000
  const t = Date.parse(v)
  return Number.isNaN(t) ? undefined : Math.max(0, t - now)
}

/**
 * Drops a response body we will not read. undici reports a destroy as an AbortError on the stream, which nobody
 * listens to once we have moved on, so it is swallowed here.
 */
export function discard (body: BodyReadable): void {
  if (body.destroyed) return
  body.on('error', () => {})
  body.destroy()
}

export function header (headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name]
  return Array.isArray(v) ? v[0] : v
}

/** Reads a whole (small) body, counting it and refusing it past `limit`. */
export async function readCapped (res: Response, limit: number, ctx: RegistryErrorContext, what: string,
  counters: TrafficCounters): Promise<Buffer> {
  const declared = Number(header(res.headers, 'content-length') ?? NaN)
  if (declared > limit) {
    discard(res.body)
    throw new RegistryTooLargeError(`${what} of ${declared} bytes`, limit, ctx)
  }
  const parts: Buffer[] = []
  let n = 0
  for await (const chunk of res.body as AsyncIterable<Buffer>) {
    n += chunk.length
    counters.addDownloaded(ctx.host, chunk.length)
    if (n > limit) {
      discard(res.body)
      throw new RegistryTooLargeError(what, limit, ctx)
    }
    parts.push(chunk)
  }
  return Buffer.concat(parts, n)
}

/** The `errors[].code: message` of an OCI error body, for messages that say why. */
async function errorDetail (body: BodyReadable): Promise<string> {
  let text = ''
  try {
    for await (const chunk of body as AsyncIterable<Buffer>) {
      text += chunk.toString('utf8')
      if (text.length > ERROR_BODY_LIMIT) { discard(body); break }
    }
  } catch { return '' }
  try {
    const json = JSON.parse(text) as { errors?: Array<{ code?: string, message?: string }> }
    if (Array.isArray(json.errors)) return json.errors.map(e => `${e.code ?? '?'}: ${e.message ?? ''}`).join('; ')
  } catch {}
  return text.trim().slice(0, 200)
}

export class Transport {
  constructor (private readonly init: TransportInit) {}

  baseUrl (host: string): string {
    const p = this.init.plainHttp
    const plain = p === 'auto' ? isLoopbackHost(host) : typeof p === 'function' ? p(host) : p
    return `${plain ? 'http' : 'https'}://${host}`
  }

  backoff (attempt: number): number {
    return backoffDelay(attempt, { baseMs: this.init.retryBaseMs, maxMs: this.init.retryMaxMs })
  }

  get retries (): number { return this.init.retries }
  get timeoutMs (): number { return this.init.timeoutMs }

  /** Sends with retries; resolves with a response whose status is in `expect`, its body unread. */
  async send (o: SendOptions): Promise<Response> {
    const retries = o.retry === false ? 0 : this.init.retries
    for (let attempt = 0; ; attempt++) {
      try {
        const res = await this.once(o)
        if (RETRY_STATUSES.has(res.status) && !o.expect.includes(res.status) && attempt < retries) {
          const after = parseRetryAfter(res.headers['retry-after'])
          if (after === undefined || after <= this.init.maxRetryAfterMs) {
            await res.body.dump().catch(() => {})
            await delay(after ?? this.backoff(attempt), o.signal)
            continue
          }
        }
        if (o.expect.includes(res.status)) return res
        throw await this.statusError(o, res)
      } catch (err) {
        if (o.signal?.aborted === true) throw o.signal.reason
        if (err instanceof RegistryError) throw err
        if (isRetryableNetworkError(err) && attempt < retries) {
          await delay(this.backoff(attempt), o.signal)
          continue
        }
        const what = (err as Error).name === 'TimeoutError' ? `timed out after ${this.init.timeoutMs} ms` : (err as Error).message
        throw new RegistryNetworkError(`${o.method} ${pathOf(o.url)} failed: ${what}`, o.ctx, { cause: err })
      }
    }
  }

  /** One attempt: 401 → authenticate and resend once; redirects followed with credentials dropped off-host. */
  private async once (o: SendOptions): Promise<Response> {
    let url = new URL(o.url, this.baseUrl(o.host))
    let method = o.method
    let body = o.body
    let challenged = false
    let deadline: AbortSignal | undefined
    if (o.stream !== true) {
      const t = AbortSignal.timeout(this.init.timeoutMs)
      deadline = o.signal !== undefined ? AbortSignal.any([o.signal, t]) : t
    }
    for (let hops = 0; ; hops++) {
      const headers: Record<string, string> = { 'user-agent': this.init.userAgent, ...o.headers }
      const onRegistry = url.host === o.host
      if (onRegistry && o.authorization !== undefined) {
        if (o.authorization !== null) headers.authorization = o.authorization
      } else if (onRegistry) {
        const authorization = await this.init.auth.authorization(o.host, o.scopes, o.ctx, deadline ?? o.signal)
        if (authorization !== undefined) headers.authorization = authorization
      }
      const res = await (await undici()).request(url, {
        method,
        headers,
        body: this.bodyFor(o.host, body),
        dispatcher: await this.init.dispatcher(),
        signal: deadline ?? o.signal ?? null,
        headersTimeout: this.init.timeoutMs,
        bodyTimeout: this.init.timeoutMs
      })
      if (Buffer.isBuffer(body)) this.init.counters.addUploaded(o.host, body.length)
      const status = res.statusCode
      if (status === 401 && onRegistry && !challenged && !o.expect.includes(401) && o.authorization === undefined) {
        challenged = true
        const wwwAuth = res.headers['www-authenticate']
        await res.body.dump().catch(() => {})
        if (headers.authorization?.startsWith('Basic ') === true && this.init.auth.knownScheme(o.host) === 'basic') {
          throw new RegistryAuthError(`credentials rejected for ${method} ${pathOf(url.href)}`, { ...o.ctx, status })
        }
        await this.init.auth.challenge(o.host, wwwAuth, o.scopes, o.ctx, deadline ?? o.signal)
        continue
      }
      const location = header(res.headers, 'location')
      if (REDIRECTS.has(status) && location !== undefined && !o.expect.includes(status)) {
        await res.body.dump().catch(() => {})
        if (hops >= MAX_REDIRECTS) throw new RegistryHttpError(`more than ${MAX_REDIRECTS} redirects`, { ...o.ctx, status })
        url = new URL(location, url)
        if (status === 303 || ((status === 301 || status === 302) && method === 'POST')) { method = 'GET'; body = undefined }
        continue
      }
      return { status, headers: res.headers, body: res.body, url: url.href }
    }
  }

  private bodyFor (host: string, body: RequestBody | undefined): Buffer | Readable | null {
    if (body === undefined) return null
    if (Buffer.isBuffer(body)) return body
    const counters = this.init.counters
    const source = body
    return Readable.from((async function * () {
      for await (const chunk of source()) {
        counters.addUploaded(host, chunk.byteLength)
        yield chunk
      }
    })(), { objectMode: false })
  }

  /** Turns an unexpected status into the error a caller can branch on; consumes the body for the detail. */
  async statusError (o: SendOptions, res: Response): Promise<RegistryError> {
    const status = res.status
    const detail = o.method === 'HEAD' ? '' : await errorDetail(res.body)
    if (o.method === 'HEAD') discard(res.body)
    const why = detail !== '' ? `: ${detail}` : ''
    const challenge = status === 401 ? header(res.headers, 'www-authenticate') : undefined
    const ctx = { ...o.ctx, status, ...(challenge !== undefined ? { challenge } : {}) }
    const what = `${o.method} ${pathOf(res.url)}`
    switch (status) {
      case 401: return new RegistryAuthError(`authentication failed for ${what}${why}`, ctx)
      case 403: return new RegistryAuthError(`access denied for ${what}${why}`, ctx)
      case 404: return new RegistryNotFoundError(`${o.notFound ?? 'resource'} not found${why}`, ctx)
      case 416: return new RegistryRangeError(`range not satisfiable for ${what}${why}`, ctx)
      default: {
        const retryAfter = header(res.headers, 'retry-after')
        const extra = RETRY_STATUSES.has(status) && o.retry !== false
          ? ` after ${this.init.retries + 1} attempts${retryAfter !== undefined ? ` (Retry-After: ${retryAfter})` : ''}`
          : ''
        return new RegistryHttpError(`unexpected HTTP ${status} for ${what}${extra}${why}`, ctx)
      }
    }
  }

  /** Token requests go through the same dispatcher (and CA) as everything else, with the same deadline. */
  async fetchToken (url: URL, headers: Record<string, string>, signal?: AbortSignal): Promise<{ status: number, body: string }> {
    const t = AbortSignal.timeout(this.init.timeoutMs)
    const res = await (await undici()).request(url, {
      method: 'GET',
      headers: { 'user-agent': this.init.userAgent, ...headers },
      dispatcher: await this.init.dispatcher(),
      signal: signal !== undefined ? AbortSignal.any([signal, t]) : t
    })
    const limit = 1 << 20
    let text = ''
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      text += chunk.toString('utf8')
      if (text.length > limit) { discard(res.body); throw new Error(`token response larger than ${limit} bytes`) }
    }
    return { status: res.statusCode, body: text }
  }
}

/** Path and query without the host, for messages (upload URLs carry long state tokens: cut them). */
export function pathOf (url: string): string {
  try {
    const u = new URL(url, 'http://x')
    const q = u.search.length > 40 ? `${u.search.slice(0, 40)}…` : u.search
    return `${u.pathname}${q}`
  } catch { return url }
}
