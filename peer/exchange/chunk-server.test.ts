/**
 * The chunk server on real libp2p nodes over a real BlobCache: serves by digest only (lying hints change
 * nothing and evict nothing), never serves a corrupted cached chunk, survives malformed and idle streams, answers
 * BUSY over its upload cap, paces uploads under a rate cap, and aborts uploads on stop. Per asker: a share of the
 * upload slots it is sure of (and borrows past only while a share stays free for others), a cap on its streams,
 * and a byte budget for what is read ahead of its replies. A busy server sends an asker that takes redirects to a
 * peer it is sending the chunk to; a chunk on its way gets its first PENDING frame before the asker would hedge, and
 * an asker a redirect sent waits for it longer.
 */
import '../../polyfill.js'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, open, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { BlobCache } from '../../cache/index.js'
import type { ChunkInfo, RafsBlobInfo } from '../../rafs/index.js'
import {
  AcceptFlags, CHUNK_PROTOCOL, ChunkStatus, exchangeChunks, type ChunkName, type ChunkReply
} from './chunk-protocol.js'
import { ChunkServer, FIRST_PENDING_MS, REDIRECTED_WAIT_MS, type ChunkServerInit, type ServableCache } from './chunk-server.js'
import { blobChunks, buildTestImage, type TestImage } from '../../test/helpers/fetch-kit.js'
import { announceAddrs, createHost, type Host } from '../../p2p/index.js'
import { encodeRequest } from './chunk-protocol.js'

/** `cache` as a chunk server sees it, each look-up running `before` first (to hold it back) and each read counted by `onRead` */
function lookUpFirst (cache: BlobCache, before: (digest: Buffer, opts?: { exceptBlobId?: string }) => Promise<void> | void, onRead?: () => void): ServableCache {
  return {
    has: (id: string, ci: number) => cache.has(id, ci),
    readChunk: async (...a: Parameters<BlobCache['readChunk']>) => { onRead?.(); return await cache.readChunk(...a) },
    findByDigest: async (d: Buffer, o?: { exceptBlobId?: string }) => { await before(d, o); return await cache.findByDigest(d, o) }
  }
}

const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }
async function until (what: string, cond: () => boolean, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

describe('ChunkServer', () => {
  let img: TestImage
  let blob: RafsBlobInfo
  let chunks: ChunkInfo[]
  const plain: Buffer[] = []
  let root: string
  let client: Host
  const closers: Array<() => Promise<void>> = []

  before(async () => {
    img = await buildTestImage()
    blob = img.blobs[0]!
    const all = await blobChunks(img)
    chunks = all.chunks
    all.plain.forEach((b, i) => { plain[i] = b })
    root = await mkdtemp(join(tmpdir(), 'rafspeer-chunk-server-'))
    client = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
  })

  after(async () => {
    for (const c of closers.reverse()) await c().catch(() => {})
    await client?.stop()
    await rm(root, { recursive: true, force: true })
    await img?.cleanup()
  })

  let seq = 0
  /** a cache holding the given chunks of the test blob */
  async function seededCache (which: ChunkInfo[] = chunks): Promise<{ cache: BlobCache, dir: string }> {
    const dir = join(root, `cache${seq++}`)
    const cache = await BlobCache.open(dir)
    await cache.registerBlob(blob)
    for (const c of which) await cache.putChunk(blob.blobId, c, plain[c.index]!)
    closers.push(async () => { await cache.close() })
    return { cache, dir }
  }

  async function startServer (cache: BlobCache, init: ChunkServerInit = {}): Promise<{ server: ChunkServer, node: Host, addr: Multiaddr }> {
    const node = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    const server = new ChunkServer({ libp2p: node, cache }, init)
    await server.start()
    closers.push(async () => { await server.stop(); await node.stop() })
    return { server, node, addr: multiaddr(`${announceAddrs(node)[0]!}/p2p/${node.peerId.toString()}`) }
  }

  const nameOf = (c: ChunkInfo): ChunkName => ({ digest: c.digest, blobId: blob.blobId, ci: c.index, size: c.uncompressedSize })

  async function ask (addr: Multiaddr, names: ChunkName[], timeoutMs = 3000): Promise<ChunkReply[]> {
    const stream = await client.dialProtocol(addr, CHUNK_PROTOCOL)
    const out: ChunkReply[] = []
    for await (const r of exchangeChunks(stream, names, { timeoutMs })) out.push(r)
    return out
  }

  it('serves chunks by digest; absent ones are NOT_FOUND', async () => {
    const { cache } = await seededCache(chunks.slice(0, 10))
    const { server, addr } = await startServer(cache)
    const names = chunks.slice(0, 12).map(nameOf)
    const replies = await ask(addr, names)
    assert.equal(replies.length, 12)
    for (let i = 0; i < 10; i++) {
      assert.equal(replies[i]!.status, ChunkStatus.OK)
      assert.ok(replies[i]!.payload!.equals(plain[i]!), `chunk ${i}`)
    }
    assert.deepEqual(replies.slice(10).map(r => r.status), [ChunkStatus.NOT_FOUND, ChunkStatus.NOT_FOUND])
    assert.equal(server.counters.chunksServed, 10)
    assert.equal(server.counters.bytesServed, chunks.slice(0, 10).reduce((n, c) => n + c.uncompressedSize, 0))
    assert.equal(server.counters.notFound, 2)
    assert.equal(server.counters.uploadsActive, 0)
  })

  it('a reply that takes long (a chunk on its way) is preceded by PENDING frames: the asker keeps waiting', async () => {
    const { cache } = await seededCache(chunks.slice(0, 3))
    const slow = chunks[1]!.digest
    // the look-up of chunk 1 takes 2.6 s, longer than the asker's 1.5 s read deadline
    const servable = lookUpFirst(cache, async (d, o) => { if (d.equals(slow) && o?.exceptBlobId === undefined) await sleep(2600) })
    const node = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    const server = new ChunkServer({ libp2p: node, cache: servable })
    await server.start()
    closers.push(async () => { await server.stop(); await node.stop() })
    const addr = multiaddr(`${announceAddrs(node)[0]!}/p2p/${node.peerId.toString()}`)
    const replies = await ask(addr, chunks.slice(0, 3).map(nameOf), 1500)
    assert.deepEqual(replies.map(r => r.status), [ChunkStatus.OK, ChunkStatus.OK, ChunkStatus.OK])
    assert.ok(replies[1]!.payload!.equals(plain[1]!))
    assert.ok(server.counters.pendingFrames >= 2, `${server.counters.pendingFrames} pending frames`)
  })

  it('the first PENDING frame comes before an asker would hedge (300 ms), not after a second', async () => {
    const { cache } = await seededCache(chunks.slice(0, 1))
    const servable = lookUpFirst(cache, async () => { await sleep(600) })
    const node = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    const server = new ChunkServer({ libp2p: node, cache: servable })
    await server.start()
    closers.push(async () => { await server.stop(); await node.stop() })
    const addr = multiaddr(`${announceAddrs(node)[0]!}/p2p/${node.peerId.toString()}`)
    const stream = await client.dialProtocol(addr, CHUNK_PROTOCOL)
    const started = performance.now()
    let firstPending = -1
    const onPending = (): void => { if (firstPending < 0) firstPending = performance.now() - started }
    const statuses: ChunkStatus[] = []
    for await (const r of exchangeChunks(stream, [nameOf(chunks[0]!)], { timeoutMs: 3000, onPending })) statuses.push(r.status)
    assert.deepEqual(statuses, [ChunkStatus.OK])
    assert.ok(firstPending >= FIRST_PENDING_MS * 0.8 && firstPending < 250, `first PENDING after ${firstPending.toFixed(0)} ms`)
    assert.equal(server.counters.pendingFrames, 1)
  })

  it('a busy server sends an asker that takes redirects to a peer it is sending the chunk to, with its addresses', async () => {
    const { cache } = await seededCache(chunks.slice(0, 4))
    // look-ups of chunk 0 wait for the gate: that upload keeps the server busy while the test asks for chunk 1
    let open!: () => void
    const gate = new Promise<void>(resolve => { open = resolve })
    const held = chunks[0]!.digest
    let reads = 0
    const servable = lookUpFirst(cache, async d => { if (d.equals(held)) await gate }, () => { reads++ })
    const node = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    const other = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    const addressesOf = async (id: string): Promise<string[]> => id === other.peerId.toString() ? ['/ip4/10.9.8.7/tcp/4001'] : []
    const server = new ChunkServer({ libp2p: node, cache: servable, addressesOf })
    await server.start()
    closers.push(async () => { await server.stop(); await node.stop(); await other.stop() })
    const addr = multiaddr(`${announceAddrs(node)[0]!}/p2p/${node.peerId.toString()}`)
    const askFrom = async (host: Host, c: ChunkInfo, accept: number): Promise<ChunkReply> => {
      const stream = await host.dialProtocol(addr, CHUNK_PROTOCOL)
      for await (const r of exchangeChunks(stream, [nameOf(c)], { timeoutMs: 5000, accept })) return r
      throw new Error('no reply')
    }
    // not busy (its one upload is the asker's own): served, and recorded as a receiver of chunk 1
    assert.equal((await askFrom(other, chunks[1]!, AcceptFlags.REDIRECT)).status, ChunkStatus.OK)
    const busy = askFrom(client, chunks[0]!, 0)
    await until('the held upload', () => server.counters.uploadsActive === 1)
    const readsBefore = reads
    const sent = await askFrom(client, chunks[1]!, AcceptFlags.REDIRECT)
    assert.deepEqual(sent, { i: 0, status: ChunkStatus.REDIRECT, peerId: other.peerId.toString(), addrs: ['/ip4/10.9.8.7/tcp/4001'] })
    assert.equal(server.counters.redirects, 1)
    assert.equal(reads, readsBefore, 'a redirect reads no chunk bytes')
    // an asker that does not take redirects, and one the server has no receiver of the chunk for, are served
    assert.equal((await askFrom(client, chunks[1]!, 0)).status, ChunkStatus.OK)
    assert.equal((await askFrom(other, chunks[2]!, AcceptFlags.REDIRECT)).status, ChunkStatus.OK)
    // the receiver itself asking again is served, not sent to itself
    assert.equal((await askFrom(other, chunks[1]!, AcceptFlags.REDIRECT)).status, ChunkStatus.OK)
    open()
    assert.equal((await busy).status, ChunkStatus.OK)
    assert.equal(server.counters.redirects, 1)
  })

  it('askers that meet a chunk together (it just landed) are sent to the first of them, not all served', async () => {
    const { cache } = await seededCache(chunks.slice(0, 2))
    let open!: () => void
    const gate = new Promise<void>(resolve => { open = resolve })
    const landing = chunks[1]!.digest
    const servable = lookUpFirst(cache, async d => { if (d.equals(landing)) await gate }, () => {})
    const node = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    const askers = [client, await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] }), await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })]
    const server = new ChunkServer({ libp2p: node, cache: servable })
    await server.start()
    closers.push(async () => { await server.stop(); await node.stop(); await askers[1]!.stop(); await askers[2]!.stop() })
    const addr = multiaddr(`${announceAddrs(node)[0]!}/p2p/${node.peerId.toString()}`)
    const asking = askers.map(async host => {
      const stream = await host.dialProtocol(addr, CHUNK_PROTOCOL)
      for await (const r of exchangeChunks(stream, [nameOf(chunks[1]!)], { timeoutMs: 5000, accept: AcceptFlags.REDIRECT })) return { host, r }
      throw new Error('no reply')
    })
    // all three wait for the chunk, then it is there for all of them at once
    await until('three askers waiting', () => server.counters.uploadsActive === 3)
    open()
    const got = await Promise.all(asking)
    const served = got.filter(g => g.r.status === ChunkStatus.OK)
    const sent = got.filter(g => g.r.status === ChunkStatus.REDIRECT)
    assert.equal(served.length, 1, JSON.stringify(got.map(g => g.r.status)))
    assert.equal(sent.length, 2)
    for (const g of sent) assert.equal(g.r.peerId, served[0]!.host.peerId.toString())
  })

  it('past a crowd of chainCrowd askers at once, an asker is kept for a turn: the upload\'s end shares them out', async () => {
    const { cache } = await seededCache(chunks.slice(0, 2))
    // the first read of chunk 1 waits for the gate: that upload is under way while the others ask
    let open!: () => void
    const gate = new Promise<void>(resolve => { open = resolve })
    let first = true
    const servable: ServableCache = {
      has: (id, ci) => cache.has(id, ci),
      findByDigest: async (d, o) => await cache.findByDigest(d, o),
      readChunk: async (id, c, o) => {
        if (c.index === 1 && first) { first = false; await gate }
        return await cache.readChunk(id, c, o)
      }
    }
    const node = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    const hosts = [client, await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] }), await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] }), await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })]
    const server = new ChunkServer({ libp2p: node, cache: servable }, { chainCrowd: 1, turnWaitMs: 3_000 })
    await server.start()
    closers.push(async () => { await server.stop(); await node.stop(); for (const h of hosts.slice(1)) await h.stop() })
    const addr = multiaddr(`${announceAddrs(node)[0]!}/p2p/${node.peerId.toString()}`)
    const askFrom = async (host: Host, c: ChunkInfo): Promise<{ r: ChunkReply, pending: number }> => {
      const stream = await host.dialProtocol(addr, CHUNK_PROTOCOL)
      let pending = 0
      for await (const r of exchangeChunks(stream, [nameOf(c)], { timeoutMs: 5000, accept: AcceptFlags.REDIRECT, onPending: () => { pending++ } })) return { r, pending }
      throw new Error('no reply')
    }
    const firstAsk = askFrom(hosts[0]!, chunks[1]!)
    await until('the first upload', () => server.counters.uploadsActive === 1)
    const kept = [askFrom(hosts[1]!, chunks[1]!), askFrom(hosts[2]!, chunks[1]!)]
    await until('two askers kept for a turn', () => server.counters.turns === 2)
    // a chunk with no upload under way is served as before
    assert.equal((await askFrom(hosts[3]!, chunks[0]!)).r.status, ChunkStatus.OK)
    // (the first asker, its read held, gets PENDING frames too)
    await until('PENDING frames to the askers kept', () => server.counters.pendingFrames >= 3)
    open()
    assert.equal((await firstAsk).r.status, ChunkStatus.OK)
    const after = await Promise.all(kept)
    for (const k of after) assert.ok(k.pending >= 1, 'PENDING frames while kept')
    const statuses = after.map(k => k.r.status).sort()
    assert.deepEqual(statuses, [ChunkStatus.OK, ChunkStatus.REDIRECT].sort(), 'one served here, one sent to the first receiver')
    const sent = after.find(k => k.r.status === ChunkStatus.REDIRECT)!
    assert.equal(sent.r.peerId, hosts[0]!.peerId.toString())
    assert.ok(after.find(k => k.r.status === ChunkStatus.OK)!.r.payload!.equals(plain[1]!))
    assert.equal(server.counters.turnsRunOut, 0)
  })

  it('an asker kept for a turn whose request ends is nobody\'s receiver: later askers are not kept behind it', async () => {
    const { cache } = await seededCache(chunks.slice(0, 2))
    // the first reads of chunks 0 and 1 wait for their gates
    const gates = [0, 1].map(() => { let open!: () => void; const p = new Promise<void>(resolve => { open = resolve }); return { p, open } })
    const firstRead = new Set([0, 1])
    const servable: ServableCache = {
      has: (id, ci) => cache.has(id, ci),
      findByDigest: async (d, o) => await cache.findByDigest(d, o),
      readChunk: async (id, c, o) => {
        if (firstRead.delete(c.index)) await gates[c.index]!.p
        return await cache.readChunk(id, c, o)
      }
    }
    const node = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    const hosts = [client, ...await Promise.all([1, 2, 3, 4].map(async () => await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })))]
    const server = new ChunkServer({ libp2p: node, cache: servable }, { chainCrowd: 0, turnWaitMs: 3_000 })
    await server.start()
    closers.push(async () => { await server.stop(); await node.stop(); for (const h of hosts.slice(1)) await h.stop() })
    const addr = multiaddr(`${announceAddrs(node)[0]!}/p2p/${node.peerId.toString()}`)
    const askFrom = async (host: Host, c: ChunkInfo, signal?: AbortSignal): Promise<ChunkReply> => {
      const stream = await host.dialProtocol(addr, CHUNK_PROTOCOL)
      for await (const r of exchangeChunks(stream, [nameOf(c)], { timeoutMs: 5000, accept: AcceptFlags.REDIRECT, signal })) return r
      throw new Error('no reply')
    }
    const first = askFrom(hosts[0]!, chunks[1]!)
    await until('the first upload of chunk 1', () => server.counters.uploadsActive === 1)
    const quit = new AbortController()
    const keptThenGone = askFrom(hosts[1]!, chunks[1]!, quit.signal).catch(() => 'aborted')
    await until('an asker kept for a turn', () => server.counters.turns === 1)
    quit.abort()
    assert.equal(await keptThenGone, 'aborted')
    // its request ends here when a PENDING frame meets the reset stream, while its turn is still to come
    await until('the request that left ended', () => server.counters.aborted === 1 && server.counters.uploadsActive === 1)
    gates[1]!.open()
    assert.equal((await first).status, ChunkStatus.OK)
    // another upload keeps the server busy; askers of chunk 1 now, no upload of it under way: served or sent to the
    // first receiver, none kept for a turn behind the asker that left
    const busy = askFrom(hosts[2]!, chunks[0]!)
    await until('the held upload of chunk 0', () => server.counters.uploadsActive === 1)
    const statuses = [(await askFrom(hosts[3]!, chunks[1]!)).status, (await askFrom(hosts[4]!, chunks[1]!)).status]
    for (const st of statuses) assert.ok(st === ChunkStatus.OK || st === ChunkStatus.REDIRECT, `status ${st}`)
    assert.equal(server.counters.turns, 1, 'only the asker that left was kept')
    gates[0]!.open()
    assert.equal((await busy).status, ChunkStatus.OK)
  })

  it('an asker whose turn does not come within turnWaitMs is answered BUSY', async () => {
    const { cache } = await seededCache(chunks.slice(0, 2))
    let open!: () => void
    const gate = new Promise<void>(resolve => { open = resolve })
    const servable: ServableCache = {
      has: (id, ci) => cache.has(id, ci),
      findByDigest: async (d, o) => await cache.findByDigest(d, o),
      readChunk: async (id, c, o) => { if (c.index === 1) await gate; return await cache.readChunk(id, c, o) }
    }
    const node = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    const other = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    const server = new ChunkServer({ libp2p: node, cache: servable }, { chainCrowd: 0, turnWaitMs: 300 })
    await server.start()
    closers.push(async () => { await server.stop(); await node.stop(); await other.stop() })
    const addr = multiaddr(`${announceAddrs(node)[0]!}/p2p/${node.peerId.toString()}`)
    const askFrom = async (host: Host): Promise<ChunkReply> => {
      const stream = await host.dialProtocol(addr, CHUNK_PROTOCOL)
      for await (const r of exchangeChunks(stream, [nameOf(chunks[1]!)], { timeoutMs: 5000, accept: AcceptFlags.REDIRECT })) return r
      throw new Error('no reply')
    }
    const held = askFrom(client)
    await until('the held upload', () => server.counters.uploadsActive === 1)
    const started = performance.now()
    assert.equal((await askFrom(other)).status, ChunkStatus.BUSY)
    const waited = performance.now() - started
    assert.ok(waited >= 250 && waited < 2_000, `BUSY after ${waited.toFixed(0)} ms`)
    assert.equal(server.counters.turns, 1)
    assert.equal(server.counters.turnsRunOut, 1)
    open()
    assert.equal((await held).status, ChunkStatus.OK)
  })

  it('waits longer for a chunk on its way when a redirect sent the asker', async () => {
    const { cache } = await seededCache(chunks.slice(0, 1))
    const waits: Array<number | undefined> = []
    const servable: ServableCache = {
      has: (id, ci) => cache.has(id, ci),
      readChunk: async (...a) => await cache.readChunk(...a),
      findByDigest: async (d, o) => { waits.push(o?.waitMs); return await cache.findByDigest(d, o) }
    }
    const node = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    const server = new ChunkServer({ libp2p: node, cache: servable })
    await server.start()
    closers.push(async () => { await server.stop(); await node.stop() })
    const addr = multiaddr(`${announceAddrs(node)[0]!}/p2p/${node.peerId.toString()}`)
    for (const accept of [0, AcceptFlags.REDIRECT, AcceptFlags.REDIRECTED]) {
      const stream = await client.dialProtocol(addr, CHUNK_PROTOCOL)
      for await (const r of exchangeChunks(stream, [nameOf(chunks[0]!)], { timeoutMs: 3000, accept })) assert.equal(r.status, ChunkStatus.OK)
    }
    assert.deepEqual(waits, [undefined, undefined, REDIRECTED_WAIT_MS])
  })

  it('never reads where the hints point: lying hints get the right bytes and evict nothing', async () => {
    const { cache, dir } = await seededCache(chunks.slice(0, 6))
    await cache.close()
    // corrupt chunk 1 on disk; a fresh process has verified nothing yet
    const fh = await open(join(dir, `${blob.blobId}.blob.data`), 'r+')
    await fh.write(Buffer.alloc(512, 0xee), 0, 512, chunks[1]!.uncompressedOffset)
    await fh.close()
    const reopened = await BlobCache.open(dir)
    closers.push(async () => { await reopened.close() })
    const { server, addr } = await startServer(reopened)

    // chunk 2 asked for with hints naming corrupted chunk 1 (and a made-up size in another entry)
    const liar = { ...nameOf(chunks[2]!), ci: 1 }
    const wrongSize = { ...nameOf(chunks[3]!), size: chunks[3]!.uncompressedSize - 1 }
    const replies = await ask(addr, [liar, wrongSize])
    assert.equal(replies[0]!.status, ChunkStatus.OK)
    assert.ok(replies[0]!.payload!.equals(plain[2]!))
    assert.equal(replies[1]!.status, ChunkStatus.NOT_FOUND)
    assert.ok(reopened.has(blob.blobId, 1), 'the corrupted chunk was never read, so never unmarked by a liar')
    assert.ok(reopened.has(blob.blobId, 3))

    // asked for by its own digest, the corrupted chunk is found bad, unmarked, and not served
    const [bad] = await ask(addr, [nameOf(chunks[1]!)])
    assert.equal(bad!.status, ChunkStatus.NOT_FOUND)
    assert.equal(reopened.has(blob.blobId, 1), false)
    assert.equal(server.counters.chunksServed, 1)
  })

  it('aborts malformed and idle streams and keeps serving', async () => {
    const { cache } = await seededCache(chunks.slice(0, 3))
    const { server, addr } = await startServer(cache, { readTimeoutMs: 300 })
    const garbage = [
      Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3]), // length far past the bound
      Buffer.from([0, 0, 0, 5, 9, 0, 0, 1, 0]), // version 9
      Buffer.from([0, 0, 0, 76, 1, 0, 0, 1, 1, 2, 3]) // cut short, then closed
    ]
    for (const g of garbage) {
      const s = await client.dialProtocol(addr, CHUNK_PROTOCOL)
      s.send(g)
      await s.close().catch(() => {})
      // the server resets the stream: reading ends (with or without an error), it never hangs
      await (async () => { for await (const _ of s) { /* nothing expected */ } })().catch(() => {})
    }
    const idle = await client.dialProtocol(addr, CHUNK_PROTOCOL)
    const idleEnded = (async () => { for await (const _ of idle) { /* nothing */ } })().then(() => 'ended', () => 'reset')
    assert.ok(['ended', 'reset'].includes(await idleEnded))
    assert.equal(server.counters.malformed, 3)
    assert.equal(server.counters.aborted, 1, 'the idle stream hit the read deadline')

    const replies = await ask(addr, chunks.slice(0, 3).map(nameOf))
    assert.deepEqual(replies.map(r => r.status), [ChunkStatus.OK, ChunkStatus.OK, ChunkStatus.OK])
  })

  it('answers BUSY over the upload cap and paces uploads under a rate cap', async () => {
    const { cache } = await seededCache()
    const rate = 1 << 20
    const { server, addr } = await startServer(cache, { maxConcurrentUploads: 1, uploadBytesPerSecond: rate })
    const first = chunks.slice(0, 24) // 1.5 MiB: ~1.25 s at 1 MiB/s after the 256 KiB burst
    const bytes = first.reduce((n, c) => n + c.uncompressedSize, 0)
    const started = performance.now()
    const slow = ask(addr, first.map(nameOf))
    await new Promise(resolve => setTimeout(resolve, 200))
    assert.equal(server.counters.uploadsActive, 1)
    const refused = await ask(addr, chunks.slice(30, 33).map(nameOf))
    assert.deepEqual(refused.map(r => r.status), [ChunkStatus.BUSY, ChunkStatus.BUSY, ChunkStatus.BUSY])
    assert.equal(server.counters.refused, 1)
    const replies = await slow
    const ms = performance.now() - started
    assert.ok(replies.every((r, i) => r.status === ChunkStatus.OK && r.payload!.equals(plain[first[i]!.index]!)))
    const floor = (bytes - Math.max(256 << 10, rate / 4)) / rate * 1000
    assert.ok(ms >= floor * 0.9, `${bytes} bytes at ${rate} B/s took ${ms.toFixed(0)} ms, expected ≥ ${floor.toFixed(0)}`)
    assert.ok(ms < floor * 3 + 1000, `pacing too slow: ${ms.toFixed(0)} ms`)
    const after = await ask(addr, chunks.slice(30, 31).map(nameOf))
    assert.equal(after[0]!.status, ChunkStatus.OK, 'once the upload is done, the next is served')
  })

  it('stop() aborts uploads in progress and stops answering', async () => {
    const { cache } = await seededCache()
    const { server, addr } = await startServer(cache, { uploadBytesPerSecond: 256 << 10 })
    const stream = await client.dialProtocol(addr, CHUNK_PROTOCOL)
    const got: ChunkReply[] = []
    const reading = (async () => { for await (const r of exchangeChunks(stream, chunks.slice(0, 20).map(nameOf), { timeoutMs: 5000 })) got.push(r) })()
    await new Promise(resolve => setTimeout(resolve, 300))
    await server.stop()
    await assert.rejects(reading)
    assert.ok(got.length < 20)
    await assert.rejects(client.dialProtocol(addr, CHUNK_PROTOCOL), /protocol/i)
  })

  /**
   * A server whose every look-up waits for `open()`, so its uploads stay active while a test looks; `ask` sends one
   * chunk's request from `host` and resolves with its status.
   */
  async function gatedServer (cache: BlobCache, init: ChunkServerInit): Promise<{
    server: ChunkServer, open: () => void, ask: (host: Host, c: ChunkInfo, accept?: number) => Promise<ChunkStatus>
  }> {
    let open!: () => void
    const gate = new Promise<void>(resolve => { open = resolve })
    const node = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    const server = new ChunkServer({ libp2p: node, cache: lookUpFirst(cache, async () => { await gate }) }, init)
    await server.start()
    closers.push(async () => { await server.stop(); await node.stop() })
    const addr = multiaddr(`${announceAddrs(node)[0]!}/p2p/${node.peerId.toString()}`)
    const ask = async (host: Host, c: ChunkInfo, accept = 0): Promise<ChunkStatus> => {
      const stream = await host.dialProtocol(addr, CHUNK_PROTOCOL)
      for await (const r of exchangeChunks(stream, [nameOf(c)], { timeoutMs: 5000, accept })) return r.status
      throw new Error('no reply')
    }
    return { server, open, ask }
  }

  it('gives each asker a quarter of the slots for sure: one greedy asker borrows the rest only while a quarter stays free', async () => {
    const { cache } = await seededCache(chunks.slice(0, 12))
    const { server, open, ask } = await gatedServer(cache, { maxConcurrentUploads: 8 })
    const other = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    closers.push(async () => { await other.stop() })
    const greedy = chunks.slice(0, 8).map(async c => await ask(client, c))
    await until('the greedy asker to fill its slots', () => server.counters.uploadsActive + server.counters.refused === 8)
    assert.equal(server.counters.uploadsActive, 6, 'the greedy asker borrowed all but a quarter of the slots')
    assert.equal(server.counters.refused, 2)
    const newcomer = chunks.slice(8, 10).map(async c => await ask(other, c))
    await until('the newcomer to be admitted', () => server.counters.uploadsActive === 8)
    assert.equal(await ask(other, chunks[10]!), ChunkStatus.BUSY, 'no slot left at all')
    open()
    assert.deepEqual(await Promise.all(newcomer), [ChunkStatus.OK, ChunkStatus.OK], 'the newcomer was served during the greedy one')
    assert.deepEqual((await Promise.all(greedy)).sort(), [...Array<ChunkStatus>(6).fill(ChunkStatus.OK), ChunkStatus.BUSY, ChunkStatus.BUSY])
  })

  it('keeps a quarter more slots for requests a read waits for (URGENT) while uploads no read waits for fill the rest', async () => {
    const { cache } = await seededCache(chunks.slice(0, 16))
    const hosts = await Promise.all([0, 1, 2].map(async () => await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })))
    closers.push(async () => { for (const h of hosts) await h.stop() })
    const { URGENT } = AcceptFlags
    // 8 slots, 2 kept for reads; each asker sure of 2
    const a = await gatedServer(cache, { maxConcurrentUploads: 8 })
    // prefetch fills every slot: the greedy asker 6, another 2
    const prefetch = [...chunks.slice(0, 6).map(async c => await a.ask(client, c)), ...chunks.slice(6, 8).map(async c => await a.ask(hosts[0]!, c))]
    await until('prefetch to fill the slots', () => a.server.counters.uploadsActive === 8)
    assert.equal(await a.ask(hosts[1]!, chunks[8]!), ChunkStatus.BUSY, 'a prefetch request finds no slot')
    const reads = [a.ask(hosts[1]!, chunks[9]!, URGENT), a.ask(hosts[1]!, chunks[10]!, URGENT)]
    await until('the reads to be admitted', () => a.server.counters.uploadsActive === 10)
    assert.equal(a.server.counters.urgentUploads, 2)
    assert.equal(await a.ask(hosts[2]!, chunks[11]!, URGENT), ChunkStatus.BUSY, 'the slots kept for reads are taken')
    a.open()
    assert.deepEqual(await Promise.all(reads), [ChunkStatus.OK, ChunkStatus.OK])
    assert.ok((await Promise.all(prefetch)).every(s => s === ChunkStatus.OK))

    // an asker holding its share already gets no slot kept for reads by calling its request urgent
    const b = await gatedServer(cache, { maxConcurrentUploads: 4, maxUploadsPerPeer: 1, maxUrgentUploads: 2 })
    const greedy = chunks.slice(0, 4).map(async c => await b.ask(client, c))
    await until('the greedy asker to be answered', () => b.server.counters.uploadsActive + b.server.counters.refused === 4)
    assert.equal(b.server.counters.uploadsActive, 3, 'it borrowed while one slot stays free')
    const read1 = b.ask(hosts[0]!, chunks[4]!, URGENT)
    await until('a read to take the last slot', () => b.server.counters.uploadsActive === 4)
    assert.equal(await b.ask(client, chunks[5]!, URGENT), ChunkStatus.BUSY, 'past its share, URGENT takes no slot kept for reads')
    const read2 = b.ask(hosts[1]!, chunks[6]!, URGENT)
    await until('a read to take a slot kept for reads', () => b.server.counters.uploadsActive === 5)
    b.open()
    assert.deepEqual(await Promise.all([read1, read2]), [ChunkStatus.OK, ChunkStatus.OK])
    assert.deepEqual((await Promise.all(greedy)).sort(), [ChunkStatus.OK, ChunkStatus.OK, ChunkStatus.OK, ChunkStatus.BUSY])

    // uploads that reads all wait for keep to maxConcurrentUploads: a swarm that only reads is served as without the bit
    const c = await gatedServer(cache, { maxConcurrentUploads: 2 })
    const onlyReads = [c.ask(hosts[0]!, chunks[0]!, URGENT), c.ask(hosts[1]!, chunks[1]!, URGENT)]
    await until('reads to fill the slots', () => c.server.counters.uploadsActive === 2)
    assert.equal(await c.ask(hosts[2]!, chunks[2]!, URGENT), ChunkStatus.BUSY, 'reads alone keep to maxConcurrentUploads')
    c.open()
    assert.deepEqual(await Promise.all(onlyReads), [ChunkStatus.OK, ChunkStatus.OK])
  })

  it('resets the streams of an asker past maxStreamsPerPeer at once', async () => {
    const { cache } = await seededCache(chunks.slice(0, 2))
    const { server, addr } = await startServer(cache, { maxStreamsPerPeer: 2, readTimeoutMs: 5000 })
    const held = [await client.dialProtocol(addr, CHUNK_PROTOCOL), await client.dialProtocol(addr, CHUNK_PROTOCOL)]
    const third = await client.dialProtocol(addr, CHUNK_PROTOCOL)
    const started = performance.now()
    await (async () => { for await (const _ of third) { /* nothing */ } })().catch(() => {})
    assert.ok(performance.now() - started < 3000, 'the third stream ended long before the read deadline')
    await until('the refusal to be counted', () => server.counters.streamsRefused === 1)
    for (const s of held) s.abort(new Error('done'))
    await until('the held streams to end', () => server.counters.aborted === 2)
    const replies = await ask(addr, chunks.slice(0, 2).map(nameOf))
    assert.deepEqual(replies.map(r => r.status), [ChunkStatus.OK, ChunkStatus.OK], 'its streams ended, the asker is served again')
  })

  it('reads no further ahead for an asker than its byte budget while it does not read', async () => {
    const { cache } = await seededCache()
    const budget = 256 << 10
    const { server, addr } = await startServer(cache, { maxBytesPerPeer: budget, readTimeoutMs: 1500 })
    // 40 chunks of 64 KiB asked for, then nothing read: yamux grants the server a 256 KiB window and no more
    const stream = await client.dialProtocol(addr, CHUNK_PROTOCOL)
    stream.pause()
    stream.send(encodeRequest(chunks.slice(0, 40).map(nameOf)))
    await stream.close().catch(() => {})
    let most = 0
    const probe = setInterval(() => { most = Math.max(most, server.counters.bytesHeld) }, 2)
    try {
      await until('the stalled upload to be aborted', () => server.counters.aborted === 1)
    } finally {
      clearInterval(probe)
    }
    const chunk = Math.max(...chunks.map(c => c.uncompressedSize))
    assert.ok(most > 0 && most <= budget + chunk, `${most} bytes held for one asker (budget ${budget})`)
    assert.equal(server.counters.bytesHeld, 0, 'all returned once the upload ended')
    assert.equal(server.counters.uploadsActive, 0)
  })
})
