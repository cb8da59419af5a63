/**
 * Reaching Redis for the directory: the addresses it accepts, telling a cluster from a plain server, and a client
 * set up to fail rather than wait — no offline queue, one retry, a command timeout, reconnects in the background —
 * so that calls settle within their deadline while Redis is away.
 */
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis'
import { describeError, type Logger } from '../../base/index.js'
import { DirectoryError } from './errors.js'
import type { Seed } from './seeds.js'

export { parseSeed, parseSeeds, type Seed } from './seeds.js'

/** longest pause between two reconnect attempts */
const RECONNECT_MAX_MS = 2000

export const config = (why: string): DirectoryError => new DirectoryError('RAFSPEER_ERR_DIRECTORY_CONFIG', why)
export const unavailable = (why: string, cause?: unknown): DirectoryError =>
  new DirectoryError('RAFSPEER_ERR_DIRECTORY_UNAVAILABLE', why, cause !== undefined ? { cause } : undefined)

const auth = (s: Seed): RedisOptions => ({
  ...(s.username !== undefined ? { username: s.username } : {}),
  ...(s.password !== undefined ? { password: s.password } : {}),
  ...(s.tls ? { tls: {} } : {})
})

/** Whether the first seed that answers runs in cluster mode. */
async function probeCluster (seeds: Seed[], timeoutMs: number): Promise<boolean> {
  const failures: string[] = []
  for (const s of seeds) {
    const probe = new Redis({
      host: s.host, port: s.port, ...auth(s), lazyConnect: true, connectTimeout: timeoutMs, commandTimeout: timeoutMs,
      maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: true
    })
    probe.on('error', () => {})
    try {
      await probe.connect()
      return /^cluster_enabled:1/m.test(await probe.info('cluster'))
    } catch (err) {
      failures.push(`${s.host}:${s.port}: ${describeError(err)}`)
    } finally {
      probe.disconnect()
    }
  }
  throw unavailable(`no Redis answered: ${failures.join('; ')}`)
}

export interface ConnectOptions {
  mode: 'auto' | 'cluster' | 'standalone'
  connectTimeoutMs: number
  /** every command's timeout */
  timeoutMs: number
  /** Lua scripts to define on the client */
  scripts: ClusterOptions['scripts']
}

/** A ready client for `seeds` (within `connectTimeoutMs`), and whether it speaks to a cluster. */
export async function connectRedis (seeds: Seed[], opts: ConnectOptions, log: Logger): Promise<{ client: Redis | Cluster, cluster: boolean }> {
  const { connectTimeoutMs, mode, scripts } = opts
  const cluster = mode === 'cluster' || (mode === 'auto' && await probeCluster(seeds, connectTimeoutMs))
  if (!cluster && seeds.length > 1) throw config(`${seeds.length} Redis addresses given for one plain (non-cluster) server`)
  // fail, never wait: no offline queue, a bounded command, and reconnects in the background
  const nodeOptions: RedisOptions = {
    ...auth(seeds[0]),
    connectTimeout: Math.min(connectTimeoutMs, Math.max(opts.timeoutMs, 500)),
    commandTimeout: opts.timeoutMs,
    maxRetriesPerRequest: 1
  }
  let client: Redis | Cluster
  if (cluster) {
    const options: ClusterOptions = {
      enableAutoPipelining: true,
      enableOfflineQueue: false,
      scaleReads: 'master',
      retryDelayOnFailover: 100,
      retryDelayOnClusterDown: 100,
      retryDelayOnTryAgain: 100,
      slotsRefreshTimeout: Math.min(1000, opts.timeoutMs),
      clusterRetryStrategy: (times: number) => Math.min(100 * times, RECONNECT_MAX_MS),
      scripts,
      redisOptions: nodeOptions
    }
    client = new Cluster(seeds.map((s) => ({ host: s.host, port: s.port })), options)
  } else {
    client = new Redis({
      host: seeds[0].host,
      port: seeds[0].port,
      ...nodeOptions,
      enableAutoPipelining: true,
      enableOfflineQueue: false,
      retryStrategy: (times: number) => Math.min(100 * times, RECONNECT_MAX_MS),
      scripts
    })
  }
  let lastError = ''
  client.on('error', (err: unknown) => {
    lastError = describeError(err)
    log.debug('redis: %s', lastError)
  })
  client.on('node error', (err: unknown, node: string) => { log.debug('redis node %s: %s', node, describeError(err)) })
  try {
    await waitReady(client, connectTimeoutMs, () => lastError)
  } catch (err) {
    client.disconnect()
    throw err
  }
  return { client, cluster }
}

/** `p`, or a rejection once `ms` passed. */
export async function within<T> (p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([p, new Promise<never>((_resolve, reject) => { timer = setTimeout(() => { reject(new Error(`no answer within ${ms} ms`)) }, ms) })])
  } finally {
    clearTimeout(timer)
  }
}

async function waitReady (client: Redis | Cluster, timeoutMs: number, lastError: () => string): Promise<void> {
  if (client.status === 'ready') return
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup()
      const why = lastError()
      reject(unavailable(`Redis not ready within ${timeoutMs} ms${why !== '' ? `: ${why}` : ''}`))
    }, timeoutMs)
    const onReady = (): void => { cleanup(); resolve() }
    const onEnd = (): void => { cleanup(); reject(unavailable(`Redis connection ended: ${lastError()}`)) }
    const cleanup = (): void => {
      clearTimeout(timer)
      client.off('ready', onReady)
      client.off('end', onEnd)
    }
    client.on('ready', onReady)
    client.on('end', onEnd)
  })
}
