/**
 * The egress limit: the token bucket's arithmetic under an injected clock, and a real transfer through a
 * limited server taking at least half the time the limit implies (a correctness bound, not a speed goal).
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { TokenBucket } from './server-limiter.js'
import { pushBlob, withRegistry } from './server-testkit.js'

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

test('a limited server shares its rate between concurrent downloads', async () => {
  const rate = 512 * 1024
  await withRegistry({ bandwidthLimit: rate }, async ({ reg }) => {
    const a = await pushBlob(reg, 'lim', Buffer.alloc(256 * 1024, 1))
    const b = await pushBlob(reg, 'lim', Buffer.alloc(256 * 1024, 2))
    const t0 = performance.now()
    const sizes = await Promise.all([a, b].map(async d => (await (await fetch(`${reg.url}/v2/lim/blobs/${d}`)).arrayBuffer()).byteLength))
    const elapsed = (performance.now() - t0) / 1000
    assert.deepEqual(sizes, [256 * 1024, 256 * 1024])
    const expected = (512 * 1024 - 32 * 1024) / rate // the bucket starts full
    assert.ok(elapsed >= 0.5 * expected, `took ${elapsed.toFixed(3)} s, the limit implies ${expected.toFixed(3)} s`)
    assert.equal(reg.counters.bytesServed('lim'), 512 * 1024)
    // Uploads are not shaped: the limit models the registry's egress.
  })
})
