/**
 * The schedulers a client knows: one or several multiaddrs, each naming its peer (the noise handshake checks it),
 * used one at a time. After a failure the client moves to the next, round robin: schedulers in front of one Redis
 * Cluster share their state, so any of them serves the node as well as the one that failed.
 */
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { P2P_CODE } from '../p2p/index.js'
import { SchedulerError } from './protocol.js'

export class SchedulerTargets {
  readonly all: readonly Multiaddr[]
  private at = 0

  /** Throws `RAFSPEER_ERR_SCHED_CONFIG` naming every address that does not parse or lacks `/p2p/<peer id>`. */
  constructor (addresses: string | readonly string[]) {
    const list = typeof addresses === 'string' ? [addresses] : [...addresses]
    if (list.length === 0) throw new SchedulerError('RAFSPEER_ERR_SCHED_CONFIG', 'no scheduler address given')
    const parsed: Multiaddr[] = []
    const problems: string[] = []
    for (const a of list) {
      let ma: Multiaddr
      try {
        ma = multiaddr(a)
      } catch (err) {
        problems.push(`scheduler address ${a}: ${(err as Error).message}`)
        continue
      }
      if (!ma.getComponents().some((c) => c.code === P2P_CODE)) problems.push(`scheduler address ${a} lacks /p2p/<peer id>`)
      // the same scheduler twice would only make a failed one tried twice in a row
      else if (!parsed.some((p) => p.equals(ma))) parsed.push(ma)
    }
    if (problems.length > 0) throw new SchedulerError('RAFSPEER_ERR_SCHED_CONFIG', problems.join('; '))
    this.all = parsed
  }

  /** The scheduler in use, or the one the next connection attempt dials. */
  get current (): Multiaddr { return this.all[this.at]! }

  /** Moves on to the next scheduler (the first after the last). */
  advance (): Multiaddr {
    this.at = (this.at + 1) % this.all.length
    return this.current
  }

  /** The distinct peer ids the addresses name (a scheduler may be listed under several addresses). */
  peerIds (): string[] {
    const ids = new Set<string>()
    for (const ma of this.all) {
      const id = ma.getComponents().findLast((c) => c.code === P2P_CODE)?.value
      if (id !== undefined) ids.add(id)
    }
    return [...ids]
  }
}
