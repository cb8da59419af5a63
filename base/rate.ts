/**
 * Byte-rate limits: one token bucket, and an awaitable limiter over it. Debt is allowed: a take larger than the
 * balance still goes through, and the takers after it wait until the debt is repaid, so many streams sharing one
 * bucket stay at its rate in aggregate. (Libraries such as `limiter` refuse takes above the bucket size or poll;
 * a byte stream needs neither.)
 */
import { delay } from './delay.js'

export type Clock = () => number

/** A {@link TokenBucket}'s burst when none is given: a twentieth of a second of traffic, at least 16 KiB. */
export function bucketBurst (rate: number): number { return Math.max(16 * 1024, Math.floor(rate / 20)) }

/** A {@link RateLimiter}'s burst when none is given: a quarter second of traffic, at least 64 KiB. */
export function limiterBurst (rate: number): number { return Math.max(64 << 10, rate / 4) }

export interface TokenBucketInit {
  /** bytes the bucket holds at most (default: a twentieth of a second of traffic, at least 16 KiB) */
  burst?: number
  /** default `performance.now` */
  now?: Clock
}

export class TokenBucket {
  readonly rate: number
  readonly burst: number
  private tokens: number
  private last: number
  private readonly now: Clock

  constructor (rate: number, init: TokenBucketInit = {}) {
    if (!(rate > 0) || !Number.isFinite(rate)) throw new RangeError(`a byte rate must be a positive number, got ${rate}`)
    this.rate = rate
    this.burst = init.burst ?? bucketBurst(rate)
    this.now = init.now ?? (() => performance.now())
    this.tokens = this.burst
    this.last = this.now()
  }

  private refill (): void {
    const t = this.now()
    this.tokens = Math.min(this.burst, this.tokens + (t - this.last) * this.rate / 1000)
    this.last = t
  }

  /** Takes `n` bytes now, into debt if need be; returns the milliseconds to wait before sending them. */
  reserve (n: number): number {
    this.refill()
    this.tokens -= n
    return this.tokens >= 0 ? 0 : -this.tokens * 1000 / this.rate
  }

  /** Milliseconds until the balance is back at zero (0 when it is not in debt); takes nothing. */
  debtMs (): number {
    this.refill()
    return this.tokens >= 0 ? 0 : -this.tokens * 1000 / this.rate
  }

  /** Gives back `n` bytes reserved but never sent (the taker gave up waiting), up to the burst. */
  refund (n: number): void {
    this.tokens = Math.min(this.burst, this.tokens + n)
  }

  /** Largest piece worth reserving at once; bigger sends are split so one sender cannot hog a long window. */
  get maxPiece (): number { return this.burst }
}

/** `take(n)` resolves once `n` more bytes fit the rate; an aborted take gives its reservation back. */
export class RateLimiter {
  readonly bucket: TokenBucket

  /** `burst` defaults to a quarter second of traffic (at least 64 KiB) */
  constructor (readonly rate: number, burst = limiterBurst(rate)) {
    this.bucket = new TokenBucket(rate, { burst })
  }

  async take (n: number, signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted()
    const ms = this.bucket.reserve(n)
    if (ms <= 0) return
    try {
      await delay(ms, signal)
    } catch (err) {
      // an abandoned take must not slow the takers still waiting
      this.bucket.refund(n)
      throw err
    }
  }
}
