/**
 * Exponential backoff with jitter, the one retry delay of rafspeer (registry requests, fetch rounds over the
 * sources, scheduler reconnects). p-retry owns its loop, which none of those can hand over: registry requests
 * honour `Retry-After`, fetch rounds hand chunks between sources, and reconnects run from timers.
 *
 * Attempt `n` waits a random time in [d/2, d) with d = min(maxMs, baseMs × 2ⁿ): the spread keeps many clients
 * that failed together from retrying together.
 */

export interface BackoffInit {
  /** the first delay's upper end (ms) */
  baseMs: number
  /** the largest upper end (ms) */
  maxMs: number
}

/** The delay before retry number `attempt` (0-based). */
export function backoffDelay (attempt: number, init: BackoffInit): number {
  const d = Math.min(init.maxMs, init.baseMs * 2 ** Math.max(0, attempt))
  return d / 2 + Math.random() * d / 2
}

/** A backoff that remembers its attempt: `next()` for each failure, `reset()` after a success. */
export class Backoff {
  private attempt = 0
  constructor (private readonly init: BackoffInit) {}
  next (): number { return backoffDelay(this.attempt++, this.init) }
  reset (): void { this.attempt = 0 }
}
