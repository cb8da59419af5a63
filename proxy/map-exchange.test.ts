/**
 * `/rafspeer/piecemap/1.0.0` between two real libp2p hosts: a confirmed map in one reply, a map still being
 * computed sent as it grows (PENDING while a holder waits for new pieces), NOT_FOUND, and hostile holders (a reply
 * that does not fit its blob, garbage, silence) refused with the protocol's error within the deadline.
 */
import '../polyfill.js'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { createHost, encodeFrame, type Host } from '../p2p/index.js'
import { MapServer, MapStatus, PIECEMAP_PROTOCOL, askMap, type ServableMap } from './map-exchange.js'
import { MapLayout, encodeMap, pieceLayout } from './piece-map.js'

const P = 64 << 10
const DIGEST = `sha256:${createHash('sha256').update('blob').digest('hex')}`

async function pair (): Promise<{ a: Host, b: Host, holder: { peerId: string, addrs: string[] }, stop: () => Promise<void> }> {
  const a = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
  const b = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
  const addrs = b.getMultiaddrs().map(m => m.toString().replace(/\/p2p\/.*$/, ''))
  return { a, b, holder: { peerId: b.peerId.toString(), addrs }, stop: async () => { await a.stop(); await b.stop() } }
}

test('a confirmed map comes in one reply; an unknown blob is NOT_FOUND', async () => {
  const { a, b, holder, stop } = await pair()
  const layout = pieceLayout(DIGEST, 5 * P + 1, P)
  const digests = Array.from({ length: layout.count }, () => randomBytes(32))
  const server = new MapServer({
    libp2p: b,
    maps: { servable: async d => d === DIGEST ? { layout, digests, final: true } : undefined, changed: async () => {} }
  })
  await server.start()
  try {
    const got = await askMap(a, holder, DIGEST, 0, { timeoutMs: 2_000 })
    assert.equal(got?.layout.size, layout.size)
    assert.deepEqual(got?.part.digests, digests)
    const tail = await askMap(a, holder, DIGEST, 4, { timeoutMs: 2_000 })
    assert.deepEqual(tail?.part.digests, digests.slice(4))
    assert.equal(await askMap(a, holder, `sha256:${'0'.repeat(64)}`, 0, { timeoutMs: 2_000 }), undefined)
    assert.equal(server.counters.served, 2)
    assert.equal(server.counters.notFound, 1)
  } finally {
    await server.stop()
    await stop()
  }
})

test('a map still being computed: the holder sends PENDING until new pieces exist, then what it has', async () => {
  const { a, b, holder, stop } = await pair()
  const layout = pieceLayout(DIGEST, 4 * P, P)
  const all = Array.from({ length: 4 }, () => randomBytes(32))
  let known = 0
  let wake: (() => void) | undefined
  let state: ServableMap | 'pending' = 'pending'
  const server = new MapServer({
    libp2p: b,
    maps: {
      servable: async () => state === 'pending' ? state : { layout, digests: all.slice(0, known), final: known === 4 },
      changed: async (_d, ms) => { await new Promise<void>(resolve => { wake = resolve; setTimeout(resolve, ms) }) }
    }
  }, { holdMs: 5_000 })
  await server.start()
  try {
    // the holder has no layout yet, then gets it, then one more piece: the asker waits through it all
    setTimeout(() => { state = { layout, digests: [], final: false }; wake?.() }, 1_200)
    setTimeout(() => { known = 2; wake?.() }, 2_500)
    const t0 = Date.now()
    const first = await askMap(a, holder, DIGEST, 0, { timeoutMs: 1_500 })
    assert.ok(Date.now() - t0 >= 1_000, 'answered before anything was known')
    assert.deepEqual(first?.part.digests, all.slice(0, 2))
    known = 4
    const rest = await askMap(a, holder, DIGEST, 2, { timeoutMs: 1_500 })
    assert.deepEqual(rest?.part.digests, all.slice(2))
  } finally {
    await server.stop()
    await stop()
  }
})

test('hostile holders: a map that does not fit its blob, garbage, a wrong status, silence', async () => {
  const { a, b, holder, stop } = await pair()
  const replies: Array<Uint8Array | 'silent'> = [
    // 3 digests for a one-piece blob
    Buffer.concat([Uint8Array.of(MapStatus.OK), encodeMap({ size: P, pieceBytes: P, first: 0, digests: [randomBytes(32), randomBytes(32), randomBytes(32)] })]),
    // a part from another first piece than asked
    Buffer.concat([Uint8Array.of(MapStatus.OK), encodeMap({ size: 4 * P, pieceBytes: P, first: 1, digests: [randomBytes(32)] })]),
    Buffer.concat([Uint8Array.of(MapStatus.OK), Buffer.alloc(MapLayout.HEADER_BYTES, 7)]),
    Uint8Array.of(99),
    Uint8Array.of(MapStatus.PENDING, 1, 2, 3),
    'silent'
  ]
  let next = 0
  await b.handle(PIECEMAP_PROTOCOL, async stream => {
    const reply = replies[next++]!
    if (reply === 'silent') return
    stream.send(encodeFrame(reply))
    await stream.close()
  })
  try {
    for (let i = 0; i < replies.length; i++) {
      const t0 = Date.now()
      await assert.rejects(askMap(a, holder, DIGEST, 0, { timeoutMs: 800 }), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'RAFSPEER_ERR_PROXY_MAP_PROTOCOL', `reply ${i}: ${err.message}`)
        return true
      })
      assert.ok(Date.now() - t0 < 3_000, `reply ${i} took ${Date.now() - t0} ms`)
    }
  } finally {
    await stop()
  }
})
