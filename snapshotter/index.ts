/**
 * @packageDocumentation
 * The containerd remote snapshotter: containers start from RAFS images before the images are downloaded.
 * containerd reaches it as a proxy plugin (`[proxy_plugins.rafspeer] type = "snapshot"`) over
 * `containerd.services.snapshots.v1.Snapshots` on a Unix socket (`grpc-service.ts`). The store (`snapshots.ts`,
 * metadata in LevelDB: `metadata.ts`, list filters: `filters.ts`) has the semantics of containerd's overlayfs
 * snapshotter, so ordinary OCI images work through it too; RAFS layers plug in through `RemoteLayers`
 * (`rafs-layers.ts`): claimed at pull (containerd downloads no blob), and one lazy mount of the image through the
 * node's mount manager under every container on it. `cri-client.ts` pulls through containerd's CRI (`rafspeer
 * rpull`: only a CRI pull gives the snapshotter the labels it needs), `containerd-config.ts` writes containerd's
 * config for it.
 *
 * @example
 * ```ts
 * import { withSnapshotter } from './snapshotter/index.js'
 * await runDaemon(await loadDaemonConfig(undefined, { snapshotter: { address: '/run/rafspeer/snapshotter.sock' } }), { assemble: withSnapshotter() })
 * ```
 */
import { join } from 'node:path'
import type { ComponentLogger } from '../base/index.js'
import { startNode, type AssembleNode, type DaemonConfig, type DaemonNode } from '../peer/index.js'
import { RafsLayers } from './rafs-layers.js'
import { Snapshots } from './snapshots.js'
import { startSnapshotService } from './grpc-service.js'

export * from './types.js'
export { SnapshotterError, type SnapshotterErrorCode } from './errors.js'
export { Snapshots, type SnapshotStore, type SnapshotsComponents, type SnapshotsInit } from './snapshots.js'
export { startSnapshotService, DEFAULT_SNAPSHOTTER_SOCKET, type SnapshotService, type SnapshotServiceInit } from './grpc-service.js'
export { RafsLayers, imageOf, type ImageMounter, type LayerImage, type RafsLayersInit } from './rafs-layers.js'
export {
  CriImageClient, CriError, DEFAULT_CONTAINERD_ADDRESS, type CriAuth, type CriImage
} from './cri-client.js'
export {
  renderSnapshotterConfig, writeSnapshotterConfig, unwriteSnapshotterConfig, ContainerdConfigError, DEFAULT_SNAPSHOTTER_NAME
} from './containerd-config.js'

/**
 * A daemon assembly with the snapshotter: the node (`base`, default the composition root `startNode`, or another
 * assembly such as the mirror's), then, when `snapshotter.address` is set, the snapshot store over the node's
 * mount manager and its gRPC service. Stopping stops the service, then the image mounts, then the node.
 */
export function withSnapshotter (base: (config: DaemonConfig, logger: ComponentLogger) => Promise<DaemonNode> = startNode): AssembleNode {
  return async (config: DaemonConfig, logger: ComponentLogger): Promise<DaemonNode> => {
    const node = await base(config, logger)
    const address = config.snapshotter.address
    if (address === undefined) return node
    const layers = new RafsLayers({ mounts: node.mounts, logger }, {
      dir: join(config.snapshotter.root, 'images'),
      mode: config.snapshotter.mode,
      plainHttp: config.registry.plainHttp
    })
    let snapshots: Snapshots | undefined
    let service: Awaited<ReturnType<typeof startSnapshotService>> | undefined
    try {
      snapshots = new Snapshots({ logger, remote: layers }, { root: config.snapshotter.root })
      await snapshots.start()
      service = await startSnapshotService({ snapshots, logger }, { address })
    } catch (err) {
      await snapshots?.stop().catch(() => {})
      await layers.stop().catch(() => {})
      await node.stop().catch(() => {})
      throw err
    }
    logger.forComponent('rafspeer:snapshotter').info('containerd snapshotter on %s (root %s)', service.address, config.snapshotter.root)
    const svc = service
    const store = snapshots
    return {
      ...node,
      extensions: [...(node.extensions ?? []), {
        name: 'snapshotter',
        info: () => ({ address: svc.address, root: config.snapshotter.root, images: layers.list() })
      }],
      stop: async () => {
        let first: unknown
        for (const step of [async () => { await svc.stop() }, async () => { await store.stop() }, async () => { await layers.stop() }, async () => { await node.stop() }]) {
          try { await step() } catch (err) { first ??= err }
        }
        if (first !== undefined) throw first
      }
    }
  }
}
