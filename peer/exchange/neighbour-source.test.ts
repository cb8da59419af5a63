/**
 * The peer source against real libp2p nodes serving real BlobCaches, and hostile ones: one holder, several
 * (spread), a dead and a silent holder (failover, hedging), a holder sending wrong bytes (nothing bad yielded,
 * banned past the threshold, never asked again), a holder killed or stalling mid-transfer (what arrived is
 * yielded, no hang), a hung resolver, the caller's abort, and the fetcher topping up from the next source. A busy
 * holder's REDIRECT is followed (and, when the peer it named does not have the chunk, the holder is asked again
 * to send it itself); a holder that says PENDING is waited for, not hedged. A chunk still arriving keeps the
 * fetcher's idle deadline off.
 */
import '../../polyfill.js'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromString } from '@libp2p/peer-id'
import { BlobCache } from '../../cache/index.js'
import { digestChunk, type ChunkInfo, type RafsBlobInfo } from '../../rafs/index.js'
import type { ChunkSource, FetchedChunk } from '../fetch/index.js'
import {
  AcceptFlags, CHUNK_PROTOCOL, ChunkStatus, chunkFrameReader, readChunkRequest, readRequest, redirectReply, replyHeader, type ChunkRequest
} from './chunk-protocol.js'
import { ChunkServer, PENDING_INTERVAL_MS, REDIRECTED_WAIT_MS, type ChunkServerInit } from './chunk-server.js'
import { blobChunks, buildTestImage, chunksOf, MemoryChunkCache, type TestImage } from '../../test/helpers/fetch-kit.js'
import { DEFAULT_DEADLINE_MS, DEFAULT_TIMEOUT_MS, Fetcher } from '../fetch/index.js'
import { announceAddrs, createHost, type Host } from '../../p2p/index.js'
import type { ChunkHolder, HolderResolver, PeerOutcome } from '../../p2p/index.js'
import { DEFAULT_IDLE_FACTOR, MAX_REDIRECT_PEERS, NeighbourSource, PENDING_HOLD_LIMIT_MS, progressAtPace, type NeighbourSourceInit } from './neighbour-source.js'

/** A stand-in for the scheduler: the same holders for every digest (or per digest), outcomes recorded. */
class StaticResolver implements HolderResolver {
  readonly outcomes: PeerOutcome[] = []
  calls = 0
  constructor (private readonly holders: ChunkHolder[] | ((hex: string) => ChunkHolder[]), private readonly delayMs = 0) {}
  async resolve (digests: Buffer[]): Promise<Map<string, ChunkHolder[]>> {
    this.calls++
    // ignores the signal on purpose (a hung resolver); unref'd so it cannot hold the test process
    if (this.delayMs > 0) await new Promise(resolve => setTimeout(resolve, this.delayMs).unref())
    const out = new Map<string, ChunkHolder[]>()
    for (const d of digests) {
      const hex = d.toString('hex')
      const list = typeof this.holders === 'function' ? this.holders(hex) : this.holders
      if (list.length > 0) out.set(hex, list)
    }
    return out
  }

  report (outcomes: PeerOutcome[]): void { this.outcomes.push(...outcomes) }
  of (peerId: string): PeerOutcome[] { return this.outcomes.filter(o => o.peerId === peerId) }
}

/** Resolves when the asker gives up on the stream (or after a long while): a server that never answers. */
async function heldOpen (stream: { addEventListener: (e: 'close', f: () => void, o: { once: true }) => void }): Promise<void> {
  await new Promise<void>(resolve => {
    const t = setTimeout(resolve, 30_000)
    stream.addEventListener('close', () => { clearTimeout(t); resolve() }, { once: true })
  })
}

/** Serves the chunk protocol its own way: `reply` gets each request and the stream. */
type Behaviour = (names: Array<{ size: number }>, stream: Parameters<Parameters<Host['handle']>[1]>[0]) => Promise<void>

describe('NeighbourSource', () => {
  let img: TestImage
  let blob: RafsBlobInfo
  let chunks: ChunkInfo[]
  const plain: Buffer[] = []
  let root: string
  let client: Host
  const closers: Array<() => Promise<void>> = []
  let seq = 0

  before(async () => {
    img = await buildTestImage()
    blob = img.blobs[0]!
    const all = await blobChunks(img)
    chunks = all.chunks
    all.plain.forEach((b, i) => { plain[i] = b })
    root = await mkdtemp(join(tmpdir(), 'rafspeer-peer-source-'))
    client = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
  })

  after(async () => {
    for (const c of closers.reverse()) await c().catch(() => {})
    await client?.stop()
    await rm(root, { recursive: true, force: true })
    await img?.cleanup()
  })

  const holderOf = (node: Host): ChunkHolder => ({ peerId: node.peerId.toString(), addrs: announceAddrs(node) })

  /** a node serving a real BlobCache that holds `which` */
  async function seed (which: ChunkInfo[] = chunks, init: ChunkServerInit = {}): Promise<{ node: Host, server: ChunkServer, holder: ChunkHolder }> {
    const cache = await BlobCache.open(join(root, `seed${seq++}`))
    await cache.registerBlob(blob)
    for (const c of which) await cache.putChunk(blob.blobId, c, plain[c.index]!)
    const node = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    const server = new ChunkServer({ libp2p: node, cache }, init)
    await server.start()
    closers.push(async () => { await server.stop(); await node.stop(); await cache.close() })
    return { node, server, holder: holderOf(node) }
  }

  /** a node answering the chunk protocol with `behaviour`; `requests` counts what reached it */
  async function rogue (behaviour: Behaviour): Promise<{ node: Host, holder: ChunkHolder, requests: () => number }> {
    const node = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    let requests = 0
    await node.handle(CHUNK_PROTOCOL, async (stream) => {
      try {
        const names = await readRequest(chunkFrameReader(stream, 'rogue', 10_000))
        if (names === undefined) return
        requests++
        await behaviour(names, stream)
      } catch { stream.abort(new Error('rogue done')) }
    })
    closers.push(async () => { await node.stop() })
    return { node, holder: holderOf(node), requests: () => requests }
  }

  /** a node answering each request with `behaviour`, which sees what the request accepts; `requests` lists them */
  async function rogueWith (behaviour: (req: ChunkRequest, stream: Parameters<Parameters<Host['handle']>[1]>[0]) => Promise<void>): Promise<{ holder: ChunkHolder, requests: ChunkRequest[] }> {
    const node = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    const requests: ChunkRequest[] = []
    await node.handle(CHUNK_PROTOCOL, async (stream) => {
      try {
        const req = await readChunkRequest(chunkFrameReader(stream, 'rogue', 10_000))
        if (req === undefined) return
        requests.push(req)
        await behaviour(req, stream)
      } catch { stream.abort(new Error('rogue done')) }
    })
    closers.push(async () => { await node.stop() })
    return { holder: holderOf(node), requests }
  }

  /** the next source after the neighbours: every chunk at once, counted */
  function countingRegistry (): { source: ChunkSource, chunks: () => number } {
    let n = 0
    return {
      source: {
        name: 'registry',
        async * fetch (_blob, asked): AsyncGenerator<FetchedChunk> {
          for (const chunk of asked) { n++; yield { chunk, plaintext: Buffer.from(plain[chunk.index]!) } }
        }
      },
      chunks: () => n
    }
  }

  /** an honest holder of every chunk that sends each reply in pieces of `pieceBytes`, `gapMs` apart */
  async function pacedHolder (pieceBytes: number, gapMs: number): Promise<{ holder: ChunkHolder }> {
    const byDigest = new Map(chunks.map(c => [c.digest.toString('hex'), plain[c.index]!]))
    return await rogue(async (names, stream) => {
      for (const n of names as Array<{ size: number, digest: Buffer }>) {
        const bytes = byDigest.get(n.digest.toString('hex'))!
        const reply = Buffer.concat([replyHeader(ChunkStatus.OK, bytes.length), bytes])
        for (let off = 0; off < reply.length; off += pieceBytes) {
          if (!stream.send(reply.subarray(off, off + pieceBytes))) await stream.onDrain()
          await new Promise(resolve => setTimeout(resolve, gapMs))
        }
      }
      await stream.close()
    })
  }

  function source (resolver: HolderResolver, init: NeighbourSourceInit = {}): NeighbourSource {
    return new NeighbourSource({ libp2p: client, resolver }, init)
  }

  /** the fetcher's check, which the source calls on every chunk it receives */
  const verify = (c: ChunkInfo, plaintext: Buffer): boolean => digestChunk(blob.digester, plaintext).equals(c.digest)

  /** everything the source yields, each checked against the true plaintext */
  async function collect (src: ChunkSource, which: ChunkInfo[] = chunks, signal = AbortSignal.timeout(20_000)): Promise<Map<number, Buffer>> {
    const got = new Map<number, Buffer>()
    for await (const { chunk, plaintext } of src.fetch(blob, which, { signal, verify })) {
      assert.ok(!got.has(chunk.index), `chunk ${chunk.index} yielded twice`)
      assert.ok(plaintext.equals(plain[chunk.index]!), `chunk ${chunk.index}: wrong bytes yielded`)
      got.set(chunk.index, plaintext)
    }
    return got
  }

  const totalBytes = (list: ChunkInfo[]): number => list.reduce((n, c) => n + c.uncompressedSize, 0)

  it('fetches every chunk of a blob from one holder and reports it', async () => {
    const { holder, server } = await seed()
    const resolver = new StaticResolver([holder])
    const src = source(resolver)
    assert.equal(src.name.startsWith('peer:'), true)
    const got = await collect(src)
    assert.equal(got.size, chunks.length)
    assert.equal(src.counters.chunksFromPeers, chunks.length)
    assert.equal(src.counters.bytesFromPeers, totalBytes(chunks))
    assert.equal(server.counters.chunksServed, chunks.length)
    assert.ok(chunks.length > 64, 'the blob needs more than one request')
    assert.equal(src.counters.requests, 2)
    await collect(src, chunks.slice(0, 3))
    assert.equal(client.getConnections(peerIdFromString(holder.peerId)).length, 1, 'requests share one connection')
    const reported = resolver.of(holder.peerId)
    assert.equal(reported.reduce((n, o) => n + o.chunks, 0), chunks.length + 3)
    assert.ok(reported.every(o => !o.failed && !o.bad))
  })

  it('spreads chunks over several holders and yields only what they hold', async () => {
    const a = await seed()
    const b = await seed()
    const c = await seed()
    const partial = await seed(chunks.slice(0, 5))
    const src = source(new StaticResolver([a.holder, b.holder, c.holder]), { maxHolders: 3 })
    const got = await collect(src)
    assert.equal(got.size, chunks.length)
    for (const s of [a, b, c]) assert.ok(s.server.counters.chunksServed > chunks.length / 6, `holder served ${s.server.counters.chunksServed}`)

    // a holder with 5 chunks, listed for all: the other chunks come back NOT_FOUND and are left to the next source
    const few = await collect(source(new StaticResolver([partial.holder])))
    assert.deepEqual([...few.keys()].sort((x, y) => x - y), [0, 1, 2, 3, 4])
  })

  it('fails over from a dead holder at once and hedges a silent one', async () => {
    const good = await seed()
    const dead = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    const deadHolder = holderOf(dead)
    await dead.stop()
    const silent = await rogue(async (_names, stream) => { await heldOpen(stream) })

    let started = performance.now()
    const viaDead = source(new StaticResolver([deadHolder, good.holder]), { maxHolders: 1 })
    assert.equal((await collect(viaDead)).size, chunks.length)
    assert.ok(viaDead.counters.failedRequests >= 1)
    assert.ok(performance.now() - started < 2500)

    started = performance.now()
    const resolver = new StaticResolver([silent.holder, good.holder])
    const viaSilent = source(resolver, { maxHolders: 1, hedgeAfterMs: 100, requestTimeoutMs: 5000 })
    assert.equal((await collect(viaSilent)).size, chunks.length)
    const ms = performance.now() - started
    assert.ok(ms < 2500, `hedging should beat the 5 s request timeout, took ${ms.toFixed(0)} ms`)
    assert.ok(viaSilent.counters.hedges >= 1)
    assert.equal(viaSilent.counters.timeouts, 0, 'the silent request was cancelled, not timed out')
    assert.ok(silent.requests() >= 1)
  })

  it('a busy holder nobody else can stand in for is asked again after a pause, when the source may wait', async () => {
    const byDigest = new Map(chunks.map(c => [c.digest.toString('hex'), plain[c.index]!]))
    let busyLeft = 2
    const busy = await rogue(async (names, stream) => {
      const refuse = busyLeft-- > 0
      for (const n of names as Array<{ size: number, digest: Buffer }>) {
        const bytes = refuse ? Buffer.alloc(0) : byDigest.get(n.digest.toString('hex'))!
        const frame = Buffer.concat([replyHeader(refuse ? ChunkStatus.BUSY : ChunkStatus.OK, bytes.length), bytes])
        if (!stream.send(frame)) await stream.onDrain()
      }
      await stream.close()
    })
    const few = chunks.slice(0, 4)
    // without retries: BUSY sends the chunks on to the next source at once
    assert.equal((await collect(source(new StaticResolver([busy.holder]), { busyRetries: 0 }), few)).size, 0)
    busyLeft = 2
    const patient = source(new StaticResolver([busy.holder]), { busyRetries: 5, busyBackoffMs: 20 })
    assert.equal((await collect(patient, few)).size, few.length)
    assert.ok(patient.counters.busy > few.length, `busy answers: ${patient.counters.busy}`)
  })

  it('a chunk the fetcher withdrew (handed to the registry after a read waited) is asked no more', async () => {
    const byDigest = new Map(chunks.map(c => [c.digest.toString('hex'), plain[c.index]!]))
    const asked: string[][] = []
    const busy = await rogue(async (names, stream) => {
      const list = names as Array<{ size: number, digest: Buffer }>
      asked.push(list.map(n => n.digest.toString('hex')))
      const refuse = asked.length === 1
      for (const n of list) {
        const bytes = refuse ? Buffer.alloc(0) : byDigest.get(n.digest.toString('hex'))!
        const frame = Buffer.concat([replyHeader(refuse ? ChunkStatus.BUSY : ChunkStatus.OK, bytes.length), bytes])
        if (!stream.send(frame)) await stream.onDrain()
      }
      await stream.close()
    })
    const few = chunks.slice(0, 4)
    const gone = few[0]!
    const src = source(new StaticResolver([busy.holder]), { busyRetries: 5, busyBackoffMs: 20 })
    const got = new Map<number, Buffer>()
    // withdrawn once the holder said BUSY to the first request
    const withdrawn = (c: ChunkInfo): boolean => c.index === gone.index && asked.length > 0
    for await (const { chunk, plaintext } of src.fetch(blob, few, { signal: AbortSignal.timeout(20_000), verify, withdrawn })) got.set(chunk.index, plaintext)
    assert.deepEqual([...got.keys()].sort((x, y) => x - y), few.slice(1).map(c => c.index))
    assert.ok(asked.length >= 2)
    assert.ok(asked[0]!.includes(gone.digest.toString('hex')), 'asked before it was withdrawn')
    for (const list of asked.slice(1)) assert.ok(!list.includes(gone.digest.toString('hex')), 'never asked again')
  })

  it('with a locator, tells the fetcher how many neighbours have each chunk (it waits on chunks spreading)', async () => {
    const silent = await rogue(async () => { await new Promise(resolve => setTimeout(resolve, 5_000)) })
    const few = chunks.slice(0, 2)
    const counts = new Map<number, number>([[few[1]!.index, 2]])
    const locator = {
      locate: async () => new Map(few.map(c => [c.digest.toString('hex'), [silent.holder]])),
      report: () => {},
      holders: (blobId: string, ci: number): number => { assert.equal(blobId, blob.blobId); return counts.get(ci) ?? 0 }
    }
    const src = new NeighbourSource({ libp2p: client, resolver: new StaticResolver([]), locator }, { hedgeAfterMs: 60_000 })
    let count: ((c: ChunkInfo) => number) | undefined
    const controller = new AbortController()
    const run = (async () => {
      for await (const _ of src.fetch(blob, few, { signal: controller.signal, verify, holders: c => { count = c } })) assert.fail('nothing to yield')
    })().catch(() => {})
    await new Promise(resolve => setTimeout(resolve, 50))
    assert.ok(count !== undefined, 'registered its counts')
    assert.deepEqual(few.map(c => count!(c)), [0, 2])
    counts.set(few[0]!.index, 1)
    assert.equal(count(few[0]!), 1, 'as the have table says now')
    controller.abort()
    await run
  })

  it('follows a busy holder\'s REDIRECT; asks that holder again to send it when the peer it named lacks the chunk', async () => {
    const byDigest = new Map(chunks.map(c => [c.digest.toString('hex'), plain[c.index]!]))
    const few = chunks.slice(0, 4)
    /** a holder that sends every asker taking redirects on to `to`, and serves the others */
    const sender = async (to: () => ChunkHolder): Promise<{ holder: ChunkHolder, requests: ChunkRequest[] }> => await rogueWith(async (req, stream) => {
      for (const n of req.names) {
        const bytes = byDigest.get(n.digest.toString('hex'))!
        const frame = (req.accept & AcceptFlags.REDIRECT) !== 0
          ? redirectReply(to().peerId, to().addrs)
          : Buffer.concat([replyHeader(ChunkStatus.OK, bytes.length), bytes])
        if (!stream.send(frame)) await stream.onDrain()
      }
      await stream.close()
    })
    // the peer it names holds the chunks (and is known to the asker only through the redirect's addresses)
    const b = await seed(few)
    const a = await sender(() => b.holder)
    const src = source(new StaticResolver([a.holder]))
    assert.equal((await collect(src, few)).size, few.length)
    assert.equal(b.server.counters.chunksServed, few.length, 'every chunk came from the peer the redirect named')
    assert.equal(src.counters.redirects, few.length)
    assert.ok(a.requests.every(r => r.accept === AcceptFlags.REDIRECT))

    // the peer it names does not have them: the holder is asked again, without taking redirects, and sends them
    const empty = await seed([])
    const a2 = await sender(() => empty.holder)
    const src2 = source(new StaticResolver([a2.holder]))
    assert.equal((await collect(src2, few)).size, few.length)
    assert.equal(empty.server.counters.notFound, few.length)
    assert.ok(a2.requests.length >= 2)
    assert.ok(a2.requests.slice(1).every(r => (r.accept & AcceptFlags.REDIRECT) === 0 && (r.accept & AcceptFlags.REDIRECTED) !== 0))
  })

  it('chunks a holder sends on to one peer ride together in the requests queued for it, not one request each', async () => {
    const many = chunks.slice(0, 16)
    assert.ok(many.length === 16, 'the test image has 16 chunks or more')
    // every chunk sent on to the holder of all of them
    const b = await seed(many)
    const a = await rogueWith(async (req, stream) => {
      for (const _ of req.names) if (!stream.send(redirectReply(b.holder.peerId, b.holder.addrs))) await stream.onDrain()
      await stream.close()
    })
    const src = source(new StaticResolver([a.holder]), { maxHolders: 1 })
    assert.equal((await collect(src, many)).size, many.length)
    assert.equal(b.server.counters.chunksServed, many.length)
    assert.equal(src.counters.redirects, many.length)
    // at most the holder's streams' worth run alone (2, and 2 more for redirects); the rest joined a queued request
    assert.ok(b.server.counters.uploads <= 8, `${b.server.counters.uploads} requests for ${many.length} redirected chunks`)
    assert.ok(src.counters.joined >= many.length - b.server.counters.uploads, JSON.stringify(src.counters))
  })

  it('a hostile holder\'s REDIRECTs end: sent round in a circle, sent against the request, or to ever new peers', async () => {
    const byDigest = new Map(chunks.map(c => [c.digest.toString('hex'), plain[c.index]!]))
    const few = chunks.slice(0, 4)
    // two holders that send every asker to each other, whatever its request takes: a sends to b; b sends back to a
    // (asked already), so b is asked again without redirects, and a REDIRECT to that is a protocol error
    const sendAllTo = (to: () => ChunkHolder) => async (req: ChunkRequest, stream: Parameters<Parameters<Host['handle']>[1]>[0]): Promise<void> => {
      for (let i = 0; i < req.names.length; i++) if (!stream.send(redirectReply(to().peerId, to().addrs))) await stream.onDrain()
      await stream.close()
    }
    let aHolder: ChunkHolder | undefined
    let bHolder: ChunkHolder | undefined
    const a = await rogueWith(sendAllTo(() => bHolder!))
    const b = await rogueWith(sendAllTo(() => aHolder!))
    aHolder = a.holder
    bHolder = b.holder
    const circled = source(new StaticResolver([a.holder]))
    assert.equal((await collect(circled, few)).size, 0)
    // per chunk at most: a once, b following the redirect, b again without redirects
    assert.ok(a.requests.length + b.requests.length <= 1 + 2 * few.length, `requests: ${a.requests.length} + ${b.requests.length}`)
    assert.ok(b.requests.some(r => (r.accept & AcceptFlags.REDIRECT) === 0), 'b was asked once without redirects')

    // a holder that sends each chunk on to a peer nobody knows (its address: a port that takes TCP and hangs up):
    // the fetch dials at most MAX_REDIRECT_PEERS of them, then asks the holder again, which sends the chunks
    assert.ok(chunks.length > MAX_REDIRECT_PEERS + 2, `the test image has ${chunks.length} chunks`)
    let dials = 0
    const sink = createServer(socket => { dials++; socket.destroy() })
    await new Promise<void>(resolve => sink.listen(0, '127.0.0.1', resolve))
    closers.push(async () => { await new Promise(resolve => sink.close(resolve)) })
    const sinkAddr = `/ip4/127.0.0.1/tcp/${(sink.address() as AddressInfo).port}`
    const strangers = await Promise.all(chunks.map(async () => (await generateKeyPair('Ed25519')).publicKey.toString()))
    const scatterer = await rogueWith(async (req, stream) => {
      for (const n of req.names) {
        const bytes = byDigest.get(n.digest.toString('hex'))!
        const frame = (req.accept & AcceptFlags.REDIRECT) !== 0
          ? redirectReply(strangers[n.ci]!, [sinkAddr])
          : Buffer.concat([replyHeader(ChunkStatus.OK, bytes.length), bytes])
        if (!stream.send(frame)) await stream.onDrain()
      }
      await stream.close()
    })
    const scattered = source(new StaticResolver([scatterer.holder]))
    assert.equal((await collect(scattered)).size, chunks.length)
    assert.equal(scattered.counters.redirects, chunks.length)
    assert.ok(dials > 0 && dials <= MAX_REDIRECT_PEERS, `connections to peers only a redirect named: ${dials}`)
  })

  it('a holder that says PENDING (its own fetch of the chunk runs) is waited for, not hedged to another', async () => {
    const byDigest = new Map(chunks.map(c => [c.digest.toString('hex'), plain[c.index]!]))
    const fetching = await rogueWith(async (req, stream) => {
      for (const n of req.names) {
        const bytes = byDigest.get(n.digest.toString('hex'))!
        await new Promise(resolve => setTimeout(resolve, 50))
        stream.send(replyHeader(ChunkStatus.PENDING))
        await new Promise(resolve => setTimeout(resolve, 500))
        if (!stream.send(Buffer.concat([replyHeader(ChunkStatus.OK, bytes.length), bytes]))) await stream.onDrain()
      }
      await stream.close()
    })
    const other = await seed()
    const src = source(new StaticResolver([fetching.holder, other.holder]), { maxHolders: 1, hedgeAfterMs: 200 })
    assert.equal((await collect(src, chunks.slice(0, 1))).size, 1)
    assert.equal(src.counters.hedges, 0)
    assert.equal(other.server.counters.chunksServed, 0)
  })

  it('knows which holder it is asking for which chunk until that chunk\'s reply (a holder asking us back is not parked)', async () => {
    const byDigest = new Map(chunks.map(c => [c.digest.toString('hex'), plain[c.index]!]))
    let seen: (() => void) | undefined
    let release: (() => void) | undefined
    const holding = await rogueWith(async (req, stream) => {
      // the first chunk at once, the second held until the test looked
      const [first, second] = req.names.map(n => byDigest.get(n.digest.toString('hex'))!)
      if (!stream.send(Buffer.concat([replyHeader(ChunkStatus.OK, first!.length), first!]))) await stream.onDrain()
      stream.send(replyHeader(ChunkStatus.PENDING))
      await new Promise<void>(resolve => { release = resolve; seen?.() })
      if (!stream.send(Buffer.concat([replyHeader(ChunkStatus.OK, second!.length), second!]))) await stream.onDrain()
      await stream.close()
    })
    const src = source(new StaticResolver([holding.holder]), { maxHolders: 1 })
    const [a, b] = [chunks[0]!, chunks[1]!]
    const peer = holding.holder.peerId
    assert.equal(src.isAsking(a.digest, peer), false)
    const held = new Promise<void>(resolve => { seen = resolve })
    const it = src.fetch(blob, [a, b], { signal: AbortSignal.timeout(20_000), verify })[Symbol.asyncIterator]()
    const first = await it.next()
    assert.equal(first.done !== true && first.value.chunk.index, a.index)
    await held
    assert.equal(src.isAsking(a.digest, peer), false, 'answered')
    assert.equal(src.isAsking(b.digest, peer), true, 'asked, no reply yet')
    assert.equal(src.isAsking(b.digest, client.peerId.toString()), false, 'not asked of anyone else')
    release!()
    const second = await it.next()
    assert.equal(second.done !== true && second.value.chunk.index, b.index)
    assert.equal((await it.next()).done, true)
    assert.equal(src.isAsking(b.digest, peer), false)
  })

  it('a holder that keeps a request on PENDING keep-alives past what an honest one may is given up: the chunk comes from another', async () => {
    let stop = false
    const holding = await rogueWith(async (_req, stream) => {
      // keep-alives forever (an honest holder answers BUSY after REDIRECTED_WAIT_MS at most)
      while (!stop && stream.status === 'open') {
        stream.send(replyHeader(ChunkStatus.PENDING))
        await new Promise(resolve => setTimeout(resolve, 100))
      }
    })
    const other = await seed()
    const src = source(new StaticResolver([holding.holder, other.holder]), { maxHolders: 1, hedgeAfterMs: 200, pendingHoldMs: 600 })
    const started = performance.now()
    try {
      assert.equal((await collect(src, chunks.slice(0, 1))).size, 1)
    } finally { stop = true }
    assert.equal(src.counters.pendingOverstays, 1)
    assert.equal(other.server.counters.chunksServed, 1)
    assert.ok(performance.now() - started >= 600, 'the hold ran its limit first')
    // the honest default allows the longest honest hold and the keep-alives around it
    assert.ok(PENDING_HOLD_LIMIT_MS > REDIRECTED_WAIT_MS + PENDING_INTERVAL_MS)
  })

  it('waits more than one fetcher idle deadline for neighbours, and leaves the registry one within a read\'s deadline', () => {
    const src = source(new StaticResolver([]))
    assert.equal(src.idleFactor, DEFAULT_IDLE_FACTOR)
    assert.ok(DEFAULT_IDLE_FACTOR > 1)
    assert.ok((DEFAULT_IDLE_FACTOR + 1) * DEFAULT_TIMEOUT_MS <= DEFAULT_DEADLINE_MS, 'a read that waited out its neighbours still has a registry attempt')
    assert.equal(source(new StaticResolver([]), { idleFactor: 0.5 }).idleFactor, 1)
  })

  it('asks a holder for the chunks it is still fetching one request each, the ones it has together', async () => {
    const byDigest = new Map(chunks.map(c => [c.digest.toString('hex'), plain[c.index]!]))
    const served = await rogueWith(async (req, stream) => {
      for (const n of req.names) {
        const bytes = byDigest.get(n.digest.toString('hex'))!
        if (!stream.send(Buffer.concat([replyHeader(ChunkStatus.OK, bytes.length), bytes]))) await stream.onDrain()
      }
      await stream.close()
    })
    const want = chunks.slice(0, 6)
    // chunks 2 and 4: the holder only said PENDING for them
    const fetchingOf = new Set([want[2]!, want[4]!].map(c => c.digest.toString('hex')))
    const src = source(new StaticResolver(hex => [fetchingOf.has(hex) ? { ...served.holder, fetching: true } : served.holder]), { maxHolders: 1 })
    assert.equal((await collect(src, want)).size, want.length)
    const asked = served.requests.map(r => r.names.map(n => want.findIndex(c => c.digest.equals(n.digest))))
    assert.deepEqual(asked.flat().sort((a, b) => a - b), [0, 1, 2, 3, 4, 5], 'every chunk asked once')
    for (const i of [2, 4]) assert.ok(asked.some(r => r.length === 1 && r[0] === i), `chunk ${i} alone in its request (${JSON.stringify(asked)})`)
    assert.ok(asked.some(r => r.length > 1), `the chunks it has share requests (${JSON.stringify(asked)})`)
  })

  it('asks first for the chunks a read waits for, marked URGENT, a busy one again at once on a stream beside the prefetch\'s', async () => {
    const byDigest = new Map(chunks.map(c => [c.digest.toString('hex'), plain[c.index]!]))
    const want = chunks.slice(0, 8)
    assert.equal(want.length, 8)
    const last = want[7]!
    let running = 0
    const seen: Array<{ at: number, running: number, accept: number }> = []
    let refused = false
    const served = await rogueWith(async (req, stream) => {
      const at = want.findIndex(c => c.digest.equals(req.names[0]!.digest))
      running++
      seen.push({ at, running, accept: req.accept })
      try {
        // the read's chunk: BUSY the first time (the holder's own fetch of it runs), at once
        const busy = at === 7 && !refused
        if (busy) refused = true
        else await new Promise(resolve => setTimeout(resolve, 300))
        for (const n of req.names) {
          const bytes = busy ? Buffer.alloc(0) : byDigest.get(n.digest.toString('hex'))!
          if (!stream.send(Buffer.concat([replyHeader(busy ? ChunkStatus.BUSY : ChunkStatus.OK, bytes.length), bytes]))) await stream.onDrain()
        }
        await stream.close()
      } finally { running-- }
    })
    // the holder is fetching them all: one request each, queued in the batch's order
    const src = source(new StaticResolver([{ ...served.holder, fetching: true }]), { maxHolders: 1, busyBackoffMs: 20 })
    const got = new Set<number>()
    for await (const { chunk } of src.fetch(blob, want, { signal: AbortSignal.timeout(20_000), verify, urgent: c => c.index === last.index && !got.has(c.index) })) got.add(chunk.index)
    assert.equal(got.size, want.length)
    const order = seen.map(s => s.at)
    // (the first two requests start together: either may reach the holder first)
    const first = order.indexOf(7)
    assert.ok(first >= 0 && first <= 1, `the read's chunk among the first two, though queued last: ${JSON.stringify(order)}`)
    const again = order.indexOf(7, first + 1)
    assert.ok(again > 0 && again <= 3, `asked again right after its BUSY, not after the rest: ${JSON.stringify(order)}`)
    assert.equal(seen[again]!.running, 3, `beside the two running for the prefetch: ${JSON.stringify(seen)}`)
    assert.ok(Math.max(...seen.map(s => s.running)) <= 3)
    // the holder may admit the read's requests past its upload slots (`ChunkServer`), never the prefetch's
    assert.ok(seen.every(s => ((s.accept & AcceptFlags.URGENT) !== 0) === (s.at === 7)), JSON.stringify(seen))
  })

  it('a chunk whose holders are all gone goes to the next source at once, not once the fetch\'s other chunks are through', async () => {
    const byDigest = new Map(chunks.map(c => [c.digest.toString('hex'), plain[c.index]!]))
    // a holder that lost the chunk and breaks off (a dead or hostile one alike: the request fails)
    const broken = await rogue(async (_names, stream) => { stream.abort(new Error('gone')) })
    const slow = await rogueWith(async (req, stream) => {
      await new Promise(resolve => setTimeout(resolve, 1_500))
      for (const n of req.names) {
        const bytes = byDigest.get(n.digest.toString('hex'))!
        if (!stream.send(Buffer.concat([replyHeader(ChunkStatus.OK, bytes.length), bytes]))) await stream.onDrain()
      }
      await stream.close()
    })
    const [lost, kept] = [chunks[0]!, chunks[1]!]
    const src = source(new StaticResolver(hex => [hex === lost.digest.toString('hex') ? broken.holder : slow.holder]))
    const t0 = performance.now()
    const declined: Array<{ at: number, cis: number[] }> = []
    const got: Array<{ at: number, ci: number }> = []
    for await (const { chunk } of src.fetch(blob, [lost, kept], { signal: AbortSignal.timeout(20_000), verify, decline: cs => { declined.push({ at: performance.now() - t0, cis: cs.map(c => c.index) }) } })) {
      got.push({ at: performance.now() - t0, ci: chunk.index })
    }
    assert.deepEqual(got.map(g => g.ci), [kept.index], 'the slow holder\'s chunk came, the lost one was not yielded')
    assert.deepEqual(declined.map(d => d.cis), [[lost.index]], 'the lost chunk handed on')
    assert.ok(declined[0]!.at < got[0]!.at, `handed on at ${declined[0]!.at} ms, before the other chunk came at ${got[0]!.at} ms`)
  })

  it('never yields bad bytes: a lying holder is dropped, banned past the threshold, never asked again', async () => {
    const good = await seed()
    const liar = await rogue(async (names, stream) => {
      for (const n of names) {
        const junk = Buffer.alloc(n.size, 0x5a)
        if (!stream.send(Buffer.concat([replyHeader(ChunkStatus.OK, n.size), junk]))) await stream.onDrain()
      }
      await stream.close()
    })

    // the liar alone: nothing is yielded, it is banned after 3 bad chunks
    const resolver = new StaticResolver([liar.holder])
    const src = source(resolver, { banThreshold: 3 })
    const none = await collect(src)
    assert.equal(none.size, 0)
    assert.equal(src.counters.badChunks, 3, 'the request stops at the ban')
    assert.equal(src.counters.bannedPeers, 1)
    assert.deepEqual(src.bannedPeers(), [liar.holder.peerId])
    assert.ok(resolver.of(liar.holder.peerId).some(o => o.bad))

    // the liar first, then an honest holder: every chunk arrives right, the liar is not asked again
    const asked = liar.requests()
    const resolver2 = new StaticResolver([liar.holder, good.holder])
    const got = await collect(source(resolver2, { banThreshold: 2 }))
    assert.equal(got.size, chunks.length)
    const again = await collect(src, chunks, AbortSignal.timeout(5000))
    assert.equal(again.size, 0)
    assert.equal(src.counters.badChunks, 3, 'a banned peer is never asked again')

    // a fresh source with a high threshold: bad chunks are refetched from the honest holder
    const tolerant = source(new StaticResolver([liar.holder, good.holder]), { banThreshold: 1000, maxHolders: 1 })
    const all = await collect(tolerant, chunks.slice(0, 20))
    assert.equal(all.size, 20)
    assert.equal(tolerant.counters.badChunks, 20)
    assert.ok(liar.requests() > asked)
  })

  it('returns what arrived when a holder is killed mid-transfer, without hanging', async () => {
    const victim = await seed(chunks, { uploadBytesPerSecond: 512 << 10 })
    const src = source(new StaticResolver([victim.holder]), { requestTimeoutMs: 2000 })
    const started = performance.now()
    setTimeout(() => { void victim.node.stop() }, 400)
    const got = await collect(src)
    const ms = performance.now() - started
    assert.ok(got.size > 0 && got.size < chunks.length, `got ${got.size} chunks`)
    assert.ok(ms < 2000 + 1500, `took ${ms.toFixed(0)} ms`)
    assert.ok(src.counters.failedRequests >= 1)
  })

  it('gives up on a holder that stalls mid-transfer after requestTimeoutMs', async () => {
    const staller = await rogue(async (names, stream) => {
      const first = plain[chunks.find(c => c.uncompressedSize === names[0]!.size)!.index]!
      stream.send(Buffer.concat([replyHeader(ChunkStatus.OK, first.length), first]))
      await heldOpen(stream)
    })
    const src = source(new StaticResolver([staller.holder]), { requestTimeoutMs: 500, hedgeAfterMs: 100 })
    const started = performance.now()
    const got = await collect(src, chunks.slice(0, 8))
    const ms = performance.now() - started
    assert.equal(got.size, 1)
    assert.ok(ms >= 450 && ms < 2500, `took ${ms.toFixed(0)} ms`)
    assert.equal(src.counters.timeouts, 1)
  })

  it('answers nothing (at once) when the resolver hangs, and stops when the caller aborts', async () => {
    const hung = source(new StaticResolver([], 10_000), { resolveTimeoutMs: 100 })
    let started = performance.now()
    assert.equal((await collect(hung)).size, 0)
    assert.ok(performance.now() - started < 1000)
    assert.equal(hung.counters.resolveFailures, 1)

    const slow = await seed(chunks, { uploadBytesPerSecond: 256 << 10 })
    const src = source(new StaticResolver([slow.holder]))
    const ac = new AbortController()
    started = performance.now()
    setTimeout(() => ac.abort(new Error('reader gone')), 300)
    await assert.rejects(collect(src, chunks, ac.signal), /reader gone/)
    assert.ok(performance.now() - started < 1500)
  })

  it('through the fetcher, a slow honest holder is never taken for a liar: late copies of hedged chunks check out', async () => {
    const byDigest = new Map(chunks.map(c => [c.digest.toString('hex'), plain[c.index]!]))
    // an honest holder that answers late: by then its chunks were hedged to the other holder, some delivered already
    const slow = await rogue(async (names, stream) => {
      await new Promise(resolve => setTimeout(resolve, 250))
      for (const n of names as Array<{ size: number, digest: Buffer }>) {
        const bytes = byDigest.get(n.digest.toString('hex'))!
        if (!stream.send(Buffer.concat([replyHeader(ChunkStatus.OK, bytes.length), bytes]))) await stream.onDrain()
      }
      await stream.close()
    })
    const fast = await seed(chunks, { uploadBytesPerSecond: 1 << 20 })
    const src = source(new StaticResolver([slow.holder, fast.holder]), { maxHolders: 2, hedgeAfterMs: 100, banThreshold: 1 })
    const fetcher = new Fetcher({ cache: new MemoryChunkCache(), sources: [src] }, { retries: 0 })
    try {
      const path = '/e.bin'
      const bytes = await fetcher.read(img, img.reader.lookup(path), 0, img.files[path]!.length)
      assert.ok(bytes.equals(img.files[path]!))
      assert.ok(src.counters.hedges >= 1, 'the slow holder was hedged')
      assert.ok(slow.requests() >= 1)
      assert.equal(src.counters.badChunks, 0, 'no honest copy counted as bad')
      assert.deepEqual(src.bannedPeers(), [])
      assert.equal(fetcher.counters.verifyFailures, 0)
    } finally {
      fetcher.stop()
    }
  })

  it('through the fetcher, a chunk still arriving is progress: a slow holder\'s chunks are not cut off at the idle deadline and fetched again', async () => {
    // an honest holder on a slow uplink: each chunk in 4 KiB pieces 40 ms apart (a 64 KiB chunk takes ~0.6 s)
    const slow = await pacedHolder(4096, 40)
    const registry = countingRegistry()
    const progressed: number[] = []
    // progress in steps of 16 KiB (a quarter of a chunk; 64 KiB by default): 100 KiB/s is a live transfer
    const peers = source(new StaticResolver([slow.holder]), { progressStepBytes: 16 << 10 })
    const watched: ChunkSource = {
      name: peers.name,
      fetch: (b, asked, opts) => peers.fetch(b, asked, { ...opts, progress: n => { progressed.push(n); opts.progress?.(n) } })
    }
    // the idle deadline (300 ms) is half a chunk's transfer: only the bytes on their way keep it off
    const fetcher = new Fetcher({ cache: new MemoryChunkCache(), sources: [watched, registry.source] }, { retries: 0, timeoutMs: 300 })
    try {
      const path = '/a.bin'
      const bytes = await fetcher.read(img, img.reader.lookup(path), 0, img.files[path]!.length)
      assert.ok(bytes.equals(img.files[path]!))
      assert.equal(registry.chunks(), 0, 'nothing fetched again from the registry')
      assert.equal(fetcher.counters.bytesBySource.registry, 0)
      assert.ok(progressed.length > 0 && progressed.every(n => n >= 16 << 10), `progress reported in steps: ${progressed.slice(0, 5).join(', ')}`)
    } finally {
      fetcher.stop()
    }
  })

  it('a holder trickling a chunk slower than a live transfer still meets the idle deadline: the next source serves', async () => {
    // 2 KiB every 150 ms (~13 KiB/s): never 16 KiB within a second
    const trickler = await pacedHolder(2048, 150)
    const registry = countingRegistry()
    const peers = source(new StaticResolver([trickler.holder]), { progressStepBytes: 16 << 10 })
    const fetcher = new Fetcher({ cache: new MemoryChunkCache(), sources: [peers, registry.source] }, { retries: 0, timeoutMs: 300 })
    try {
      const path = '/a.bin'
      const started = performance.now()
      const bytes = await fetcher.read(img, img.reader.lookup(path), 0, img.files[path]!.length)
      assert.ok(bytes.equals(img.files[path]!))
      assert.ok(registry.chunks() > 0, 'the registry served what the trickler held back')
      assert.ok(performance.now() - started < 5_000, 'the read was not held for the trickle')
    } finally {
      fetcher.stop()
    }
  })

  it('progressAtPace: bytes count in steps reached within a second, not a trickle', () => {
    let t = 0
    const told: number[] = []
    const paced = progressAtPace(n => told.push(n), 16 << 10, () => t)
    for (let i = 0; i < 8; i++) { t += 100; paced(4 << 10) }
    assert.deepEqual(told, [16 << 10, 16 << 10], 'a 40 KiB/s transfer: a step every 400 ms')
    told.length = 0
    for (let i = 0; i < 20; i++) { t += 500; paced(4 << 10) }
    assert.deepEqual(told, [], 'a trickle of 8 KiB/s never makes a step within a second')
  })

  it('feeds the fetcher: peers first, the next source tops up what they lack', async () => {
    const half = chunks.filter(c => c.index % 2 === 0)
    const { holder } = await seed(half)
    const peers = source(new StaticResolver([holder]))
    const registry = countingRegistry()
    const fetcher = new Fetcher({ cache: new MemoryChunkCache(), sources: [peers, registry.source] }, { retries: 0 })
    try {
      for (const path of ['/a.bin', '/e.bin', '/dir/c.bin']) {
        const nid = img.reader.lookup(path)
        const bytes = await fetcher.read(img, nid, 0, img.files[path]!.length)
        assert.ok(bytes.equals(img.files[path]!), path)
      }
      const c = fetcher.counters
      assert.ok(c.bytesBySource.peer > 0 && c.bytesBySource.registry > 0)
      assert.equal(c.verifyFailures, 0)
      const wanted = new Set(['/a.bin', '/e.bin', '/dir/c.bin'].flatMap(p => chunksOf(img, p).map(x => x.index)))
      assert.equal(peers.counters.chunksFromPeers + registry.chunks(), wanted.size)
    } finally {
      fetcher.stop()
    }
  })
})
