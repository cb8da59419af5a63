/**
 * How the CLI assembles a node's mount service from a validated daemon config: the mount manager over the blob
 * cache with the fuse-native backend and, when P2P is on, the node's libp2p host, chunk server, scheduler side and
 * neighbour source in front of the registry. The only place that knows both the config shape and the components.
 */
import type { BlobCache } from '../cache/index.js'
import type { CreateMounts, ManagedMountService } from '../peer/daemon.js'
import type { DaemonConfig } from '../peer/daemon-config.js'
import { FuseNativeBackend } from '../peer/fuse-backend.js'
import type { DaemonLogger } from '../peer/logger.js'
import type { MountInfo, MountRequest, MountStats } from '../peer/mount-types.js'
import { MountManager } from '../peer/mounts.js'
import { P2PNode, type P2PStats } from '../peer/p2p-node.js'
import { RateLimiter } from '../peer/rate-limiter.js'

export const createMounts: CreateMounts = async (cache, config, logger) => {
  const p2p = config.p2p.enabled ? await startP2P(cache, config, logger) : undefined
  const mounts = mountManager(cache, config, logger, p2p)
  return p2p === undefined ? mounts : new SwarmMounts(mounts, p2p)
}

async function startP2P (cache: BlobCache, config: DaemonConfig, logger: DaemonLogger): Promise<P2PNode> {
  const { p2p, scheduler } = config
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
    scheduler: {
      ...(scheduler.address !== undefined ? { address: scheduler.address } : {}),
      embedded: scheduler.embedded,
      zone: scheduler.zone,
      resolveTimeoutMs: scheduler.resolveTimeoutMs,
      heartbeatMs: scheduler.heartbeatMs
    }
  })
  logger.forComponent('rafspeer:p2p')('peer %s listening on %s%s', node.peerId, node.multiaddrs.join(' '),
    scheduler.embedded ? ' (embedded scheduler)' : scheduler.address !== undefined ? `, scheduler ${scheduler.address}` : ', no scheduler: serving only')
  return node
}

function mountManager (cache: BlobCache, config: DaemonConfig, logger: DaemonLogger, p2p: P2PNode | undefined): MountManager {
  const download = config.fetch.downloadBytesPerSecond > 0 ? new RateLimiter(config.fetch.downloadBytesPerSecond) : undefined
  return new MountManager({
    cache,
    fuse: new FuseNativeBackend({ logger }),
    logger,
    ...(p2p !== undefined ? { extraSources: [p2p.source] } : {})
  }, {
    workDir: config.workDir,
    fetch: {
      amplifyBytes: config.fetch.amplifyBytes,
      concurrency: config.fetch.concurrency,
      timeoutMs: config.fetch.timeoutMs,
      retries: config.fetch.retries,
      deadlineMs: config.fetch.deadlineMs,
      ...(download !== undefined ? { downloadLimiter: download } : {})
    },
    prefetch: {
      policy: config.prefetch.policy,
      ...(config.prefetch.bandwidthBytesPerSecond > 0 ? { bandwidthBytesPerSecond: config.prefetch.bandwidthBytesPerSecond } : {})
    },
    readaheadBytes: config.fetch.readaheadBytes,
    defaultMode: config.mount.defaultMode,
    fuse: {
      kernelCache: config.fuse.kernelCache,
      entryTimeoutS: config.fuse.entryTimeoutS,
      attrTimeoutS: config.fuse.attrTimeoutS,
      allowOther: config.fuse.allowOther,
      // the FUSE layer's safety net sits past the fetch deadline, so a stalled read ends as the fetcher's EIO first
      opTimeoutMs: config.fetch.deadlineMs + 5_000
    },
    plainHttp: config.registry.plainHttp
  })
}

/** The mount manager of a swarm node: stored chunks are announced, and stopping leaves the swarm last. */
class SwarmMounts implements ManagedMountService {
  constructor (private readonly mounts: MountManager, private readonly node: P2PNode) {}
  async mount (req: MountRequest, opts?: { signal?: AbortSignal }): Promise<MountInfo> { return await this.mounts.mount(req, opts) }
  async unmount (mountpoint: string): Promise<void> { await this.mounts.unmount(mountpoint) }
  list (): MountInfo[] { return this.mounts.list() }
  stats (): MountStats[] { return this.mounts.stats() }
  drainFetchSamples (): ReturnType<MountManager['drainFetchSamples']> { return this.mounts.drainFetchSamples() }
  onChunksStored (digests: Buffer[]): void { this.node.onChunksStored(digests) }
  p2pInfo (): { peerId: string, addrs: string[] } { return { peerId: this.node.peerId, addrs: this.node.multiaddrs } }
  p2pStats (): P2PStats { return this.node.stats() }
  async stop (): Promise<void> {
    try {
      await this.mounts.stop()
    } finally {
      await this.node.stop()
    }
  }
}
