/**
 * Chunk streams kept open between requests, against real libp2p hosts: a holder asked many times is asked on few
 * streams; an idle stream is closed politely after its idle time (the holder counts no abort); a kept stream that
 * dies under a request is no fault of the holder's (the request goes again on a new stream); bytes on an idle stream
 * end it; a holder that ends its side after each request leaves no half-open stream behind, and one that keeps its
 * side open after ours closed has the stream aborted.
 */
import '../../polyfill.js'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { Stream } from '@libp2p/interface'
import { announceAddrs, createHost, type ChunkHolder, type Host, type HolderResolver, type PeerOutcome } from '../../p2p/index.js'
import { digestChunk, type ChunkInfo } from '../../rafs/index.js'
import { memoryChunks } from '../../test/helpers/memory-chunks.js'
import {
  CHUNK_PROTOCOL, ChunkChannel, ChunkStatus, chunkFrameReader, readChunkRequest, replyHeader, type ChunkName
} from './chunk-protocol.js'
import { ChunkServer } from './chunk-server.js'
import { NeighbourSource } from './neighbour-source.js'

const SIZE = 4096
const COUNT = 24

class OneHolder implements HolderResolver {
  readonly outcomes: PeerOutcome[] = []
  constructor (private readonly holder: ChunkHolder) {}
  async resolve (digests: Buffer[]): Promise<Map<string, ChunkHolder[]>> { return new Map(digests.map(d => [d.toString('hex'), [this.holder]])) }
  report (outcomes: PeerOutcome[]): void { this.outcomes.push(...outcomes) }
}

const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

describe('ChunkStreams', () => {
  const { blob, chunks, plain, cache } = memoryChunks(COUNT, SIZE)
  const byDigest = new Map(chunks.map(c => [c.digest.toString('hex'), c.index]))
  const nameOf = (c: ChunkInfo): ChunkName => ({ digest: c.digest, blobId: blob.blobId, ci: c.index, size: c.uncompressedSize })
  let client: Host
  const closers: Array<() => Promise<void>> = []

  before(async () => { client = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] }) })
  after(async () => {
    for (const c of closers.reverse()) await c().catch(() => {})
    await client?.stop()
  })

  const holderOf = (node: Host): ChunkHolder => ({ peerId: node.peerId.toString(), addrs: announceAddrs(node) })

  async function holder (): Promise<{ node: Host, server: ChunkServer, holder: ChunkHolder }> {
    const node = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    const server = new ChunkServer({ libp2p: node, cache })
    await server.start()
    closers.push(async () => { await server.stop(); await node.stop() })
    return { node, server, holder: holderOf(node) }
  }

  /** a holder that runs `serve` on each stream it is asked on */
  async function rogue (serve: (stream: Stream, n: number) => Promise<void>): Promise<{ holder: ChunkHolder, streams: () => number }> {
    const node = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    let streams = 0
    await node.handle(CHUNK_PROTOCOL, async (stream) => {
      try { await serve(stream, streams++) } catch (err) { stream.abort(err as Error) }
    })
    closers.push(async () => { await node.stop() })
    return { holder: holderOf(node), streams: () => streams }
  }

  /** answers a request's chunks from memory */
  async function answer (stream: Stream, reader: ReturnType<typeof chunkFrameReader>): Promise<boolean> {
    const req = await readChunkRequest(reader)
    if (req === undefined) return false
    for (const n of req.names) {
      const p = plain[byDigest.get(n.digest.toString('hex'))!]!
      stream.send(Buffer.concat([replyHeader(ChunkStatus.OK, p.length), p]))
    }
    return true
  }

  function source (resolver: HolderResolver, idleMs = 2_000): NeighbourSource {
    return new NeighbourSource({ libp2p: client, resolver }, { maxHolders: 1, streams: { idleMs } })
  }

  /** one fetch of `which`, every chunk checked */
  async function fetchAll (src: NeighbourSource, which: ChunkInfo[]): Promise<number> {
    let n = 0
    const verify = (c: ChunkInfo, p: Buffer): boolean => digestChunk('blake3', p).equals(c.digest)
    for await (const f of src.fetch(blob, which, { signal: AbortSignal.timeout(10_000), verify })) {
      assert.ok(f.plaintext.equals(plain[f.chunk.index]!))
      n++
    }
    return n
  }

  const chunkStreamsOpen = (): number => client.getConnections().flatMap(c => c.streams).filter(s => s.protocol === CHUNK_PROTOCOL).length

  it('asks a holder many times on a few streams, and closes an idle one politely', async () => {
    const { server, holder: h } = await holder()
    const src = source(new OneHolder(h), 150)
    for (const c of chunks) assert.equal(await fetchAll(src, [c]), 1)
    assert.equal(src.counters.requests, COUNT)
    assert.equal(src.streams.counters.opened, 1)
    assert.equal(src.streams.counters.reused, COUNT - 1)
    assert.equal(src.streams.idleCount, 1)
    // two fetches at once need two streams, both kept afterwards
    await Promise.all([fetchAll(src, chunks.slice(0, 4)), fetchAll(src, chunks.slice(4, 8))])
    assert.ok(src.streams.counters.opened <= 2, `streams opened: ${src.streams.counters.opened}`)
    await sleep(400)
    assert.equal(src.streams.idleCount, 0)
    assert.ok(src.streams.counters.closedIdle >= 1)
    assert.equal(chunkStreamsOpen(), 0)
    // the holder saw the asker end its streams between requests: no abort, no malformed request
    assert.equal(server.counters.aborted, 0)
    assert.equal(server.counters.malformed, 0)
    assert.equal(server.counters.chunksServed, COUNT + 8)
  })

  it('a kept stream that dies under a request is no fault of the holder: the request goes again on a new stream', async () => {
    // each stream: the first request answered, the second reset (the holder's end of a stream kept too long)
    const r = await rogue(async (stream) => {
      const reader = chunkFrameReader(stream, 'rogue', 10_000)
      await answer(stream, reader)
      await readChunkRequest(reader)
      stream.abort(new Error('gone'))
    })
    const resolver = new OneHolder(r.holder)
    const src = source(resolver)
    assert.equal(await fetchAll(src, [chunks[0]!]), 1)
    assert.equal(await fetchAll(src, [chunks[1]!]), 1)
    assert.equal(src.counters.staleStreams, 1)
    assert.equal(src.counters.failedRequests, 0)
    assert.equal(r.streams(), 2)
    assert.ok(resolver.outcomes.every(o => !o.failed), 'the holder is not reported for it')
    src.close()
  })

  it('bytes on an idle stream end it; a holder that ends its side after each request leaves no stream open', async () => {
    const eager = await rogue(async (stream) => {
      const reader = chunkFrameReader(stream, 'rogue', 10_000)
      await answer(stream, reader)
      // a reply to a request not made yet
      await sleep(20)
      stream.send(replyHeader(ChunkStatus.NOT_FOUND))
      await readChunkRequest(reader).catch(() => undefined)
      await stream.close()
    })
    const src = source(new OneHolder(eager.holder))
    assert.equal(await fetchAll(src, [chunks[0]!]), 1)
    await sleep(100)
    assert.equal(await fetchAll(src, [chunks[1]!]), 1)
    assert.equal(src.streams.counters.reused, 0)
    assert.equal(src.streams.counters.opened, 2)
    assert.equal(src.counters.failedRequests, 0)
    src.close()

    const once = await rogue(async (stream) => {
      await answer(stream, chunkFrameReader(stream, 'rogue', 10_000))
      await stream.close()
    })
    const src2 = source(new OneHolder(once.holder))
    for (const c of chunks.slice(0, 6)) assert.equal(await fetchAll(src2, [c]), 1)
    assert.equal(src2.counters.failedRequests, 0)
    await sleep(100)
    assert.equal(chunkStreamsOpen(), 0)
    src2.close()
  })

  it('a holder that keeps its end of a closed stream open has the stream aborted after the deadline', async () => {
    let ended = 0
    const clinging = await rogue(async (stream) => {
      const reader = chunkFrameReader(stream, 'rogue', 10_000)
      await answer(stream, reader)
      // the asker closes; this holder never does, until the asker gives up on it
      await readChunkRequest(reader).catch(() => undefined)
      await new Promise<void>(resolve => { stream.addEventListener('close', () => { resolve() }, { once: true }) })
      ended++
    })
    const src = new NeighbourSource({ libp2p: client, resolver: new OneHolder(clinging.holder) }, { maxHolders: 1, requestTimeoutMs: 300, streams: { idleMs: 50 } })
    assert.equal(await fetchAll(src, [chunks[0]!]), 1)
    await sleep(150)
    assert.equal(src.streams.idleCount, 0)
    assert.equal(chunkStreamsOpen(), 1, 'closed at our end, held open at the holder\'s')
    await sleep(500)
    assert.equal(chunkStreamsOpen(), 0)
    assert.equal(ended, 1)
  })

  it('a channel carries exchanges one after another and refuses one while it is not idle', async () => {
    const { node } = await holder()
    const stream = await client.dialProtocol(node.getMultiaddrs(), CHUNK_PROTOCOL)
    const channel = new ChunkChannel(stream, 5_000, 'test')
    for (let round = 0; round < 3; round++) {
      const got: number[] = []
      for await (const r of channel.exchange(chunks.slice(round * 3, round * 3 + 3).map(nameOf))) {
        assert.equal(r.status, ChunkStatus.OK)
        got.push(r.i)
      }
      assert.deepEqual(got, [0, 1, 2])
      assert.ok(channel.usable)
    }
    // stopped after the first of two replies: the stream is aborted, not reused
    for await (const r of channel.exchange(chunks.slice(0, 2).map(nameOf))) { assert.equal(r.i, 0); break }
    assert.equal(channel.usable, false)
    await assert.rejects(async () => { for await (const r of channel.exchange([nameOf(chunks[0]!)])) assert.fail(String(r.status)) }, /not ready/)
  })
})
