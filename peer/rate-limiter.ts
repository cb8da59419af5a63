/**
 * An awaitable byte-rate limit over the registry's token bucket: `take(n)` returns once `n` bytes fit in the rate.
 * Debt makes concurrent takers queue behind each other, so many streams sharing one limiter stay at its rate.
 */
import { TokenBucket } from '../registry/server-limiter.js'

export class RateLimiter {
  private readonly bucket: TokenBucket

  /** `burst` defaults to a quarter second of traffic */
  constructor (readonly rate: number, burst = Math.max(64 << 10, rate / 4)) {
    this.bucket = new TokenBucket(rate, { burst, now: () => performance.now() })
  }

  /** Waits until `n` more bytes fit; rejects with the signal's reason when it aborts first. */
  async take (n: number, signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted()
    const ms = this.bucket.reserve(n)
    if (ms <= 0) return
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve() }, ms)
      // what was reserved is given back: an abandoned take must not slow the takers still waiting
      const onAbort = (): void => { clearTimeout(t); this.bucket.refund(n); reject(signal!.reason) }
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }
}
