/**
 * A node's swarm prefetch of the whole image (`ModelInit.prefetch: 'all'`), as the daemon's prefetch runner does it
 * with the blob locator as its advisor (`peer/mount/prefetch.ts`, `swarmOrder`): a few slices in flight; each pick,
 * blob by blob in stored order, takes what {@link prefetchPick} takes of the chunks left — this node's share of the
 * registry's (one slice of them at a time, none while the blob's group is filling), then what neighbours have, rarest
 * first — and skips what reads brought meanwhile. When every chunk left waits on another peer, it looks again at
 * the blob's next news or after a short pause, and once the swarm has been quiet for the patience it takes the next
 * chunks in order anyway (they then go by the read rules). A slice's chunks that a batch already fetches are waited
 * for; the others go out as prefetch batches (runs of adjacent chunks) through the fetcher's prefetch slots.
 */
import type { Timed } from './events.js'
import { Join, type NodeBlob } from './node-blob.js'
import type { SimNode } from './node.js'
import { PREFETCH_SLICES_IN_FLIGHT, prefetchClass, prefetchPick, swarmPickLimits, swarmPrefetchWait, swarmQuietTake, groupFilling, type PrefetchClass } from './policy.js'
import { chunkBytes } from './world.js'

/** one slice in flight: its blob, its chunks, and whether it holds chunks for the registry */
interface Slice { nb: NodeBlob, cis: number[], source: boolean }

export class ModelPrefetch implements Timed {
  /** per blob, its chunks not taken yet, in stored order */
  private readonly left: number[][]
  private slices = 0
  private sourceSlices = 0
  /** when a pick last took chunks, or a neighbour's news of the blob came while waiting */
  private lastNews: number
  /** the blob whose news a waiting pick listens for (attended), or undefined when not waiting */
  private listening: NodeBlob | undefined
  /** blobs whose group a pick waits for */
  private readonly groupWait = new Set<NodeBlob>()
  private timerAt = Infinity
  private version = 0
  private readonly inc: number
  /** the picks are made; nothing is left to take */
  private over = false

  constructor (private readonly node: SimNode) {
    this.left = node.blobs.map(nb => Array.from({ length: nb.spec.chunks }, (_, i) => i))
    this.lastNews = node.world.queue.now
    this.inc = node.incarnation
  }

  private get current (): boolean { return this.node.alive && this.node.incarnation === this.inc }

  start (): void { this.pump() }

  /** the pause of a waiting pick ran out */
  fire (version: number): void {
    if (version !== this.version || !this.current) return
    this.timerAt = Infinity
    this.pump()
  }

  /** A neighbour's state of `nb` changed: a pick waiting on that blob looks again. */
  news (nb: NodeBlob): void {
    if (!this.current || this.listening !== nb) return
    this.lastNews = this.node.world.queue.now
    this.pump()
  }

  /** Takes picks while slices may start. */
  private pump (): void {
    this.unlisten()
    while (!this.over && this.slices < PREFETCH_SLICES_IN_FLIGHT) {
      const next = this.pick()
      if (next === 'wait') return
      if (next === undefined) { this.over = true; return }
      this.launch(next)
    }
  }

  private pick (): Slice | 'wait' | undefined {
    const node = this.node
    const now = node.world.queue.now
    const cfg = node.world.cfg
    let first: NodeBlob | undefined
    for (let b = 0; b < this.left.length; b++) {
      const nb = node.blobs[b]!
      const open = this.left[b]!.filter(ci => !nb.has(ci))
      this.left[b] = open
      if (open.length === 0) continue
      first ??= nb
      // the locator's pick asks for the blob's group first, as a read does
      if (!nb.group.fresh) {
        if (!this.groupWait.has(nb)) {
          this.groupWait.add(nb)
          nb.group.need({ plan: () => { this.groupWait.delete(nb); if (this.current) this.pump() } })
        }
        return 'wait'
      }
      const { group, stable } = nb.group.current()
      const hex = nb.spec.hex
      const self = node.peerId
      const classOf = (ci: number): PrefetchClass => {
        const { have, pending } = node.table.sources(hex, ci)
        let holders = 0
        for (const p of have) if (p !== self) holders++
        return prefetchClass({ self, group, stable, blobHex: hex, ci, graceMs: cfg.graceMs, have: holders, othersFetching: pending.some(p => p.peerId !== self) })
      }
      const limits = swarmPickLimits(this.sourceSlices)
      const filling = groupFilling(group.length, cfg.groupSize, now - nb.group.changedAt)
      const picked = prefetchPick(open, classOf, ci => chunkBytes(nb.spec, ci), { ...limits, maxSource: filling ? 0 : limits.maxSource })
      if (picked.chunks.length > 0) {
        this.lastNews = now
        return this.take(b, picked.chunks, picked.source > 0)
      }
    }
    if (first === undefined) return undefined
    const quiet = swarmPrefetchWait(now - this.lastNews)
    if (quiet.force) return this.take(first.spec.index, swarmQuietTake(this.left[first.spec.index]!, ci => chunkBytes(first.spec, ci)), true)
    this.listen(first, now + quiet.waitMs)
    return 'wait'
  }

  private take (b: number, cis: number[], source: boolean): Slice {
    const taken = new Set(cis)
    this.left[b] = this.left[b]!.filter(ci => !taken.has(ci))
    return { nb: this.node.blobs[b]!, cis: [...cis].sort((x, y) => x - y), source }
  }

  /** A slice through the fetcher: chunks a batch fetches already are waited for, the rest fetched as prefetch batches. */
  private launch (s: Slice): void {
    const node = this.node
    const nb = s.nb
    this.slices++
    if (s.source) this.sourceSlices++
    const fresh = s.cis.filter(ci => !nb.has(ci) && nb.fetching[ci] !== 1)
    // runs of adjacent chunks, each one batch of at most the fetcher's largest
    let run: number[] = []
    let bytes = 0
    const flush = (): void => { if (run.length > 0) node.prefetchBatch(nb, run); run = []; bytes = 0 }
    for (const ci of fresh) {
      const size = chunkBytes(nb.spec, ci)
      if (run.length > 0 && (ci !== run[run.length - 1]! + 1 || bytes + size > node.world.cfg.prefetchBatchBytes)) flush()
      run.push(ci)
      bytes += size
    }
    flush()
    new Join(nb, s.cis, () => {
      if (!this.current) return
      this.slices--
      // a registry slice that ends lets the next pick take registry chunks again
      if (s.source) this.sourceSlices--
      this.pump()
    })
  }

  /** Waits for news of `nb` (the node attends to its neighbours' messages about it) or until `at`. */
  private listen (nb: NodeBlob, at: number): void {
    if (this.listening !== nb) {
      this.unlisten()
      this.listening = nb
      this.node.attend(nb, 1)
    }
    if (at < this.timerAt) {
      this.timerAt = at
      this.node.world.queue.at(at, this, ++this.version)
    }
  }

  private unlisten (): void {
    if (this.listening === undefined) return
    this.node.attend(this.listening, -1)
    this.listening = undefined
  }
}
