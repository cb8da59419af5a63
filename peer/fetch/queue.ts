/**
 * Admission of fetch batches: at most `concurrency` in flight, reads always before prefetch, prefetch limited to
 * fewer slots (so a read never waits for a slot behind prefetch) and to a byte rate (the token bucket may go into
 * debt: a batch larger than the bucket still runs, the next one waits for the debt to be repaid).
 *
 * Why not p-queue: it has priorities and concurrency, but no share of the slots reserved for one priority, no
 * byte-rate gate in front of one priority only, and no way to move a queued job up when a read starts waiting on
 * it; each of those would wrap it in as much code as this file.
 */
import { TokenBucket } from '../../base/index.js'

export type FetchPriority = 'read' | 'prefetch'

/** The slots prefetch may take of `concurrency` by default: all but a quarter (at least one), so reads always find one. */
export function defaultPrefetchSlots (concurrency: number): number {
  return Math.max(1, concurrency - Math.max(1, Math.floor(concurrency / 4)))
}

export interface QueueJob {
  priority: FetchPriority
  /** bytes the job will move, charged to the prefetch bandwidth bucket */
  cost: number
  run: () => Promise<void>
}

export interface FetchQueueInit {
  concurrency: number
  /** slots prefetch may hold at once (≤ concurrency) */
  prefetchConcurrency: number
  /** prefetch byte rate; unlimited when undefined or ≤ 0 */
  prefetchBytesPerSecond?: number
  now?: () => number
}

interface Entry { job: QueueJob, asPrefetch: boolean }

export class FetchQueue {
  private readonly reads: QueueJob[] = []
  private readonly prefetches: QueueJob[] = []
  private readonly running = new Map<QueueJob, Entry>()
  private runningPrefetch = 0
  private readonly concurrency: number
  private readonly prefetchConcurrency: number
  /** the prefetch byte rate; absent: unlimited */
  private readonly bucket: TokenBucket | undefined
  private timer: NodeJS.Timeout | undefined

  constructor (init: FetchQueueInit) {
    this.concurrency = Math.max(1, Math.floor(init.concurrency))
    this.prefetchConcurrency = Math.max(1, Math.min(this.concurrency, Math.floor(init.prefetchConcurrency)))
    const rate = init.prefetchBytesPerSecond ?? 0
    // one second of burst: the first second of prefetch goes at once
    this.bucket = rate > 0 ? new TokenBucket(rate, { burst: rate, ...(init.now !== undefined ? { now: init.now } : {}) }) : undefined
  }

  get active (): number { return this.running.size }
  get queued (): number { return this.reads.length + this.prefetches.length }

  add (job: QueueJob): void {
    ;(job.priority === 'read' ? this.reads : this.prefetches).push(job)
    this.pump()
  }

  /** A read now waits on a queued prefetch job: move it to the read queue. */
  promote (job: QueueJob): void {
    if (job.priority === 'read') return
    job.priority = 'read'
    const i = this.prefetches.indexOf(job)
    if (i >= 0) {
      this.prefetches.splice(i, 1)
      this.reads.push(job)
      this.pump()
    }
  }

  /** Drops a job that has not started; true when it was still queued. */
  cancel (job: QueueJob): boolean {
    for (const q of [this.reads, this.prefetches]) {
      const i = q.indexOf(job)
      if (i >= 0) { q.splice(i, 1); return true }
    }
    return false
  }

  /** Forgets every queued job and the refill timer (running jobs finish on their own). */
  clear (): QueueJob[] {
    const dropped = [...this.reads.splice(0), ...this.prefetches.splice(0)]
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    return dropped
  }

  private pump (): void {
    while (this.running.size < this.concurrency) {
      let job = this.reads.shift()
      let asPrefetch = false
      if (job === undefined) {
        if (this.prefetches.length === 0 || this.runningPrefetch >= this.prefetchConcurrency) return
        const debt = this.bucket?.debtMs() ?? 0
        if (debt > 0) {
          this.wakeAfter(Math.ceil(debt) + 1)
          return
        }
        job = this.prefetches.shift()!
        asPrefetch = true
        this.bucket?.reserve(job.cost)
        this.runningPrefetch++
      }
      this.start({ job, asPrefetch })
    }
  }

  private wakeAfter (ms: number): void {
    if (this.timer !== undefined) return
    this.timer = setTimeout(() => { this.timer = undefined; this.pump() }, ms)
  }

  private start (entry: Entry): void {
    this.running.set(entry.job, entry)
    const done = (): void => {
      this.running.delete(entry.job)
      if (entry.asPrefetch) this.runningPrefetch--
      this.pump()
    }
    // run() owns its errors; a throw here would only be a bug, and must not wedge the slot
    entry.job.run().then(done, done)
  }
}
