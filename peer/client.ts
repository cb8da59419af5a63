/**
 * @packageDocumentation
 * The second face of `peer/`: the client of a running daemon's admin API, for processes that only talk to a
 * daemon (`rafspeer mount` / `umount` / `status` / `access-list`, a snapshotter beside a daemon). It loads
 * `node:http` and nothing of the node: the first face, `index.ts`, brings the whole node (libp2p, LevelDB, the
 * mount backends), which cost a client command ~1 s of a cold start, and `rafspeer mount` through a running daemon
 * is how a container's image mount starts.
 *
 * @example
 * ```ts
 * import { AdminClient, DEFAULT_SOCKET } from '../peer/client.js'
 * const info = await new AdminClient(DEFAULT_SOCKET).mount({ source: 'localhost:5000/app:v1-rafs', mountpoint: '/mnt/app' })
 * ```
 */
export {
  AdminClient, AdminClientError, DEFAULT_SOCKET, DEFAULT_CLIENT_TIMEOUT_MS, MOUNT_TIMEOUT_MS, type CallOptions
} from './daemon/admin-client.js'
export type { AccessList, MountInfo, MountRequest } from './mount/index.js'
export type { DaemonInfo } from './daemon/admin-api.js'
export type { MetricsJson } from './daemon/metrics.js'
