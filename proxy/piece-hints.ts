/**
 * Who lent which pieces: a neighbour that sends a piece map holds every piece it lists (a node lists only pieces it
 * has stored), before the scheduler may have heard of them (announcements are batched). The mirror's neighbour
 * source asks these holders first, so a follower does not find "nobody holds it" and fetch from the registry a
 * piece its lender has had for a second.
 *
 * @example
 * ```ts
 * const hints = new PieceHints()
 * const source = node.neighbourSource(init, logger, swarm => hints.wrap(swarm))
 * hints.add(lender, part.digests)
 * ```
 */
import { LRUCache } from 'lru-cache'
import type { ChunkHolder, HolderResolver } from '../p2p/index.js'

/** holders kept per piece */
const MAX_HINTS = 4

export class PieceHints {
  private readonly by = new LRUCache<string, ChunkHolder[]>({ max: 200_000 })

  add (holder: ChunkHolder, digests: Buffer[]): void {
    for (const d of digests) {
      const key = d.toString('hex')
      const list = this.by.get(key) ?? []
      if (!list.some(h => h.peerId === holder.peerId)) this.by.set(key, [holder, ...list].slice(0, MAX_HINTS))
    }
  }

  /** The swarm's resolver with the hints first; the scheduler is asked only for pieces without a hint. */
  wrap (swarm: HolderResolver): HolderResolver {
    return {
      resolve: async (digests, opts) => {
        const hinted = new Map<string, ChunkHolder[]>()
        const rest: Buffer[] = []
        for (const d of digests) {
          const hs = this.by.get(d.toString('hex'))
          if (hs !== undefined) hinted.set(d.toString('hex'), hs)
          else rest.push(d)
        }
        if (rest.length === 0) return hinted
        const answer = await swarm.resolve(rest, opts)
        for (const [k, hs] of hinted) answer.set(k, hs)
        return answer
      },
      report: outcomes => { swarm.report(outcomes) }
    }
  }
}
