/**
 * @packageDocumentation
 * The containerd remote snapshotter: containers start from RAFS images before the images are downloaded.
 * containerd reaches it as a proxy plugin (`[proxy_plugins.rafspeer] type = "snapshot"`) over
 * `containerd.services.snapshots.v1.Snapshots` on a Unix socket (`grpc-service.ts`). The store (`snapshots.ts`,
 * metadata in LevelDB: `metadata.ts`, list filters: `filters.ts`) has the semantics of containerd's overlayfs
 * snapshotter, so ordinary OCI images work through it too; RAFS layers plug in through `RemoteLayers`
 * (`rafs-layers.ts`): claimed at pull (containerd downloads no blob), and one lazy mount of the image through the
 * node's mount manager under every container on it. The CRI client that pulls for it (`rafspeer rpull`: only a
 * CRI pull gives the snapshotter the labels it needs) is its own room, `cri/`; `containerd-config.ts` writes
 * containerd's config for it.
 *
 * @example
 * ```ts
 * import { withSnapshotter } from './snapshotter/index.js'
 * await runDaemon(await loadDaemonConfig(undefined, { snapshotter: { address: '/run/rafspeer/snapshotter.sock' } }), { assemble: withSnapshotter() })
 * ```
 */
import { join } from 'node:path'
import { createLogger, describeError, type ComponentLogger } from '../base/index.js'
// the node is loaded when a snapshotter starts, not with this face: `rafspeer rpull` (a CRI client) stays quick
import type { AssembleNode, DaemonConfig, DaemonNode } from '../peer/index.js'
import { RafsLayers, daemonMounter, type ImageMounter } from './rafs-layers.js'
import { CriCredentials, startCriProxy, type CriProxy } from './cri-proxy.js'
import { Snapshots } from './snapshots.js'
import { startSnapshotService } from './grpc-service.js'
import { SnapshotterError } from './errors.js'

export * from './types.js'
export { SnapshotterError, type SnapshotterErrorCode } from './errors.js'
export { Snapshots, type SnapshotStore, type SnapshotsComponents, type SnapshotsInit } from './snapshots.js'
export { startSnapshotService, DEFAULT_SNAPSHOTTER_SOCKET, type SnapshotService, type SnapshotServiceInit } from './grpc-service.js'
export { RafsLayers, daemonMounter, imageOf, type ImageMounter, type LayerImage, type RafsLayersInit } from './rafs-layers.js'
export { CriCredentials, startCriProxy, type CriProxy, type CriProxyInit } from './cri-proxy.js'
export {
  renderSnapshotterConfig, writeSnapshotterConfig, unwriteSnapshotterConfig, ContainerdConfigError, DEFAULT_SNAPSHOTTER_NAME
} from './containerd-config.js'

/**
 * A daemon assembly with the snapshotter: the node (`base`, default the composition root `startNode`, or another
 * assembly such as the mirror's), then, when `snapshotter.address` is set, the snapshot store over the node's
 * mount manager and its gRPC service. Stopping stops the service, then the image mounts, then the node.
 */
export function withSnapshotter (base?: (config: DaemonConfig, logger: ComponentLogger) => Promise<DaemonNode>): AssembleNode {
  return async (config: DaemonConfig, logger: ComponentLogger): Promise<DaemonNode> => {
    const node = await (base ?? (await import('../peer/index.js')).startNode)(config, logger)
    const address = config.snapshotter.address
    if (address === undefined) return node
    let s: RunningSnapshotter
    try {
      s = await startSnapshotter(config, node.mounts, logger)
    } catch (err) {
      await node.stop().catch(() => {})
      throw err
    }
    return {
      ...node,
      extensions: [...(node.extensions ?? []), { name: 'snapshotter', info: s.info }],
      stop: async () => {
        let first: unknown
        for (const step of [async () => { await s.stop() }, async () => { await node.stop() }]) {
          try { await step() } catch (err) { first ??= err }
        }
        if (first !== undefined) throw first
      }
    }
  }
}

export interface RunningSnapshotter {
  address: string
  info: () => { address: string, root: string, images: ReturnType<RafsLayers['list']>, daemonSocket?: string, imageService?: string, pullCredentials?: number }
  /** stops serving; the image mounts end too unless a separate daemon serves them (`snapshotter.daemonSocket`) */
  stop: () => Promise<void>
}

const layersInit = (config: DaemonConfig): ConstructorParameters<typeof RafsLayers>[1] => ({
  dir: join(config.snapshotter.root, 'images'),
  mode: config.snapshotter.mode,
  plainHttp: config.registry.plainHttp,
  idleUnmountMs: config.snapshotter.idleUnmountMs
})

/**
 * The store over image mounts from `mounts`, its held mounts taken up again, the gRPC service on
 * `snapshotter.address` and, with `snapshotter.imageServiceAddress`, the CRI image service whose pulls' credentials
 * the mounts use.
 */
async function startSnapshotter (config: DaemonConfig, mounts: ImageMounter, logger: ComponentLogger, daemonSocket?: string): Promise<RunningSnapshotter> {
  const address = config.snapshotter.address
  if (address === undefined) throw new Error('snapshotter.address is not set')
  const log = logger.forComponent('rafspeer:snapshotter')
  const keepMounts = daemonSocket !== undefined
  const credentials = new CriCredentials()
  const layers = new RafsLayers({ mounts, logger, credentials: source => credentials.lookup(source) }, layersInit(config))
  let snapshots: Snapshots | undefined
  let service: Awaited<ReturnType<typeof startSnapshotService>> | undefined
  let images: CriProxy | undefined
  try {
    snapshots = new Snapshots({ logger, remote: layers }, { root: config.snapshotter.root })
    await snapshots.start()
    await layers.sweep().catch((err: unknown) => { log.warn('looking for unheld image mounts: %s', describeError(err)) })
    service = await startSnapshotService({ snapshots, logger }, { address })
    const imageAddress = config.snapshotter.imageServiceAddress
    if (imageAddress !== undefined) images = await startCriProxy({ credentials, logger }, { address: imageAddress, containerd: config.snapshotter.containerdAddress })
  } catch (err) {
    await service?.stop().catch(() => {})
    await snapshots?.stop().catch(() => {})
    await layers.stop({ keepMounts }).catch(() => {})
    throw err
  }
  log.info('containerd snapshotter on %s (root %s%s)', service.address, config.snapshotter.root,
    keepMounts ? `, images mounted by the daemon on ${daemonSocket}` : '')
  const svc = service
  const store = snapshots
  return {
    address: svc.address,
    info: () => ({
      address: svc.address,
      root: config.snapshotter.root,
      images: layers.list(),
      ...(daemonSocket !== undefined ? { daemonSocket } : {}),
      ...(images !== undefined ? { imageService: images.address, pullCredentials: credentials.size } : {})
    }),
    stop: async () => {
      let first: unknown
      const imageService = images
      for (const step of [async () => { await imageService?.stop() }, async () => { await svc.stop() }, async () => { await store.stop() }, async () => { await layers.stop({ keepMounts }) }]) {
        try { await step() } catch (err) { first ??= err }
      }
      if (first !== undefined) throw first
    }
  }
}

/**
 * The snapshotter in its own process, without a node: images are mounted by the daemon on
 * `snapshotter.daemonSocket` (its admin API), which serves them from its cache, neighbours and registry. Like
 * nydus-snapshotter beside nydusd, this process can stop, crash or be upgraded while containers keep reading
 * their files; at start it takes up the holds its metadata records. Runs until SIGTERM/SIGINT.
 */
export async function runSnapshotter (config: DaemonConfig, opts: { exit?: (code: number) => void } = {}): Promise<RunningSnapshotter> {
  const daemonSocket = config.snapshotter.daemonSocket
  if (daemonSocket === undefined) throw new Error('snapshotter.daemonSocket is not set')
  const logger = createLogger({ level: config.log.level, format: config.log.format })
  const log = logger.forComponent('rafspeer:snapshotter')
  const { AdminClient } = await import('../peer/client.js')
  const client = new AdminClient(daemonSocket)
  const daemon = await client.daemon().catch((err: unknown) => {
    throw new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_UNAVAILABLE', `the daemon that is to mount the images (--daemon-socket ${daemonSocket}) does not answer: ${describeError(err)}`, { cause: err })
  })
  log.info('images are mounted by the rafspeer daemon on %s (pid %d)', daemonSocket, daemon.pid)
  const s = await startSnapshotter(config, daemonMounter(client), logger, daemonSocket)
  const exit = opts.exit ?? ((code: number) => process.exit(code))
  let signalled = false
  const onSignal = (signal: NodeJS.Signals): void => {
    if (signalled) { exit(1); return }
    signalled = true
    log.info('%s: stopping (the daemon keeps the image mounts)', signal)
    s.stop().then(() => { exit(0) }, (err: unknown) => { log.error('stop failed: %s', describeError(err)); exit(1) })
  }
  process.on('SIGTERM', onSignal)
  process.on('SIGINT', onSignal)
  return s
}
