/**
 * Client of the daemon's admin API over its Unix socket (what `rafspeer mount`, `umount` and `status` use).
 * Server errors come back as `AdminClientError` with the server's `{ code, message }`; no daemon on the socket is
 * `RAFSPEER_ERR_NO_DAEMON`.
 *
 * @example
 * ```ts
 * const client = new AdminClient('/run/rafspeer/rafspeer.sock')
 * const info = await client.mount({ source: 'localhost:5000/app:v1-rafs', mountpoint: '/mnt/app' })
 * await client.unmount('/mnt/app')
 * ```
 */
import { request } from 'node:http'
import { RafspeerError } from '../../base/index.js'
import type { AccessList, MountInfo, MountRequest } from '../mount/index.js'
import type { DaemonInfo } from './admin-api.js'
import type { MetricsJson } from './metrics.js'

/** where a daemon's admin API listens unless its config says otherwise */
export const DEFAULT_SOCKET = '/run/rafspeer/rafspeer.sock'
/** default for quick calls */
export const DEFAULT_CLIENT_TIMEOUT_MS = 30_000
/** a mount may first download a bootstrap */
export const MOUNT_TIMEOUT_MS = 10 * 60_000

/** A call to the daemon that failed: the daemon's `{ code, message }`, or no daemon, no access, no answer. */
export class AdminClientError extends RafspeerError {
  /** the HTTP status, when the daemon answered */
  readonly status: number | undefined
  constructor (code: string, message: string, status?: number, options?: { cause?: unknown }) {
    super(code, message, options)
    this.status = status
  }
}

export interface CallOptions {
  signal?: AbortSignal
  timeoutMs?: number
}

interface Reply { status: number, type: string, body: Buffer }

export class AdminClient {
  constructor (readonly socketPath: string, private readonly init: { timeoutMs?: number } = {}) {}

  async daemon (opts?: CallOptions): Promise<DaemonInfo> {
    return await this.json('GET', '/api/v1/daemon', undefined, opts) as DaemonInfo
  }

  async mounts (opts?: CallOptions): Promise<MountInfo[]> {
    return await this.json('GET', '/api/v1/mounts', undefined, opts) as MountInfo[]
  }

  async mount (req: MountRequest, opts: CallOptions = {}): Promise<MountInfo> {
    return await this.json('POST', '/api/v1/mounts', req, { timeoutMs: MOUNT_TIMEOUT_MS, ...opts }) as MountInfo
  }

  async unmount (mountpoint: string, opts: CallOptions = {}): Promise<void> {
    await this.call('DELETE', `/api/v1/mounts?mountpoint=${encodeURIComponent(mountpoint)}`, undefined, { timeoutMs: 2 * 60_000, ...opts })
  }

  /** The files read through the mount at `mountpoint`, in first-read order. */
  async accessList (mountpoint: string, opts?: CallOptions): Promise<AccessList> {
    return await this.json('GET', `/api/v1/mounts/access?mountpoint=${encodeURIComponent(mountpoint)}`, undefined, opts) as AccessList
  }

  async metricsJson (opts?: CallOptions): Promise<MetricsJson> {
    return await this.json('GET', '/api/v1/metrics', undefined, opts) as MetricsJson
  }

  /** The Prometheus text exposition. */
  async prometheus (opts?: CallOptions): Promise<string> {
    return (await this.call('GET', '/metrics', undefined, opts)).body.toString('utf8')
  }

  private async json (method: string, path: string, body: unknown, opts?: CallOptions): Promise<unknown> {
    const reply = await this.call(method, path, body, opts)
    try {
      return JSON.parse(reply.body.toString('utf8'))
    } catch (err) {
      throw new AdminClientError('RAFSPEER_ERR_ADMIN_PROTOCOL', `${method} ${path}: the daemon sent a body that is not JSON`, reply.status, { cause: err })
    }
  }

  private async call (method: string, path: string, body: unknown, opts: CallOptions = {}): Promise<Reply> {
    const timeoutMs = opts.timeoutMs ?? this.init.timeoutMs ?? DEFAULT_CLIENT_TIMEOUT_MS
    const timeout = AbortSignal.timeout(timeoutMs)
    const signal = opts.signal !== undefined ? AbortSignal.any([opts.signal, timeout]) : timeout
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body))
    const reply = await new Promise<Reply>((resolve, reject) => {
      const req = request({
        socketPath: this.socketPath,
        path,
        method,
        agent: false,
        signal,
        headers: data === undefined ? {} : { 'content-type': 'application/json', 'content-length': String(data.length) }
      }, res => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('error', reject)
        res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body: Buffer.concat(chunks) }))
      })
      req.on('error', reject)
      req.end(data)
    }).catch((err: NodeJS.ErrnoException) => { throw this.connectionError(err, method, path, timeout, timeoutMs) })
    if (reply.status >= 400) {
      let code = 'RAFSPEER_ERR_ADMIN_HTTP'
      let message = `${method} ${path}: HTTP ${reply.status}`
      try {
        const e = JSON.parse(reply.body.toString('utf8')) as { code?: unknown, message?: unknown }
        if (typeof e.code === 'string') code = e.code
        if (typeof e.message === 'string') message = e.message
      } catch {}
      throw new AdminClientError(code, message, reply.status)
    }
    return reply
  }

  private connectionError (err: NodeJS.ErrnoException, method: string, path: string, timeout: AbortSignal, timeoutMs: number): Error {
    if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
      return new AdminClientError('RAFSPEER_ERR_NO_DAEMON',
        `no rafspeer daemon answers on ${this.socketPath}: start one with 'rafspeer daemon' (or pass --socket)`, undefined, { cause: err })
    }
    if (err.code === 'EACCES' || err.code === 'EPERM') {
      return new AdminClientError('RAFSPEER_ERR_ADMIN_ACCESS', `no permission to use the daemon's socket ${this.socketPath} (it is 0600: run as its owner, e.g. root)`, undefined, { cause: err })
    }
    if (timeout.aborted) {
      return new AdminClientError('RAFSPEER_ERR_ADMIN_TIMEOUT', `${method} ${path}: no answer from the daemon within ${timeoutMs} ms`, undefined, { cause: err })
    }
    if (err.name === 'AbortError') return new AdminClientError('RAFSPEER_ERR_ABORTED', `${method} ${path}: aborted`, undefined, { cause: err })
    return new AdminClientError('RAFSPEER_ERR_ADMIN_CONNECTION', `${method} ${path} on ${this.socketPath}: ${err.message}`, undefined, { cause: err })
  }
}
