/** The token bucket's arithmetic under an injected clock, and a limiter's aborted take giving its bytes back. */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { RateLimiter, TokenBucket } from './rate.js'

test('token bucket: the burst is free, then each byte costs 1/rate seconds', () => {
  let now = 1_000
  const bucket = new TokenBucket(1000, { burst: 100, now: () => now })
  assert.equal(bucket.reserve(100), 0)
  assert.equal(bucket.reserve(50), 50)
  // Debt accumulates: a second sender queues behind the first.
  assert.equal(bucket.reserve(50), 100)
  now += 100 // refills 100 bytes, paying the debt back
  assert.equal(bucket.reserve(0), 0)
  now += 10_000 // refill is capped at the burst
  assert.equal(bucket.reserve(100), 0)
  assert.equal(bucket.reserve(1), 1)
})

test('token bucket: over a simulated second, the bytes allowed match the rate', () => {
  let now = 0
  const rate = 1 << 20
  const bucket = new TokenBucket(rate, { now: () => now })
  let sent = 0
  // A sender that always waits the returned delay before the next piece.
  while (now < 10_000) {
    now += bucket.reserve(64 * 1024)
    sent += 64 * 1024
  }
  const expected = rate * 10 + bucket.burst
  assert.ok(Math.abs(sent - expected) <= 64 * 1024, `sent ${sent}, expected about ${expected}`)
})

test('token bucket: rejects a non-positive rate', () => {
  assert.throws(() => new TokenBucket(0), RangeError)
  assert.throws(() => new TokenBucket(Number.NaN), RangeError)
})

test('rate limiter: a take waits its turn; an aborted take rejects with its reason and gives its bytes back', async () => {
  const limiter = new RateLimiter(64 * 1024, 64 * 1024)
  await limiter.take(64 * 1024)
  const t0 = performance.now()
  await limiter.take(16 * 1024)
  assert.ok(performance.now() - t0 >= 150, 'the second take waited for the bucket to refill')
  const ctrl = new AbortController()
  const taken = limiter.take(1 << 20, ctrl.signal)
  ctrl.abort(new Error('gave up'))
  await assert.rejects(taken, /gave up/)
  // the abandoned megabyte was refunded: the next small take does not wait 16 s behind it
  const t1 = performance.now()
  await limiter.take(1024)
  assert.ok(performance.now() - t1 < 1000, `took ${performance.now() - t1} ms`)
})
