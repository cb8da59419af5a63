/**
 * The embedded registry's egress limit: a real transfer through a limited server takes at least half the time the
 * limit implies (a correctness bound, not a speed goal), shared between concurrent downloads.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { pushBlob, withRegistry } from './server-testkit.js'

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
