/**
 * How the CLI assembles a node's mount service from a validated daemon config: the mount manager over the blob
 * cache, with the fuse-native backend. The only place that knows both the config shape and the components.
 */
import { FuseNativeBackend } from '../peer/fuse-backend.js'
import type { CreateMounts } from '../peer/daemon.js'
import { MountManager } from '../peer/mounts.js'

export const createMounts: CreateMounts = (cache, config, logger) => new MountManager({
  cache,
  fuse: new FuseNativeBackend({ logger }),
  logger
}, {
  workDir: config.workDir,
  fetch: {
    amplifyBytes: config.fetch.amplifyBytes,
    concurrency: config.fetch.concurrency,
    timeoutMs: config.fetch.timeoutMs,
    retries: config.fetch.retries,
    deadlineMs: config.fetch.deadlineMs
  },
  prefetch: {
    policy: config.prefetch.policy,
    ...(config.prefetch.bandwidthBytesPerSecond > 0 ? { bandwidthBytesPerSecond: config.prefetch.bandwidthBytesPerSecond } : {})
  },
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
