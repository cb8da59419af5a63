/**
 * The framing's deadlines and backpressure on real libp2p hosts: a frame trickled in byte by byte is cut at its
 * whole-frame deadline; a writer that awaits each send holds at most one send in a stream whose reader stopped,
 * however busy the connection's other streams keep the socket (every drain of it wakes every stream), and is
 * aborted once its reader took nothing for the deadline. The pieces of a large frame are told as they arrive,
 * small control frames not.
 */
import '../polyfill.js'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { Stream } from '@libp2p/interface'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { FrameReader, StreamTimeoutError, announceAddrs, createHost, encodeFrame, sendWithBackpressure, type Host } from './index.js'

const TRICKLE = '/rafspeer-test/trickle/1.0.0'
const STUCK = '/rafspeer-test/stuck/1.0.0'
const SINK = '/rafspeer-test/sink/1.0.0'
const PROGRESS = '/rafspeer-test/progress/1.0.0'
const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

describe('framing', () => {
  let reader: Host
  let writer: Host
  let addr: Multiaddr
  /** what the reader's handlers saw: the outcome of each trickled frame read */
  const trickled: Array<Promise<{ ms: number, err?: Error }>> = []

  before(async () => {
    reader = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    writer = await createHost({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    addr = multiaddr(`${announceAddrs(reader)[0]!}/p2p/${reader.peerId.toString()}`)
    await reader.handle(TRICKLE, (stream: Stream) => {
      const started = performance.now()
      const frames = new FrameReader(stream, { what: 'trickle', timeoutMs: 2_000, frameTimeoutMs: 600 })
      trickled.push(frames.readFrame(1024).then(() => ({ ms: performance.now() - started }), (err: Error) => ({ ms: performance.now() - started, err })))
    })
    // a reader that never reads: yamux grants the writer no window past the first
    await reader.handle(STUCK, (stream: Stream) => { stream.pause() })
    await reader.handle(SINK, (stream: Stream) => { stream.addEventListener('message', () => {}) })
    await reader.handle(PROGRESS, (stream: Stream) => {
      const frames = new FrameReader(stream, { what: 'progress', timeoutMs: 2_000, onBytes: n => { progress.push([n, framesRead]) } })
      progressRead.push((async () => { while (await frames.readFrame(1 << 20) !== undefined) framesRead++ })())
    })
  })
  /** the PROGRESS reader's onBytes calls: bytes, and frames read whole before them */
  const progress: Array<[number, number]> = []
  const progressRead: Array<Promise<void>> = []
  let framesRead = 0

  after(async () => {
    await writer?.stop()
    await reader?.stop()
  })

  it('tells of the pieces of a large frame as they arrive, not of small control frames', async () => {
    const stream = await writer.dialProtocol(addr, PROGRESS)
    // five small frames (a PENDING is three bytes), each read before the next is sent
    for (let i = 0; i < 5; i++) {
      stream.send(encodeFrame(Buffer.from([4, 0])))
      await sleep(20)
    }
    assert.equal(progress.length, 0, 'small frames are no progress')
    // then a 64 KiB frame in 4 KiB pieces: each piece told before the frame is whole
    const big = encodeFrame(Buffer.alloc(64 << 10, 7)).subarray()
    for (let off = 0; off < big.length; off += 4096) {
      stream.send(big.subarray(off, off + 4096))
      await sleep(5)
    }
    await stream.close()
    await progressRead[0]
    assert.equal(framesRead, 6)
    const told = progress.reduce((a, [n]) => a + n, 0)
    assert.ok(told >= 60 << 10 && progress.every(([n]) => n >= 1024), `${progress.length} pieces, ${told} bytes`)
    assert.ok(progress.some(([, read]) => read === 5), 'pieces told while the large frame was still arriving')
  })

  it('cuts a frame that trickles in at its whole-frame deadline, though every byte comes within the wait deadline', async () => {
    const stream = await writer.dialProtocol(addr, TRICKLE)
    const frame = encodeFrame(Buffer.alloc(100, 7)).subarray()
    let stopped = false
    const trickle = (async () => {
      // a byte every 150 ms: the 2 s wait deadline never fires, the whole frame would take 15 s
      for (let i = 0; i < frame.length && !stopped; i++) {
        try { stream.send(frame.subarray(i, i + 1)) } catch { return }
        await sleep(150)
      }
    })()
    const outcome = await Promise.race([trickled.at(-1) ?? new Promise<never>(() => {}), sleep(5_000).then(() => undefined)])
    stopped = true
    await trickle
    assert.ok(outcome !== undefined, 'the frame read was still open after 5 s')
    assert.ok(outcome.err instanceof StreamTimeoutError, `expected a timeout, got ${String(outcome.err)}`)
    assert.match(outcome.err.message, /frame not received in full within 600 ms/)
    assert.ok(outcome.ms >= 500 && outcome.ms < 2_000, `cut after ${outcome.ms.toFixed(0)} ms`)
  })

  it('holds at most one send for a reader that stopped, while other streams keep the socket draining, and aborts it', async () => {
    const PIECE = 256 << 10
    const stuck = await writer.dialProtocol(addr, STUCK)
    const sink = await writer.dialProtocol(addr, SINK)
    assert.equal(writer.getConnections(reader.peerId).length, 1, 'both streams share one connection')
    let maxStuckBuffer = 0
    let stuckSent = 0
    const started = performance.now()
    const stuckWriter = (async () => {
      for (;;) {
        await sendWithBackpressure(stuck, Buffer.alloc(PIECE), { timeoutMs: 1_500, what: 'stuck' })
        stuckSent += PIECE
        maxStuckBuffer = Math.max(maxStuckBuffer, stuck.writeBufferLength)
      }
    })().then(() => undefined, (err: Error) => ({ err, ms: performance.now() - started }))
    const probe = setInterval(() => { maxStuckBuffer = Math.max(maxStuckBuffer, stuck.writeBufferLength) }, 5)
    try {
      // 64 MiB through the other stream: every time the socket drains, the muxer wakes both streams
      for (let sent = 0; sent < 64 << 20; sent += PIECE) {
        await sendWithBackpressure(sink, Buffer.alloc(PIECE), { timeoutMs: 5_000, what: 'sink' })
        maxStuckBuffer = Math.max(maxStuckBuffer, stuck.writeBufferLength)
      }
      await sink.close()
      const failed = await stuckWriter
      assert.ok(failed !== undefined, 'the stuck writer ended without an error')
      assert.ok(failed.err instanceof StreamTimeoutError, `expected a timeout, got ${String(failed.err)}`)
      assert.match(failed.err.message, /took none of our bytes for 1500 ms/)
      assert.equal(stuck.status, 'aborted')
    } finally {
      clearInterval(probe)
    }
    // the window yamux grants a stream that is never read is 256 KiB: what was sent past it stays in the stream
    assert.ok(stuckSent <= 2 * PIECE, `${stuckSent} bytes accepted for a reader that read nothing`)
    assert.ok(maxStuckBuffer <= PIECE, `the stuck stream buffered ${maxStuckBuffer} bytes (one send is ${PIECE})`)
  })
})
