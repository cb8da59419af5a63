/**
 * Egress shaping and accounting of the embedded registry. One token bucket is shared by every connection, so
 * the limit models the registry's uplink (what the simulator measures), not a per-client cap.
 */

export type Clock = () => number

/**
 * Token bucket measured in bytes. `reserve(n)` always succeeds and may drive the balance negative; the caller
 * then waits the returned delay. Debt makes concurrent senders queue behind each other, so the aggregate rate
 * stays at `rate` however many connections share it.
 */
export class TokenBucket {
  readonly rate: number
  readonly burst: number
  private tokens: number
  private last: number
  private readonly now: Clock

  constructor (rate: number, init: { burst?: number, now?: Clock } = {}) {
    if (!(rate > 0) || !Number.isFinite(rate)) throw new RangeError(`bandwidth limit must be a positive number, got ${rate}`)
    this.rate = rate
    // A twentieth of a second of traffic: small enough to keep the rate smooth, large enough for 64 KiB reads
    // at realistic limits without a timer per chunk.
    this.burst = init.burst ?? Math.max(16 * 1024, Math.floor(rate / 20))
    this.now = init.now ?? Date.now
    this.tokens = this.burst
    this.last = this.now()
  }

  /** Takes `n` bytes; returns how many milliseconds the caller must wait before sending them. */
  reserve (n: number): number {
    const t = this.now()
    this.tokens = Math.min(this.burst, this.tokens + (t - this.last) * this.rate / 1000)
    this.last = t
    this.tokens -= n
    return this.tokens >= 0 ? 0 : -this.tokens * 1000 / this.rate
  }

  /** Gives back `n` bytes reserved but never sent (the taker gave up waiting), up to the burst. */
  refund (n: number): void {
    this.tokens = Math.min(this.burst, this.tokens + n)
  }

  /** Largest piece worth reserving at once; bigger reads are split so one sender cannot hog a long window. */
  get maxPiece (): number { return this.burst }
}

/** Sleeps `ms`, resolving early (without throwing) when `signal` aborts: the caller checks the signal itself. */
export async function sleep (ms: number, signal?: AbortSignal): Promise<void> {
  if (ms <= 0 || signal?.aborted === true) return
  await new Promise<void>(resolve => {
    const done = (): void => { clearTimeout(timer); signal?.removeEventListener('abort', done); resolve() }
    const timer = setTimeout(done, ms)
    signal?.addEventListener('abort', done, { once: true })
  })
}

export interface RepoCounters { bytesServed: number, bytesReceived: number, requests: number, rangeRequests: number }

/** Per-repository byte and request counters; requests outside any repository (`/v2/`, `/token`) count under "". */
export class Counters {
  private readonly byRepo = new Map<string, RepoCounters>()

  private entry (repo: string): RepoCounters {
    let e = this.byRepo.get(repo)
    if (e === undefined) {
      e = { bytesServed: 0, bytesReceived: 0, requests: 0, rangeRequests: 0 }
      this.byRepo.set(repo, e)
    }
    return e
  }

  request (repo: string, ranged = false): void {
    const e = this.entry(repo)
    e.requests++
    if (ranged) e.rangeRequests++
  }

  served (repo: string, n: number): void { this.entry(repo).bytesServed += n }
  received (repo: string, n: number): void { this.entry(repo).bytesReceived += n }

  private sum (repo: string | undefined, key: keyof RepoCounters): number {
    if (repo !== undefined) return this.byRepo.get(repo)?.[key] ?? 0
    let total = 0
    for (const e of this.byRepo.values()) total += e[key]
    return total
  }

  bytesServed (repo?: string): number { return this.sum(repo, 'bytesServed') }
  requests (repo?: string): number { return this.sum(repo, 'requests') }

  snapshot (): Record<string, RepoCounters> {
    const out: Record<string, RepoCounters> = {}
    for (const [repo, e] of this.byRepo) out[repo] = { ...e }
    return out
  }
}
