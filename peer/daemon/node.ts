/**
 * The composition root of a node: from a validated config, the blob cache, the swarm side (libp2p host, chunk
 * server, scheduler client or embedded scheduler, neighbour source) when P2P is on, and the mount manager over
 * both. The one place that knows the config's shape and every component, and the one place they are wired
 * together: chunks the cache stores are announced to the swarm here, and neighbours are put before the registry
 * here. Stopping goes the other way: mounts, then the swarm, then the cache.
 *
 * @example
 * ```ts
 * const node = await startNode(await loadDaemonConfig('/etc/rafspeer/config.json'), createLogger())
 * await node.mounts.mount({ source: 'registry.local/app:v1-rafs', mountpoint: '/mnt/app' })
 * await node.stop()
 * ```
 */
import type { Registry } from 'prom-client'
import { RateLimiter, type ComponentLogger } from '../../base/index.js'
import { BlobCache, type CacheStats } from '../../cache/index.js'
import { P2PNode, type P2PStats } from '../exchange/index.js'
import { FuseNativeBackend, MountManager, type MountService } from '../mount/index.js'
import type { DaemonConfig } from './config.js'
import { startRedisScheduler, type RedisScheduler } from './redis-scheduler.js'

/**
 * What a use of the node built on top of it (the registry mirror) adds to the daemon: its series in `/metrics`,
 * its part of `/api/v1/metrics` and of `/api/v1/daemon`, under `name`.
 */
export interface DaemonExtension {
  readonly name: string
  /** registers prom-client collectors on the daemon's registry */
  registerMetrics?: (registry: Registry) => void
  metricsJson?: () => unknown
  info?: () => unknown
}

/** What a daemon serves: a node's mounts, its cache's numbers, its place in the swarm. */
export interface DaemonNode {
  /** what uses of the node on top of it add to the daemon's API and metrics */
  extensions?: DaemonExtension[]
  readonly mounts: MountService
  cacheStats: () => CacheStats
  /** the node's peer identity, listen addresses and swarm counters, when it takes part in P2P */
  p2p?: { info: () => { peerId: string, addrs: string[] }, stats: () => P2PStats }
  /** unmounts everything, leaves the swarm, flushes and closes the cache */
  stop: () => Promise<void>
}

/** A running node: the components themselves, for those who need more than the daemon's view. */
export interface Node extends DaemonNode {
  readonly cache: BlobCache
  readonly mounts: MountManager
  readonly swarm: P2PNode | undefined
}

/** Opens the cache and starts the node's components; leaves nothing open when it rejects. */
export async function startNode (config: DaemonConfig, logger: ComponentLogger): Promise<Node> {
  const cache = await BlobCache.open(config.cache.dir, { ...(config.cache.capBytes > 0 ? { capBytes: config.cache.capBytes } : {}), logger })
  let swarm: P2PNode | undefined
  let onRedis: RedisScheduler | undefined
  try {
    if (config.p2p.enabled) {
      const { redis, embedded } = config.scheduler
      if (embedded && redis !== undefined) onRedis = await startRedisScheduler(redis, logger)
      swarm = await startSwarm(cache, config, logger, onRedis)
      await onRedis?.serveOn(swarm.host)
      const node = swarm
      // what the cache holds from now on, the swarm hears of (and neighbours waiting for it wake up)
      cache.events.on('stored', digests => { node.onChunksStored(digests) })
    }
    const mounts = mountManager(cache, config, logger, swarm)
    const node: Node = {
      cache,
      mounts,
      swarm,
      cacheStats: () => cache.stats(),
      ...(swarm !== undefined
        ? { p2p: { info: () => ({ peerId: swarm!.peerId, addrs: swarm!.multiaddrs }), stats: () => swarmStats(swarm!, onRedis) } }
        : {}),
      stop: async () => {
        const errors: unknown[] = []
        // the swarm's client says LEAVE to the loopback scheduler on Redis, so that one stops after it
        for (const step of [async () => { await mounts.stop() }, async () => { await swarm?.stop() }, async () => { await onRedis?.stop() }, async () => { await cache.close() }]) {
          try { await step() } catch (err) { errors.push(err) }
        }
        if (errors.length > 0) throw errors[0]
      }
    }
    return node
  } catch (err) {
    await swarm?.stop().catch(() => {})
    await onRedis?.stop().catch(() => {})
    await cache.close().catch(() => {})
    throw err
  }
}

/** The swarm's numbers; a node whose embedded scheduler is on Redis reaches it over loopback but says embedded. */
function swarmStats (swarm: P2PNode, onRedis: RedisScheduler | undefined): P2PStats {
  const stats = swarm.stats()
  return onRedis === undefined ? stats : { ...stats, scheduler: { embedded: true, connected: stats.scheduler.connected } }
}

async function startSwarm (cache: BlobCache, config: DaemonConfig, logger: ComponentLogger, onRedis: RedisScheduler | undefined): Promise<P2PNode> {
  const { p2p, scheduler } = config
  // an embedded scheduler on Redis is used like any other, through the protocol (see redis-scheduler.ts)
  const address = onRedis !== undefined ? [onRedis.address] : scheduler.address
  const node = await P2PNode.start({ cache, logger }, {
    listen: [...p2p.listen],
    keyFile: p2p.keyFile,
    maxConcurrentUploads: p2p.maxConcurrentUploads,
    uploadBytesPerSecond: p2p.uploadBytesPerSecond,
    maxHolders: p2p.maxHolders,
    hedgeAfterMs: p2p.hedgeAfterMs,
    requestTimeoutMs: p2p.requestTimeoutMs,
    banThreshold: p2p.banThreshold,
    claimWaitMs: p2p.claimWaitMs,
    directory: p2p.directory,
    ...(p2p.maxUploadsPerPeer !== undefined ? { maxUploadsPerPeer: p2p.maxUploadsPerPeer } : {}),
    ...(p2p.maxUrgentUploads !== undefined ? { maxUrgentUploads: p2p.maxUrgentUploads } : {}),
    maxConnections: p2p.maxConnections,
    ...(p2p.maxConnectionsPerIp !== undefined ? { maxConnectionsPerIp: p2p.maxConnectionsPerIp } : {}),
    idleConnectionMs: p2p.idleConnectionMs,
    scheduler: {
      ...(address !== undefined ? { address } : {}),
      embedded: scheduler.embedded && onRedis === undefined,
      zone: scheduler.zone,
      resolveTimeoutMs: scheduler.resolveTimeoutMs,
      heartbeatMs: scheduler.heartbeatMs
    }
  })
  logger.forComponent('rafspeer:p2p').info('peer %s listening on %s%s', node.peerId, node.multiaddrs.join(' '),
    onRedis !== undefined
      ? ` (embedded scheduler, directory on Redis ${scheduler.redis?.join(' ')})`
      : scheduler.embedded ? ' (embedded scheduler)' : address !== undefined ? `, scheduler ${address.join(' or ')}` : ', no scheduler: serving only')
  return node
}

function mountManager (cache: BlobCache, config: DaemonConfig, logger: ComponentLogger, swarm: P2PNode | undefined): MountManager {
  const download = config.fetch.downloadBytesPerSecond > 0 ? new RateLimiter(config.fetch.downloadBytesPerSecond) : undefined
  return new MountManager({
    cache,
    fuse: new FuseNativeBackend({ logger }),
    logger,
    // neighbours before the image's own source (the registry)
    ...(swarm !== undefined ? { extraSources: [swarm.source] } : {}),
    ...(swarm?.fetchActivity !== undefined ? { fetchActivity: swarm.fetchActivity } : {}),
    ...(swarm?.prefetchAdvisor !== undefined ? { prefetchAdvisor: swarm.prefetchAdvisor } : {})
  }, {
    workDir: config.workDir,
    fetch: {
      amplifyBytes: config.fetch.amplifyBytes,
      concurrency: config.fetch.concurrency,
      timeoutMs: config.fetch.timeoutMs,
      retries: config.fetch.retries,
      deadlineMs: config.fetch.deadlineMs,
      ...(config.fetch.readHandOffMs !== undefined ? { readHandOffMs: config.fetch.readHandOffMs } : {}),
      ...(download !== undefined ? { downloadLimiter: download } : {})
    },
    prefetch: {
      policy: config.prefetch.policy,
      ...(config.prefetch.bandwidthBytesPerSecond > 0 ? { bandwidthBytesPerSecond: config.prefetch.bandwidthBytesPerSecond } : {})
    },
    readaheadBytes: config.fetch.readaheadBytes,
    defaultMode: config.mount.defaultMode,
    directRead: config.mount.directRead,
    fuse: {
      kernelCache: config.fuse.kernelCache,
      entryTimeoutS: config.fuse.entryTimeoutS,
      attrTimeoutS: config.fuse.attrTimeoutS,
      allowOther: config.fuse.allowOther,
      // fuse-native's guard sits past the read deadline: a stalled read ends as the fetcher's EIO first
      opTimeoutMs: config.fetch.deadlineMs + 5_000
    },
    lazyKernel: { threads: config.lazyKernel.threads, maxReadBytes: config.lazyKernel.maxReadBytes, directIo: config.lazyKernel.directIo },
    plainHttp: config.registry.plainHttp
  })
}
