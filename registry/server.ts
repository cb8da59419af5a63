/**
 * @packageDocumentation
 * A small embedded OCI distribution (v1.1) server: the default registry of the demo and of the simulator. It
 * stores blobs content-addressed on disk, shared by repositories, accepts monolithic, chunked and mounted
 * uploads, validates manifests against what the repository holds, serves blobs with Range, can shape its egress
 * with one shared token bucket, counts bytes per repository, and can demand Basic credentials or act as its own
 * bearer-token issuer. It holds against slow and greedy clients: request heads have a deadline, idle sockets are
 * closed, and upload sessions are bounded in number and dropped when abandoned. It is not a stand-in for a real
 * registry in client tests.
 *
 * @example
 * ```ts
 * const reg = await startRegistryServer({ root: '/tmp/reg', bandwidthLimit: 8 << 20 })
 * // skopeo copy --dest-tls-verify=false oci:img:latest docker://${reg.host}/demo/app:latest
 * console.log(reg.counters.snapshot()['demo/app'])
 * await reg.stop()
 * ```
 */
import { setMaxListeners } from 'node:events'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import { resolve } from 'node:path'
import { AuthGate, type AuthOptions } from './server-auth.js'
import { handleBlob, handleUpload, type ServerContext } from './server-blobs.js'
import { DistributionError, parseTarget, sendError, sendJson, type Route } from './server-http.js'
import { TokenBucket, answerClientError, headDeadlines, type Clock } from '../base/index.js'
import { Counters, type RepoCounters } from './server-counters.js'
import { DEFAULT_MAX_MANIFEST_SIZE, handleManifest, handleTags } from './server-manifests.js'
import { RegistryStorage } from './server-storage.js'

export { DistributionError, type DistributionErrorCode } from './server-http.js'
export type { RepoCounters } from './server-counters.js'
export type { AuthOptions, Credentials } from './server-auth.js'

export interface RegistryServerOptions {
  /** Storage directory; created when missing. */
  root: string
  /** Default 127.0.0.1. */
  host?: string
  /** Default 0 (a free port). */
  port?: number
  /**
   * `basic`: every request needs these credentials. `bearer`: this server issues tokens at `/token` in exchange
   * for these credentials (takes precedence when both are given).
   */
  auth?: AuthOptions
  /** Bytes per second of blob bodies served, shared by every connection. Unlimited when absent. */
  bandwidthLimit?: number
  /** Largest manifest accepted, in bytes (default 4 MiB). */
  maxManifestSize?: number
  /** Milliseconds clock for token expiry, the bandwidth bucket and upload idle times; tests inject a fake one. */
  now?: Clock
  /**
   * A client must have sent its whole request line and headers within this many milliseconds of starting them
   * (default 10 s); a socket that trickles them (slowloris) is answered 408 and closed.
   */
  headersTimeoutMs?: number
  /**
   * A socket with no byte moving either way for this long is closed (default 60 s). Request bodies have no overall
   * deadline (a multi-GB blob PUT may take long): this idle timeout is what ends a stalled body.
   */
  idleTimeoutMs?: number
  /** Upload sessions open at once; a POST past it is answered 429 TOOMANYREQUESTS (default 256). */
  maxUploadSessions?: number
  /** An upload session without a request for this long is dropped with its data (default 10 min). */
  uploadIdleMs?: number
  /** Called with unexpected failures (those answered with 500 UNKNOWN). */
  onError?: (err: unknown) => void
}

export interface RegistryCounters {
  /** Blob and manifest body bytes sent, for one repository or the whole server. */
  bytesServed: (repo?: string) => number
  /** Requests handled, for one repository or the whole server (including `/v2/` and `/token`). */
  requests: (repo?: string) => number
  /** Per repository; requests outside any repository are under the key "". */
  snapshot: () => Record<string, RepoCounters>
}

export interface RegistryServer {
  /** `http://host:port` */
  url: string
  /** `host:port`, as used in image references. */
  host: string
  port: number
  counters: RegistryCounters
  /** Closes the listener and every open connection; in-flight requests end. */
  stop: () => Promise<void>
}

/** A request line and headers take well under a second to send; ten seconds leaves room for a slow link. */
export const DEFAULT_HEADERS_TIMEOUT_MS = 10_000
/** Idle sockets (no bytes either way) are dropped after this, so a stalled client cannot pin a stream forever. */
export const DEFAULT_IDLE_TIMEOUT_MS = 60_000
const WRITE_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE'])
const HOST_HEADER_RE = /^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/

function checkOptions (opts: RegistryServerOptions): string[] {
  const problems: string[] = []
  if (typeof opts.root !== 'string' || opts.root === '') problems.push('root must be a non-empty path')
  if (opts.port !== undefined && (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535)) problems.push(`port must be 0..65535, got ${opts.port}`)
  if (opts.bandwidthLimit !== undefined && !(opts.bandwidthLimit > 0 && Number.isFinite(opts.bandwidthLimit))) problems.push(`bandwidthLimit must be a positive number, got ${opts.bandwidthLimit}`)
  if (opts.maxManifestSize !== undefined && !(Number.isSafeInteger(opts.maxManifestSize) && opts.maxManifestSize > 0)) problems.push(`maxManifestSize must be a positive integer, got ${opts.maxManifestSize}`)
  for (const kind of ['basic', 'bearer'] as const) {
    const c = opts.auth?.[kind]
    if (c !== undefined && (typeof c.user !== 'string' || c.user === '' || c.user.includes(':') || typeof c.password !== 'string')) {
      problems.push(`auth.${kind} needs a user (without ':') and a password`)
    }
  }
  for (const k of ['headersTimeoutMs', 'idleTimeoutMs', 'maxUploadSessions', 'uploadIdleMs'] as const) {
    const v = opts[k]
    if (v !== undefined && !(Number.isSafeInteger(v) && v > 0)) problems.push(`${k} must be a positive integer, got ${v}`)
  }
  const ttl = opts.auth?.bearer?.tokenTtl
  if (ttl !== undefined && !(Number.isFinite(ttl) && ttl > 0)) problems.push(`auth.bearer.tokenTtl must be positive seconds, got ${ttl}`)
  return problems
}

export async function startRegistryServer (opts: RegistryServerOptions): Promise<RegistryServer> {
  const problems = checkOptions(opts)
  if (problems.length > 0) throw new TypeError(`invalid registry server options: ${problems.join('; ')}`)
  const now = opts.now ?? Date.now
  const storage = new RegistryStorage(resolve(opts.root), {
    ...(opts.maxUploadSessions !== undefined ? { maxUploads: opts.maxUploadSessions } : {}),
    ...(opts.uploadIdleMs !== undefined ? { uploadIdleMs: opts.uploadIdleMs } : {}),
    now
  })
  await storage.init()
  let hostPort = ''
  const ctx: ServerContext = {
    storage,
    counters: new Counters(),
    // The realm must be reachable by the client, so it follows the Host it used when that header is sane.
    auth: new AuthGate(opts.auth, { now, realmHost: req => HOST_HEADER_RE.test(req.headers.host ?? '') ? req.headers.host as string : hostPort }),
    limiter: opts.bandwidthLimit === undefined ? undefined : new TokenBucket(opts.bandwidthLimit, { now }),
    maxManifestSize: opts.maxManifestSize ?? DEFAULT_MAX_MANIFEST_SIZE
  }
  const stopping = new AbortController()
  // every request in flight listens to it (and stops listening when it ends): many at once is load, not a leak
  setMaxListeners(Infinity, stopping.signal)
  const sockets = new Set<Socket>()
  const inflight = new Set<Promise<void>>()

  const headersTimeout = opts.headersTimeoutMs ?? DEFAULT_HEADERS_TIMEOUT_MS
  const server = createServer({
    // No whole-request deadline: it would cut a legitimately slow multi-GB blob PUT. The headers deadline ends
    // slowloris sockets, the idle timeout below ends stalled bodies.
    ...headDeadlines(headersTimeout, 0)
  }, (req, res) => {
    const p = handle(ctx, req, res, stopping.signal, opts.onError)
    inflight.add(p)
    void p.finally(() => inflight.delete(p))
  })
  server.timeout = opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS
  server.on('connection', socket => {
    sockets.add(socket)
    socket.once('close', () => sockets.delete(socket))
  })
  // A malformed or too slow request head never reaches the handler; answer it instead of leaving it hanging. The
  // socket is destroyed once the answer is out: only ending it would leave it half-open for a client that keeps
  // trickling bytes.
  server.on('clientError', (err, socket) => { answerClientError(err, socket) })

  const host = opts.host ?? '127.0.0.1'
  await new Promise<void>((resolveListen, reject) => {
    server.once('error', reject)
    server.listen(opts.port ?? 0, host, () => { server.off('error', reject); resolveListen() })
  })
  const address = server.address()
  const port = typeof address === 'object' && address !== null ? address.port : (opts.port ?? 0)
  hostPort = `${host.includes(':') ? `[${host}]` : host}:${port}`
  // Idle upload sessions are dropped (with their data) on a timer too, not only when the next one is opened.
  const reaper = setInterval(() => { void storage.reapIdleUploads().catch(err => opts.onError?.(err)) }, storage.reapIntervalMs)
  reaper.unref()

  let stopped: Promise<void> | undefined
  const stop = async (): Promise<void> => {
    stopped ??= (async () => {
      clearInterval(reaper)
      stopping.abort()
      const closed = new Promise<void>(resolveClose => server.close(() => resolveClose()))
      server.closeAllConnections()
      for (const s of sockets) s.destroy()
      await closed
      await Promise.allSettled([...inflight])
    })()
    await stopped
  }

  const counters = ctx.counters
  return {
    url: `http://${hostPort}`,
    host: hostPort,
    port,
    counters: {
      bytesServed: repo => counters.bytesServed(repo),
      requests: repo => counters.requests(repo),
      snapshot: () => counters.snapshot()
    },
    stop
  }
}

function repoOf (route: Route): string { return 'name' in route ? route.name : '' }

async function handle (ctx: ServerContext, req: IncomingMessage, res: ServerResponse, stopping: AbortSignal, onError?: (err: unknown) => void): Promise<void> {
  // One signal per request: the client going away or the server stopping both end a transfer.
  const ac = new AbortController()
  const abort = (): void => ac.abort()
  res.once('close', abort)
  stopping.addEventListener('abort', abort, { once: true })
  let counted = false
  try {
    const { route, query } = parseTarget(req.url)
    ctx.counters.request(repoOf(route), route.kind === 'blob' && req.method === 'GET' && req.headers.range !== undefined)
    counted = true
    await dispatch(ctx, req, res, route, query, ac.signal)
  } catch (err) {
    if (!counted) ctx.counters.request('')
    if (err instanceof DistributionError) {
      sendError(req, res, err)
    } else if (ac.signal.aborted || req.destroyed || res.destroyed || req.socket.destroyed) {
      // The peer left mid-body (its stream error can arrive before the response's close event) or the server is
      // stopping: nobody is listening for an answer, and it is not a server fault.
      res.destroy()
    } else {
      onError?.(err)
      sendError(req, res, new DistributionError('UNKNOWN', 'internal error'))
    }
  } finally {
    stopping.removeEventListener('abort', abort)
    res.off('close', abort)
  }
}

async function dispatch (ctx: ServerContext, req: IncomingMessage, res: ServerResponse, route: Route, query: URLSearchParams, signal: AbortSignal): Promise<void> {
  const method = req.method ?? 'GET'
  switch (route.kind) {
    case 'base':
      if (method !== 'GET' && method !== 'HEAD') throw new DistributionError('UNSUPPORTED', 'method not allowed', { headers: { Allow: 'GET, HEAD' } })
      ctx.auth.check(req, { action: 'pull' })
      sendJson(req, res, 200, {})
      return
    case 'token':
      await ctx.auth.handleToken(req, res, query)
      return
    default:
  }
  ctx.auth.check(req, { name: route.name, action: WRITE_METHODS.has(method) ? 'push' : 'pull' })
  switch (route.kind) {
    case 'blob': await handleBlob(ctx, req, res, route.name, route.digest, signal); return
    case 'upload': await handleUpload(ctx, req, res, route.name, route.id, query); return
    case 'manifest': await handleManifest(ctx, req, res, route.name, route.reference); return
    case 'tags': await handleTags(ctx, req, res, route.name, query)
  }
}
