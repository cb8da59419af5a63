/**
 * The embedded scheduler on Redis (`scheduler.embedded` with `scheduler.redis`): the daemon serves the scheduler
 * protocol over a swarm directory on a Redis Cluster, like `rafspeer scheduler --redis`, so every daemon configured
 * so is one more stateless scheduler of one swarm.
 *
 * The node's own client speaks the protocol to a second libp2p host on loopback, not to an in-process index as the
 * in-memory embedded scheduler does: a host cannot dial itself, and going through the protocol gives the node the
 * client's whole behaviour towards a directory (heartbeats, re-announcing everything when Redis lost its entry,
 * empty answers while Redis fails over). The node's own host serves the same directory to daemons whose
 * `scheduler.address` points here.
 */
import { delay, type ComponentLogger } from '../../base/index.js'
import type { Host } from '../../p2p/index.js'
import {
  createDirectory, DirectorySchedulerService, startDirectorySchedulerNode, type DirectorySchedulerNode
} from '../../scheduler/index.js'

/** how long `stop` waits for the node's own session to end (its LEAVE read and applied) */
const LEAVE_GRACE_MS = 1000

export interface RedisScheduler {
  /** the loopback scheduler the node's own client uses (with `/p2p/<id>`) */
  readonly address: string
  /** Serves the scheduler protocol on the node's host too, for daemons that point `scheduler.address` here. */
  serveOn: (host: Host) => Promise<void>
  /** Stops both services and releases the Redis connection. */
  stop: () => Promise<void>
}

/** Connects to Redis (rejects with `RAFSPEER_ERR_DIRECTORY_UNAVAILABLE` when none answers) and starts serving. */
export async function startRedisScheduler (redis: readonly string[], logger: ComponentLogger): Promise<RedisScheduler> {
  const directory = await createDirectory({ redis: [...redis] }, { logger })
  let local: DirectorySchedulerNode
  try {
    local = await startDirectorySchedulerNode(directory, { listen: ['/ip4/127.0.0.1/tcp/0'], logger })
  } catch (err) {
    await directory.close().catch(() => {})
    throw err
  }
  let onNode: DirectorySchedulerService | undefined
  return {
    address: local.multiaddrs[0]!,
    serveOn: async (host) => {
      onNode = new DirectorySchedulerService({ libp2p: host, directory, logger })
      await onNode.start()
    },
    stop: async () => {
      await onNode?.stop()
      // the node's client (stopped first) closed its session after LEAVE: let that frame reach Redis, or the node
      // would stay listed as a holder until its TTL ran out
      const deadline = Date.now() + LEAVE_GRACE_MS
      while (local.service.sessionCount > 0 && Date.now() < deadline) await delay(20)
      // closes the directory too
      await local.stop()
    }
  }
}
