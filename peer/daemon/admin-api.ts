/**
 * The daemon's admin API: HTTP over a Unix socket (mode 0600), and optionally a TCP address serving only
 * `GET /metrics` for Prometheus. Route names follow nydusd's (`/api/v1/daemon`, `/api/v1/metrics`); errors are
 * JSON `{ code, message }` with an HTTP status.
 *
 * | route | |
 * |---|---|
 * | `GET /api/v1/daemon` | `DaemonInfo` |
 * | `GET /api/v1/mounts` | `MountInfo[]` |
 * | `POST /api/v1/mounts` | body `MountRequest` → 201 `MountInfo` |
 * | `DELETE /api/v1/mounts?mountpoint=/abs/path` | 204 |
 * | `GET /api/v1/mounts/access?mountpoint=/abs/path` | `AccessList`: the files read, in first-read order |
 * | `GET /api/v1/metrics` | `MetricsJson` |
 * | `GET /metrics` | Prometheus text |
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { chmod, unlink } from 'node:fs/promises'
import { isAbsolute, normalize } from 'node:path'
import { z } from 'zod'
import { RafspeerError, claimUnixSocket, headDeadlines, parseHostPort, silentLogger, type ComponentLogger } from '../../base/index.js'
import type { CacheStats } from '../../cache/index.js'
import type { MountRequest, MountService } from '../mount/index.js'
import type { DaemonMetrics } from './metrics.js'

/** largest request body read (a mount request is a few hundred bytes) */
export const MAX_BODY_BYTES = 1 << 20
/** past this, an oversized body is no longer drained politely: the connection is dropped */
const MAX_DRAIN_BYTES = 16 << 20
/** in-flight requests get this long to finish when the API closes */
const CLOSE_GRACE_MS = 2000
/** a client must send its request line and headers within this (a slowloris socket is answered 408 and closed) */
export const DEFAULT_HEADERS_TIMEOUT_MS = 10_000
/**
 * a client must send its whole request, body included, within this; a mount request is a few hundred bytes. It
 * ends once the request is in: a mount that takes minutes to answer is not cut.
 */
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000

export type DaemonState = 'RUNNING' | 'STOPPING'

export interface DaemonInfo {
  state: DaemonState
  /** the rafspeer package version */
  version: string
  pid: number
  startedAt: string
  socket: string
  workDir: string
  cacheDir: string
  /** the TCP address of `/metrics`, when one is served */
  metricsListen?: string
  mounts: number
  /** the node's libp2p identity and listen addresses, when P2P is on */
  p2p?: { peerId: string, addrs: string[] }
  /** what uses of the node add (`proxy`: the registry mirror's address) */
  [extension: string]: unknown
}

export interface ApiErrorBody { code: string, message: string }

/** An admin API request that cannot be done, with the HTTP status it is answered with. */
export class AdminApiError extends RafspeerError {
  readonly status: number
  constructor (code: string, message: string, status = statusOf(code), options?: { cause?: unknown }) {
    super(code, message, options)
    this.status = status
  }
}

const STATUS: Record<string, number> = {
  RAFSPEER_ERR_BAD_REQUEST: 400,
  RAFSPEER_ERR_INVALID_REFERENCE: 400,
  RAFSPEER_ERR_NOT_FOUND: 404,
  RAFSPEER_ERR_NOT_MOUNTED: 404,
  RAFSPEER_ERR_METHOD_NOT_ALLOWED: 405,
  RAFSPEER_ERR_ALREADY_MOUNTED: 409,
  RAFSPEER_ERR_MOUNT_BUSY: 409,
  RAFSPEER_ERR_BODY_TOO_LARGE: 413,
  RAFSPEER_ERR_DAEMON_STOPPING: 503
}

/** The HTTP status for an error `code` (500 when not in the table). */
export function statusOf (code: unknown): number {
  return typeof code === 'string' ? STATUS[code] ?? 500 : 500
}

const absPath = z.string().min(1).refine(isAbsolute, { error: 'must be an absolute path' })

/** The body of `POST /api/v1/mounts`; unknown keys are refused so that typos do not pass silently. */
export const mountRequestSchema = z.strictObject({
  source: z.string().min(1, { error: 'must not be empty' }),
  mountpoint: absPath.transform(p => normalize(p)),
  mode: z.enum(['auto', 'erofs-lazy', 'fuse', 'kernel']).optional(),
  prefetch: z.union([
    z.enum(['all', 'none', 'table']),
    z.strictObject({ file: absPath }),
    z.strictObject({ paths: z.array(z.string()) })
  ], { error: 'expected "all", "none", "table", { "file": "/abs/path" } or { "paths": [...] }' }).optional(),
  blobDir: absPath.optional(),
  plainHttp: z.union([z.boolean(), z.literal('auto')], { error: 'expected true, false or "auto"' }).optional(),
  credentials: z.strictObject({ username: z.string().min(1).max(4096), password: z.string().max(65536) }).optional()
})

/** Validates a mount request; throws RAFSPEER_ERR_BAD_REQUEST naming every problem. */
export function parseMountRequest (body: unknown): MountRequest {
  const r = mountRequestSchema.safeParse(body)
  if (r.success) {
    // absent optional keys stay absent (exactOptionalPropertyTypes-friendly)
    return Object.fromEntries(Object.entries(r.data).filter(([, v]) => v !== undefined)) as unknown as MountRequest
  }
  const problems = r.error.issues.flatMap(i => i.code === 'unrecognized_keys'
    ? i.keys.map(k => `${[...i.path, k].join('.')}: unknown key`)
    : [`${i.path.length === 0 ? 'body' : i.path.join('.')}: ${i.message}`])
  throw new AdminApiError('RAFSPEER_ERR_BAD_REQUEST', `bad mount request: ${problems.join('; ')}`)
}

export interface AdminApiComponents {
  service: MountService
  cacheStats: () => CacheStats
  daemonInfo: () => DaemonInfo
  metrics: DaemonMetrics
  logger?: ComponentLogger
}

export interface AdminApiInit {
  /** the Unix socket path */
  socket: string
  /** `host:port` of a TCP listener serving only `GET /metrics` */
  tcp?: string
  /** request line and headers must arrive within this (default 10 s); both listeners */
  headersTimeoutMs?: number
  /** the whole request must arrive within this (default 30 s); the answer may take longer */
  requestTimeoutMs?: number
}

export interface AdminApi {
  readonly socket: string
  /** the bound TCP address (`host:port`, the real port when 0 was asked), when one was asked for */
  readonly tcpAddress: string | undefined
  /** Stops accepting, aborts pending mounts, lets other requests finish (briefly), removes the socket. */
  close: () => Promise<void>
}

type Handler = (req: IncomingMessage, url: URL, signal: AbortSignal) => Promise<{ status: number, body?: unknown, text?: string, type?: string }>

async function readBody (req: IncomingMessage): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? NaN)
  if (declared > MAX_DRAIN_BYTES) throw tooLarge(true)
  const chunks: Buffer[] = []
  let total = 0
  for await (const chunk of req as AsyncIterable<Buffer>) {
    total += chunk.length
    if (total > MAX_DRAIN_BYTES) throw tooLarge(true)
    if (total <= MAX_BODY_BYTES) chunks.push(chunk)
  }
  // drained to the end, so the client reads our answer instead of a reset
  if (total > MAX_BODY_BYTES) throw tooLarge(false)
  return Buffer.concat(chunks)
}

function tooLarge (drop: boolean): AdminApiError {
  const err = new AdminApiError('RAFSPEER_ERR_BODY_TOO_LARGE', `request body over ${MAX_BODY_BYTES} bytes`)
  if (drop) (err as { drop?: boolean }).drop = true
  return err
}

async function readJson (req: IncomingMessage): Promise<unknown> {
  const body = await readBody(req)
  try {
    return JSON.parse(body.toString('utf8'))
  } catch (err) {
    throw new AdminApiError('RAFSPEER_ERR_BAD_REQUEST', `request body is not JSON: ${(err as Error).message}`)
  }
}

function send (res: ServerResponse, status: number, payload: { body?: unknown, text?: string, type?: string }, close = false): void {
  if (res.headersSent || res.destroyed) return
  const headers: Record<string, string> = {}
  if (close) headers.connection = 'close'
  if (status === 204) { res.writeHead(204, headers).end(); return }
  const data = payload.text ?? JSON.stringify(payload.body) + '\n'
  headers['content-type'] = payload.type ?? 'application/json; charset=utf-8'
  headers['content-length'] = String(Buffer.byteLength(data))
  res.writeHead(status, headers).end(data)
}

/**
 * mkdir -p the socket's directory; remove a socket file nobody answers on; refuse a live one (code
 * RAFSPEER_ERR_DAEMON_RUNNING) or a file that is not a socket. `startAdminApi` does this itself; a daemon calls it
 * early too, to refuse before it opens anything.
 */
export async function prepareSocket (path: string): Promise<void> {
  await claimUnixSocket(path, p => {
    switch (p.kind) {
      case 'mkdir': return new AdminApiError('RAFSPEER_ERR_SOCKET', `cannot create the directory of the admin socket ${path}: ${p.detail} (choose another with --socket)`, 500, { cause: p.cause })
      case 'live': return new AdminApiError('RAFSPEER_ERR_DAEMON_RUNNING',
        `another rafspeer daemon is listening on ${path}: stop it (or see 'rafspeer status --socket ${path}') or choose another --socket`)
      case 'unknown': return new AdminApiError('RAFSPEER_ERR_SOCKET_IN_USE', `cannot tell whether a daemon listens on ${path} (${p.detail})`)
      case 'not-socket': return new AdminApiError('RAFSPEER_ERR_SOCKET_IN_USE', p.detail)
      default: return (p.cause as Error | undefined) ?? new AdminApiError('RAFSPEER_ERR_SOCKET', p.detail)
    }
  })
}

async function listen (server: Server, ...args: [string] | [number, string]): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    const done = (): void => { server.off('error', reject); resolve() }
    if (args.length === 1) server.listen(args[0], done)
    else server.listen(args[0], args[1], done)
  })
}

/** Starts the API; rejects with RAFSPEER_ERR_DAEMON_RUNNING when another daemon answers on `socket`. */
export async function startAdminApi (components: AdminApiComponents, init: AdminApiInit): Promise<AdminApi> {
  const { service, metrics, daemonInfo } = components
  const log = (components.logger ?? silentLogger).forComponent('rafspeer:admin-api')
  const shutdown = new AbortController()

  const prometheus: Handler = async () => ({ status: 200, text: await metrics.prometheus(), type: metrics.contentType })
  const routes: Record<string, Partial<Record<string, Handler>>> = {
    '/api/v1/daemon': { GET: async () => ({ status: 200, body: daemonInfo() }) },
    '/api/v1/mounts': {
      GET: async () => ({ status: 200, body: service.list() }),
      POST: async (req, _url, signal) => {
        const mountReq = parseMountRequest(await readJson(req))
        if (daemonInfo().state !== 'RUNNING') throw new AdminApiError('RAFSPEER_ERR_DAEMON_STOPPING', 'the daemon is stopping')
        log.info('mount %s at %s (mode %s)', mountReq.source, mountReq.mountpoint, mountReq.mode ?? 'default')
        const info = await service.mount(mountReq, { signal })
        log.info('mounted %s at %s (%s)', info.source, info.mountpoint, info.mode)
        return { status: 201, body: info }
      },
      DELETE: async (_req, url) => {
        const mp = url.searchParams.get('mountpoint')
        if (mp === null || mp === '') throw new AdminApiError('RAFSPEER_ERR_BAD_REQUEST', 'missing ?mountpoint=/abs/path')
        if (!isAbsolute(mp)) throw new AdminApiError('RAFSPEER_ERR_BAD_REQUEST', `mountpoint ${mp}: must be an absolute path`)
        await service.unmount(normalize(mp))
        log.info('unmounted %s', mp)
        return { status: 204 }
      }
    },
    '/api/v1/mounts/access': {
      // nydusd's /api/v1/metrics/pattern, as paths: what `convert --prefetch-files` takes back
      GET: async (_req, url) => {
        const mp = url.searchParams.get('mountpoint')
        if (mp === null || mp === '') throw new AdminApiError('RAFSPEER_ERR_BAD_REQUEST', 'missing ?mountpoint=/abs/path')
        if (!isAbsolute(mp)) throw new AdminApiError('RAFSPEER_ERR_BAD_REQUEST', `mountpoint ${mp}: must be an absolute path`)
        if (service.accessList === undefined) throw new AdminApiError('RAFSPEER_ERR_NOT_FOUND', 'this daemon records no access lists')
        return { status: 200, body: service.accessList(normalize(mp)) }
      }
    },
    '/api/v1/metrics': { GET: async () => ({ status: 200, body: metrics.json() }) },
    '/metrics': { GET: prometheus }
  }

  const handle = (table: typeof routes) => (req: IncomingMessage, res: ServerResponse): void => {
    const ctrl = new AbortController()
    res.on('close', () => { if (!res.writableFinished) ctrl.abort(new AdminApiError('RAFSPEER_ERR_ABORTED', 'the client went away')) })
    const signal = AbortSignal.any([ctrl.signal, shutdown.signal])
    const run = async (): Promise<void> => {
      const url = new URL(req.url ?? '/', 'http://rafspeer')
      const methods = table[url.pathname]
      if (methods === undefined) throw new AdminApiError('RAFSPEER_ERR_NOT_FOUND', `no route ${url.pathname}`)
      const handler = methods[req.method ?? '']
      if (handler === undefined) {
        res.setHeader('allow', Object.keys(methods).join(', '))
        throw new AdminApiError('RAFSPEER_ERR_METHOD_NOT_ALLOWED', `${req.method ?? '?'} not allowed on ${url.pathname} (allowed: ${Object.keys(methods).join(', ')})`)
      }
      const out = await handler(req, url, signal)
      send(res, out.status, out)
    }
    run().catch((err: unknown) => {
      const e = err as { code?: unknown, message?: unknown, status?: unknown, drop?: boolean }
      const status = typeof e.status === 'number' ? e.status : statusOf(e.code)
      const body: ApiErrorBody = {
        code: typeof e.code === 'string' && e.code.startsWith('RAFSPEER_ERR_') ? e.code : 'RAFSPEER_ERR_INTERNAL',
        message: typeof e.message === 'string' ? e.message : String(err)
      }
      if (status >= 500) log.error('%s %s failed: %s', req.method, req.url, body.message)
      // a body we stopped reading leaves the connection unusable
      const close = e.drop === true || !req.complete
      send(res, status, { body }, close)
      if (e.drop === true) res.once('finish', () => req.destroy())
    })
  }

  const headersTimeout = init.headersTimeoutMs ?? DEFAULT_HEADERS_TIMEOUT_MS
  const serverOptions = headDeadlines(headersTimeout, init.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS)
  // No idle timeout (`server.timeout`): a mount's answer can take minutes, and closing its socket would abort it.
  const server = createServer(serverOptions, handle(routes))
  try {
    await prepareSocket(init.socket)
    await listen(server, init.socket)
    await chmod(init.socket, 0o600)
  } catch (err) {
    if (server.listening) await new Promise(resolve => server.close(resolve))
    if (err instanceof AdminApiError) throw err
    throw new AdminApiError('RAFSPEER_ERR_SOCKET', `cannot serve the admin API on ${init.socket}: ${(err as Error).message} (choose another with --socket)`, 500, { cause: err })
  }

  let tcpServer: Server | undefined
  let tcpAddress: string | undefined
  if (init.tcp !== undefined) {
    const hp = parseHostPort(init.tcp)
    if (hp === undefined) throw new AdminApiError('RAFSPEER_ERR_BAD_REQUEST', `metrics listen address ${init.tcp}: expected host:port`)
    tcpServer = createServer(serverOptions, handle({ '/metrics': { GET: prometheus } }))
    try {
      await listen(tcpServer, hp.port, hp.host)
    } catch (err) {
      await new Promise(resolve => server.close(resolve))
      await unlink(init.socket).catch(() => {})
      throw new AdminApiError('RAFSPEER_ERR_METRICS_LISTEN', `cannot serve /metrics on ${init.tcp}: ${(err as Error).message}`, 500, { cause: err })
    }
    const a = tcpServer.address()
    tcpAddress = a !== null && typeof a === 'object' ? (a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`) : init.tcp
  }

  let closing: Promise<void> | undefined
  const closeServer = async (s: Server): Promise<void> => {
    const closed = new Promise<void>(resolve => s.close(() => resolve()))
    s.closeIdleConnections()
    const timer = setTimeout(() => s.closeAllConnections(), CLOSE_GRACE_MS)
    await closed
    clearTimeout(timer)
  }
  return {
    socket: init.socket,
    tcpAddress,
    close: async () => {
      closing ??= (async () => {
        shutdown.abort(new AdminApiError('RAFSPEER_ERR_DAEMON_STOPPING', 'the daemon is stopping'))
        await Promise.all([closeServer(server), tcpServer !== undefined ? closeServer(tcpServer) : undefined])
        await unlink(init.socket).catch(() => {})
      })()
      await closing
    }
  }
}
