/**
 * The one framing of rafspeer's libp2p protocols: every message is a frame, an unsigned varint length (as
 * it-length-prefixed and the rest of libp2p write it) followed by that many body bytes. Both the scheduler
 * protocol and the chunk protocol speak it; this file is the only place that reads or writes frames.
 *
 * Reading ({@link FrameReader}) is bounded and deadline-checked: a frame longer than the caller's bound is refused
 * before any of it is buffered, a wait for bytes longer than `timeoutMs` aborts the stream (and, with
 * `frameTimeoutMs`, so does a frame not complete that long after its first byte: a peer trickling a byte per wait
 * cannot hold a stream open), and input the caller has not consumed past `highWaterBytes` pauses the stream (yamux
 * then stops granting the sender window), so a peer that sends faster than we read cannot grow our memory. A reader
 * may be told of the input as it arrives (`onBytes`, pieces of 1 KiB and more): a large frame still on its way is
 * progress to a caller with a deadline of its own.
 *
 * Writing ({@link sendWithBackpressure}) returns only once the stream has handed everything to the muxer. Waiting
 * for a 'drain' event is not enough: the muxer wakes every stream of a connection on each drain of the socket and
 * on each window update, and a writer that sent again on every wake-up would queue far more than the reader takes
 * (a neighbour reading slowly drove a daemon past 1 GiB that way). A reader that takes none of our bytes for
 * `timeoutMs` has its stream aborted.
 *
 * @example
 * ```ts
 * const reader = new FrameReader(stream, { what: 'chunk request from ' + peer, timeoutMs: 10_000, frameTimeoutMs: 10_000 })
 * const body = await reader.readFrame(MAX_REQUEST_BYTES) // Uint8ArrayList, or undefined at a clean end
 * await sendWithBackpressure(stream, encodeFrame(reply), { timeoutMs: 10_000, what })
 * ```
 */
import type { Stream } from '@libp2p/interface'
import { decode as decodeVarint, encode as encodeVarint } from 'uint8-varint'
import { Uint8ArrayList } from 'uint8arraylist'
import { RafspeerError } from '../base/index.js'

/** a length above 2^35 cannot be a frame of ours: five varint bytes are the most we read */
const MAX_VARINT_BYTES = 5
export const DEFAULT_HIGH_WATER_BYTES = 8 << 20

/** A peer broke the framing: a frame over its bound, a stream that ended inside a frame. */
export class FramingError extends RafspeerError<'RAFSPEER_ERR_P2P_FRAMING'> {
  constructor (message: string, options?: { cause?: unknown }) { super('RAFSPEER_ERR_P2P_FRAMING', message, options) }
}

/** Nothing arrived (or could be sent) within the deadline; the stream was aborted. */
export class StreamTimeoutError extends RafspeerError<'RAFSPEER_ERR_P2P_TIMEOUT'> {
  constructor (message: string) { super('RAFSPEER_ERR_P2P_TIMEOUT', message) }
}

/** The stream was closed or reset before all we sent left it. */
export class StreamClosedError extends RafspeerError<'RAFSPEER_ERR_P2P_CLOSED'> {
  constructor (message: string) { super('RAFSPEER_ERR_P2P_CLOSED', message) }
}

/** The length prefix of a frame whose body is `bodyLength` bytes. */
export function frameHeader (bodyLength: number): Uint8Array {
  return encodeVarint(bodyLength)
}

/** A whole frame: `parts` (concatenated, not copied) behind their total length. */
export function encodeFrame (...parts: Array<Uint8Array | Uint8ArrayList>): Uint8ArrayList {
  let n = 0
  for (const p of parts) n += p.byteLength
  return new Uint8ArrayList(frameHeader(n), ...parts)
}

export interface FrameReaderInit {
  /** names the stream in errors (`chunk request from <peer>`) */
  what: string
  /** deadline of every wait for bytes; none when absent (a long-lived session) */
  timeoutMs?: number
  /** deadline of a whole frame, from the start of its read (none when absent) */
  frameTimeoutMs?: number
  /** unconsumed input above which the stream is paused (8 MiB) */
  highWaterBytes?: number
  /** the errors to raise, so that each protocol reports its own codes */
  malformed?: (message: string) => Error
  timeout?: (message: string) => Error
  /**
   * told of each piece of input of at least `PROGRESS_MIN_BYTES` as it arrives (before a frame is whole): a large
   * frame still arriving over a slow link is progress; small control frames (a PENDING) are not
   */
  onBytes?: (bytes: number) => void
}

/** a piece of input this big counts as bytes of a payload on its way ({@link FrameReaderInit.onBytes}) */
export const PROGRESS_MIN_BYTES = 1024

/** Frames off a libp2p stream; see the file comment. One reader per stream, for the stream's whole life. */
export class FrameReader {
  /** {@link FrameReaderInit.onBytes}; a stream that carries one exchange after another sets it for each */
  onBytes: ((bytes: number) => void) | undefined
  private readonly buf = new Uint8ArrayList()
  private readonly highWater: number
  private readonly what: string
  private readonly timeoutMs: number | undefined
  private readonly frameTimeoutMs: number | undefined
  private readonly malformed: (message: string) => Error
  private readonly timeout: (message: string) => Error
  private ended = false
  private error: Error | undefined
  private wake: (() => void) | undefined
  private readonly detach: () => void

  constructor (private readonly stream: Stream, init: FrameReaderInit) {
    this.what = init.what
    this.timeoutMs = init.timeoutMs
    this.frameTimeoutMs = init.frameTimeoutMs
    this.highWater = init.highWaterBytes ?? DEFAULT_HIGH_WATER_BYTES
    this.malformed = init.malformed ?? (m => new FramingError(m))
    this.timeout = init.timeout ?? (m => new StreamTimeoutError(m))
    // what is already in flight when we pause still arrives (up to a yamux window): the stream must hold it
    stream.maxReadBufferLength = Math.max(stream.maxReadBufferLength, this.highWater * 3)
    this.onBytes = init.onBytes
    const onMessage = (evt: { data: Uint8Array | Uint8ArrayList }): void => {
      this.buf.append(evt.data)
      if (this.onBytes !== undefined && evt.data.byteLength >= PROGRESS_MIN_BYTES) this.onBytes(evt.data.byteLength)
      if (this.buf.byteLength > this.highWater && stream.readStatus === 'readable') stream.pause()
      this.wake?.()
    }
    const onClose = (evt: Event): void => {
      this.error ??= (evt as Event & { error?: Error }).error
      this.ended = true
      this.wake?.()
    }
    // a FIN can be dispatched just before the data of its own last frame: end on the next turn
    const onRemoteCloseWrite = (): void => { setTimeout(() => { this.ended = true; this.wake?.() }, 0) }
    stream.addEventListener('message', onMessage)
    stream.addEventListener('close', onClose)
    stream.addEventListener('remoteCloseWrite', onRemoteCloseWrite)
    this.detach = () => {
      stream.removeEventListener('message', onMessage)
      stream.removeEventListener('close', onClose)
      stream.removeEventListener('remoteCloseWrite', onRemoteCloseWrite)
    }
    if (stream.readStatus === 'closed' || stream.readStatus === 'closing') this.ended = true
  }

  /** Bytes received and not yet taken. */
  get buffered (): number { return this.buf.byteLength }

  /** At least `n` bytes buffered; false when the stream ended with fewer. `deadline`: the frame's, if any. */
  private async fill (n: number, deadline: number | undefined): Promise<boolean> {
    while (this.buf.byteLength < n) {
      if (this.ended) {
        if (this.error !== undefined) throw this.error
        return false
      }
      let ms = this.timeoutMs
      let message = `${this.what}: nothing received for ${ms} ms`
      if (deadline !== undefined && (ms === undefined || deadline - performance.now() < ms)) {
        ms = Math.max(0, deadline - performance.now())
        message = `${this.what}: frame not received in full within ${this.frameTimeoutMs} ms`
      }
      let timer: NodeJS.Timeout | undefined
      if (ms !== undefined) {
        timer = setTimeout(() => {
          const err = this.timeout(message)
          this.error ??= err
          this.ended = true
          this.stream.abort(err)
          this.wake?.()
        }, ms)
      }
      try {
        await new Promise<void>(resolve => { this.wake = resolve })
      } finally {
        this.wake = undefined
        clearTimeout(timer)
      }
    }
    return true
  }

  private consumed (): void {
    if (this.stream.readStatus === 'paused' && this.buf.byteLength < this.highWater / 2) {
      try { this.stream.resume() } catch {}
    }
  }

  /**
   * The next frame's body (a view of the received bytes: no copy), or undefined when the stream ended cleanly
   * between frames. Throws the `malformed` error on a body longer than `maxBytes` or a stream that ends inside a
   * frame, the `timeout` error past either deadline, and the stream's own error when it was reset.
   */
  async readFrame (maxBytes: number): Promise<Uint8ArrayList | undefined> {
    // the frame's deadline runs from its first byte: a long-lived session may idle between frames (each wait for
    // that byte is bounded by `timeoutMs` alone)
    if (!(await this.fill(1, undefined))) return undefined
    const deadline = this.frameTimeoutMs === undefined ? undefined : performance.now() + this.frameTimeoutMs
    let prefix = 0
    for (;;) {
      if (prefix === MAX_VARINT_BYTES) throw this.malformed(`${this.what}: frame length prefix longer than ${MAX_VARINT_BYTES} bytes`)
      if (!(await this.fill(prefix + 1, deadline))) throw this.malformed(`${this.what}: stream ended inside a frame length`)
      if ((this.buf.get(prefix++) & 0x80) === 0) break
    }
    const length = decodeVarint(this.buf)
    if (length > maxBytes) throw this.malformed(`${this.what}: frame of ${length} bytes (at most ${maxBytes})`)
    if (!(await this.fill(prefix + length, deadline))) {
      throw this.malformed(`${this.what}: stream ended inside a frame (${this.buf.byteLength - prefix} of ${length} bytes)`)
    }
    const body = this.buf.sublist(prefix, prefix + length)
    this.buf.consume(prefix + length)
    this.consumed()
    return body
  }

  /** Every frame until the stream ends (each at most `maxBytes`). */
  async * frames (maxBytes: number): AsyncGenerator<Uint8ArrayList> {
    for (let f = await this.readFrame(maxBytes); f !== undefined; f = await this.readFrame(maxBytes)) yield f
  }

  /**
   * Stops listening: later bytes are not buffered here (the stream's own bounded read buffer takes them, and
   * resets the stream when they exceed it). Call when the stream is done with, or about to be aborted.
   */
  release (): void {
    this.ended = true
    this.detach()
    this.buf.consume(this.buf.byteLength)
    this.wake?.()
  }
}

export interface SendOptions {
  /** how long the reader may take none of our bytes before the stream is aborted */
  timeoutMs: number
  what: string
  signal?: AbortSignal
  /** the error to raise past the deadline (default a StreamTimeoutError) */
  timeout?: (message: string) => Error
}

/**
 * Sends `data` and returns once the stream has handed all of it to the muxer (at once, when the reader keeps up),
 * so a writer that awaits each send holds at most one send's bytes in the stream. When the reader takes none of
 * the stream's bytes for `timeoutMs` the stream is aborted with the timeout error, which is thrown; when the
 * stream is closed or reset meanwhile, its error is thrown.
 */
export async function sendWithBackpressure (stream: Stream, data: Uint8Array | Uint8ArrayList, opts: SendOptions): Promise<void> {
  stream.send(data)
  if (stream.writeBufferLength === 0) return
  try {
    await written(stream, opts)
  } catch (err) {
    const e = err instanceof Error ? err : new Error(String(err))
    stream.abort(e)
    throw e
  }
}

/** Resolves when the stream's write buffer is empty; see sendWithBackpressure. */
async function written (stream: Stream, opts: SendOptions): Promise<void> {
  opts.signal?.throwIfAborted()
  await new Promise<void>((resolve, reject) => {
    let least = stream.writeBufferLength
    let timer: NodeJS.Timeout | undefined
    const finish = (err?: Error): void => {
      clearTimeout(timer)
      stream.removeEventListener('drain', onDrain)
      stream.removeEventListener('idle', check)
      stream.removeEventListener('close', onClose)
      opts.signal?.removeEventListener('abort', onAbort)
      if (err === undefined) resolve()
      else reject(err)
    }
    const arm = (): void => {
      clearTimeout(timer)
      timer = setTimeout(() => {
        finish((opts.timeout ?? (m => new StreamTimeoutError(m)))(`${opts.what}: the reader took none of our bytes for ${opts.timeoutMs} ms`))
      }, opts.timeoutMs)
    }
    function check (): void {
      // an abort empties the buffer too (and dispatches 'idle'): its 'close' follows with the reason
      if (stream.status === 'aborted' || stream.status === 'reset') return
      const n = stream.writeBufferLength
      if (n === 0) { finish(); return }
      // progress restarts the stall deadline
      if (n < least) { least = n; arm() }
    }
    // the stream sends its buffer in a microtask it queues on 'drain', before ours
    function onDrain (): void { queueMicrotask(check) }
    function onClose (evt: Event): void {
      finish((evt as Event & { error?: Error }).error ?? new StreamClosedError(`${opts.what}: stream closed with bytes unsent`))
    }
    function onAbort (): void {
      finish(opts.signal?.reason instanceof Error ? opts.signal.reason : new Error(`${opts.what}: aborted`))
    }
    stream.addEventListener('drain', onDrain)
    stream.addEventListener('idle', check)
    stream.addEventListener('close', onClose)
    opts.signal?.addEventListener('abort', onAbort, { once: true })
    arm()
  })
}
