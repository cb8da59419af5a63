/**
 * The wire format of `/rafspeer/chunk/1.0.0` (design §5), declared once for the server and the client.
 *
 * A stream carries one or more requests from the asking peer, each answered in full before the next is read;
 * the asker half-closes after its last request and the server closes after its last reply.
 *
 * ```
 * request  = u32 BE body length | body
 * body     = version u8 (1) | accept u8 (encodings bitmask, bit 0 = zstd, reserved: send 0) | count u16 BE
 *            | count × entry                                         (1 ≤ count ≤ MAX_CHUNKS_PER_REQUEST)
 * entry    = digest [32] | blob id hint [32] (raw sha256) | ci index hint u32 BE | uncompressed size u32 BE
 *
 * reply    = count × (header | payload), in request order, one per entry
 * header   = status u8 | encoding u8 | reserved u16 (0) | payload length u32 BE
 * payload  = OK: the chunk (encoding 0 = plaintext, exactly the entry's size) · ERROR: a UTF-8 message
 *            · NOT_FOUND, BUSY: empty
 * ```
 *
 * Every length is bounded before anything is buffered: a request body by its entry count, a chunk by
 * `MAX_CHUNK_BYTES` (and by the size the asker named), a message by `MAX_MESSAGE_BYTES`. Every read has a
 * deadline; a stream idle past it is aborted.
 *
 * @example
 * ```ts
 * const stream = await node.dialProtocol(addr, CHUNK_PROTOCOL, { signal })
 * for await (const r of exchangeChunks(stream, names, { timeoutMs: 3000 })) {
 *   if (r.status === ChunkStatus.OK) use(names[r.i], r.payload)
 * }
 * ```
 */
import type { Stream } from '@libp2p/interface'
import { Uint8ArrayList } from 'uint8arraylist'

export { CHUNK_PROTOCOL } from './p2p-types.js'

export const CHUNK_PROTOCOL_VERSION = 1
export const MAX_CHUNKS_PER_REQUEST = 64
/** the largest chunk RAFS allows */
export const MAX_CHUNK_BYTES = 16 << 20
/** an ERROR reply's message */
export const MAX_MESSAGE_BYTES = 1024
/** PENDING frames one request may receive in all (a holder that keeps saying "soon" is cut off) */
export const MAX_PENDING_FRAMES = 300
export const DIGEST_BYTES = 32

export const LENGTH_PREFIX_BYTES = 4
/** offsets in a request body */
export const RequestLayout = { VERSION: 0, ACCEPT: 1, COUNT: 2, HEADER_BYTES: 4 } as const
/** offsets in a request entry */
export const EntryLayout = { DIGEST: 0, BLOB_ID: 32, CI: 64, SIZE: 68, BYTES: 72 } as const
export const MAX_REQUEST_BODY_BYTES = RequestLayout.HEADER_BYTES + MAX_CHUNKS_PER_REQUEST * EntryLayout.BYTES
/** offsets in a reply header */
export const ReplyLayout = { STATUS: 0, ENCODING: 1, RESERVED: 2, LENGTH: 4, BYTES: 8 } as const

/**
 * PENDING is not an answer: the sender is still getting the chunk (it is fetching it itself, or its disk is slow);
 * the real reply for the same chunk follows. Sent about once a second while waiting, it keeps the asker's read
 * deadline from firing on a holder that is working for it. An asker takes at most `MAX_PENDING_FRAMES` per request.
 */
export const ChunkStatus = { OK: 0, NOT_FOUND: 1, BUSY: 2, ERROR: 3, PENDING: 4 } as const
export type ChunkStatus = typeof ChunkStatus[keyof typeof ChunkStatus]
export const ChunkEncoding = { PLAIN: 0, ZSTD: 1 } as const
export type ChunkEncoding = typeof ChunkEncoding[keyof typeof ChunkEncoding]

export type ChunkProtocolErrorCode = 'RAFSPEER_ERR_CHUNK_PROTOCOL' | 'RAFSPEER_ERR_CHUNK_TIMEOUT'

/** The other side broke the framing (sizes, counts, statuses, a stream ended mid-frame). */
export class ChunkProtocolError extends Error {
  readonly code: ChunkProtocolErrorCode = 'RAFSPEER_ERR_CHUNK_PROTOCOL'
  constructor (message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'ChunkProtocolError'
  }
}

/** Nothing arrived (or could be sent) within the deadline; the stream was aborted. */
export class ChunkTimeoutError extends Error {
  readonly code: ChunkProtocolErrorCode = 'RAFSPEER_ERR_CHUNK_TIMEOUT'
  constructor (message: string) {
    super(message)
    this.name = 'ChunkTimeoutError'
  }
}

/** One chunk named in a request. Only `digest` (and `size`, as a check) matter to a server; the rest are hints. */
export interface ChunkName {
  digest: Buffer
  /** lowercase hex sha256 of the blob; '' when unknown */
  blobId: string
  ci: number
  size: number
}

export interface ChunkReply {
  /** index of the entry in the request */
  i: number
  status: ChunkStatus
  /** OK: the plaintext chunk */
  payload?: Buffer
  /** ERROR: the server's message */
  message?: string
}

const BLOB_ID = /^[0-9a-f]{64}$/
const ZERO_ID = Buffer.alloc(32)

const asBuffer = (u: Uint8Array): Buffer => Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength)

/** A whole request frame (length prefix included). */
export function encodeRequest (names: ChunkName[]): Buffer {
  if (names.length < 1 || names.length > MAX_CHUNKS_PER_REQUEST) throw new RangeError(`a request names 1 to ${MAX_CHUNKS_PER_REQUEST} chunks, not ${names.length}`)
  const body = RequestLayout.HEADER_BYTES + names.length * EntryLayout.BYTES
  const out = Buffer.alloc(LENGTH_PREFIX_BYTES + body)
  out.writeUInt32BE(body, 0)
  const b = LENGTH_PREFIX_BYTES
  out[b + RequestLayout.VERSION] = CHUNK_PROTOCOL_VERSION
  out[b + RequestLayout.ACCEPT] = 0
  out.writeUInt16BE(names.length, b + RequestLayout.COUNT)
  names.forEach((n, i) => {
    if (n.digest.length !== DIGEST_BYTES) throw new RangeError(`a chunk digest has ${DIGEST_BYTES} bytes, not ${n.digest.length}`)
    if (!Number.isInteger(n.size) || n.size < 1 || n.size > MAX_CHUNK_BYTES) throw new RangeError(`chunk size ${n.size} is outside 1..${MAX_CHUNK_BYTES}`)
    const e = b + RequestLayout.HEADER_BYTES + i * EntryLayout.BYTES
    n.digest.copy(out, e + EntryLayout.DIGEST)
    ;(BLOB_ID.test(n.blobId) ? Buffer.from(n.blobId, 'hex') : ZERO_ID).copy(out, e + EntryLayout.BLOB_ID)
    out.writeUInt32BE(Number.isInteger(n.ci) && n.ci >= 0 && n.ci <= 0xffffffff ? n.ci : 0xffffffff, e + EntryLayout.CI)
    out.writeUInt32BE(n.size, e + EntryLayout.SIZE)
  })
  return out
}

/** Parses a request body (after its length prefix); throws ChunkProtocolError on anything out of bounds. */
export function decodeRequestBody (body: Uint8Array): ChunkName[] {
  const buf = asBuffer(body)
  if (buf.length < RequestLayout.HEADER_BYTES) throw new ChunkProtocolError(`request of ${buf.length} bytes is shorter than its header`)
  const version = buf[RequestLayout.VERSION]!
  if (version !== CHUNK_PROTOCOL_VERSION) throw new ChunkProtocolError(`request version ${version}, this peer speaks ${CHUNK_PROTOCOL_VERSION}`)
  const count = buf.readUInt16BE(RequestLayout.COUNT)
  if (count < 1 || count > MAX_CHUNKS_PER_REQUEST) throw new ChunkProtocolError(`request names ${count} chunks (1 to ${MAX_CHUNKS_PER_REQUEST})`)
  if (buf.length !== RequestLayout.HEADER_BYTES + count * EntryLayout.BYTES) {
    throw new ChunkProtocolError(`request of ${buf.length} bytes does not hold ${count} entries`)
  }
  const names: ChunkName[] = []
  for (let i = 0; i < count; i++) {
    const e = RequestLayout.HEADER_BYTES + i * EntryLayout.BYTES
    const size = buf.readUInt32BE(e + EntryLayout.SIZE)
    if (size < 1 || size > MAX_CHUNK_BYTES) throw new ChunkProtocolError(`entry ${i} names a chunk of ${size} bytes (1 to ${MAX_CHUNK_BYTES})`)
    const id = buf.subarray(e + EntryLayout.BLOB_ID, e + EntryLayout.BLOB_ID + 32)
    names.push({
      // copies: the names outlive the frame buffer, which may be a view of a larger message
      digest: Buffer.from(buf.subarray(e + EntryLayout.DIGEST, e + EntryLayout.DIGEST + DIGEST_BYTES)),
      blobId: id.equals(ZERO_ID) ? '' : id.toString('hex'),
      ci: buf.readUInt32BE(e + EntryLayout.CI),
      size
    })
  }
  return names
}

export function encodeReplyHeader (status: ChunkStatus, length = 0, encoding: ChunkEncoding = ChunkEncoding.PLAIN): Buffer {
  const h = Buffer.allocUnsafe(ReplyLayout.BYTES)
  h[ReplyLayout.STATUS] = status
  h[ReplyLayout.ENCODING] = encoding
  h.writeUInt16BE(0, ReplyLayout.RESERVED)
  h.writeUInt32BE(length, ReplyLayout.LENGTH)
  return h
}

/** A whole ERROR reply (message truncated to its bound). */
export function encodeErrorReply (message: string): Uint8ArrayList {
  let msg = Buffer.from(message, 'utf8')
  if (msg.length > MAX_MESSAGE_BYTES) msg = msg.subarray(0, MAX_MESSAGE_BYTES)
  return new Uint8ArrayList(encodeReplyHeader(ChunkStatus.ERROR, msg.length), msg)
}

/**
 * Reads frames off a stream into a Uint8ArrayList (no copy until a frame is taken out), with a deadline on every
 * wait: past `timeoutMs` without the bytes it needs, the stream is aborted with a ChunkTimeoutError.
 */
export class FrameReader {
  private readonly buf = new Uint8ArrayList()
  private readonly it: AsyncIterator<Uint8Array | Uint8ArrayList>
  private ended = false

  constructor (private readonly stream: Pick<Stream, 'abort'> & AsyncIterable<Uint8Array | Uint8ArrayList>,
    private readonly timeoutMs: number, private readonly what: string) {
    this.it = stream[Symbol.asyncIterator]()
  }

  /** at least `n` bytes buffered; false when the stream ended with fewer */
  private async fill (n: number): Promise<boolean> {
    while (this.buf.byteLength < n) {
      if (this.ended) return false
      const timer = setTimeout(() => {
        this.stream.abort(new ChunkTimeoutError(`${this.what}: nothing received for ${this.timeoutMs} ms`))
      }, this.timeoutMs)
      let r: IteratorResult<Uint8Array | Uint8ArrayList>
      try {
        r = await this.it.next()
      } finally {
        clearTimeout(timer)
      }
      if (r.done === true) this.ended = true
      else this.buf.append(r.value)
    }
    return true
  }

  /**
   * Stops listening to the stream: bytes arriving later are no longer buffered here (the stream's own bounded
   * read buffer takes them, and resets the stream when they exceed it).
   */
  release (): void {
    this.ended = true
    void this.it.return?.()?.catch(() => {})
  }

  /** exactly `n` bytes as one Buffer: a view when they sit in one received message, else one copy */
  private take (n: number): Buffer {
    const out = asBuffer(this.buf.subarray(0, n))
    this.buf.consume(n)
    return out
  }

  private async need (n: number, frame: string): Promise<void> {
    if (!(await this.fill(n))) throw new ChunkProtocolError(`${this.what}: stream ended inside ${frame} (${this.buf.byteLength} of ${n} bytes)`)
  }

  /** The next request, or undefined when the asker closed the stream between requests. */
  async readRequest (): Promise<ChunkName[] | undefined> {
    if (!(await this.fill(LENGTH_PREFIX_BYTES))) {
      if (this.buf.byteLength === 0) return undefined
      throw new ChunkProtocolError(`${this.what}: stream ended inside a request length`)
    }
    const len = this.buf.getUint32(0)
    if (len < RequestLayout.HEADER_BYTES || len > MAX_REQUEST_BODY_BYTES) {
      throw new ChunkProtocolError(`${this.what}: request body of ${len} bytes (${RequestLayout.HEADER_BYTES} to ${MAX_REQUEST_BODY_BYTES})`)
    }
    await this.need(LENGTH_PREFIX_BYTES + len, 'a request')
    this.buf.consume(LENGTH_PREFIX_BYTES)
    return decodeRequestBody(this.take(len))
  }

  /** The reply to `name`; throws ChunkProtocolError when it breaks the format or names other bytes than asked. */
  async readReply (i: number, name: ChunkName): Promise<ChunkReply> {
    await this.need(ReplyLayout.BYTES, 'a reply header')
    const status = this.buf.get(ReplyLayout.STATUS)
    const encoding = this.buf.get(ReplyLayout.ENCODING)
    const length = this.buf.getUint32(ReplyLayout.LENGTH)
    switch (status) {
      case ChunkStatus.OK:
        if (encoding !== ChunkEncoding.PLAIN) throw new ChunkProtocolError(`${this.what}: chunk ${i} in encoding ${encoding}, which was not accepted`)
        // never buffer more than the chunk we asked for
        if (length !== name.size) throw new ChunkProtocolError(`${this.what}: chunk ${i} of ${length} bytes, asked for ${name.size}`)
        break
      case ChunkStatus.ERROR:
        if (length > MAX_MESSAGE_BYTES) throw new ChunkProtocolError(`${this.what}: error message of ${length} bytes`)
        break
      case ChunkStatus.NOT_FOUND:
      case ChunkStatus.BUSY:
      case ChunkStatus.PENDING:
        if (length !== 0) throw new ChunkProtocolError(`${this.what}: status ${status} with a ${length}-byte payload`)
        break
      default:
        throw new ChunkProtocolError(`${this.what}: unknown status ${status}`)
    }
    await this.need(ReplyLayout.BYTES + length, 'a reply')
    this.buf.consume(ReplyLayout.BYTES)
    if (status === ChunkStatus.OK) return { i, status, payload: this.take(length) }
    if (status === ChunkStatus.ERROR) return { i, status, message: this.take(length).toString('utf8') }
    return { i, status }
  }
}

/**
 * Sends `data`, waiting for the stream to drain when its buffer is full; past `timeoutMs` of waiting (a reader
 * that stopped reading) the stream is aborted with a ChunkTimeoutError.
 */
export async function sendWithBackpressure (stream: Stream, data: Uint8Array | Uint8ArrayList, timeoutMs: number, what: string, signal?: AbortSignal): Promise<void> {
  if (stream.send(data)) return
  const timeout = AbortSignal.timeout(timeoutMs)
  try {
    await stream.onDrain({ signal: signal === undefined ? timeout : AbortSignal.any([timeout, signal]) })
  } catch (err) {
    const e = timeout.aborted ? new ChunkTimeoutError(`${what}: the reader took nothing for ${timeoutMs} ms`) : err as Error
    stream.abort(e)
    throw e
  }
}

export interface ExchangeOptions {
  /** deadline of every wait for bytes (the reply header, each piece of a chunk) */
  timeoutMs: number
  /** aborts the stream */
  signal?: AbortSignal
  /** names the exchange in errors, e.g. `peer:<id>` */
  what?: string
}

/**
 * The asking side of one exchange: sends the request, half-closes, and yields each reply as it completes, in
 * request order. Stopping early (or any error) aborts the stream, so the server stops sending at once.
 */
export async function * exchangeChunks (stream: Stream, names: ChunkName[], opts: ExchangeOptions): AsyncGenerator<ChunkReply> {
  const what = opts.what ?? 'chunk exchange'
  const onAbort = (): void => { stream.abort(opts.signal?.reason instanceof Error ? opts.signal.reason : new Error(`${what}: aborted`)) }
  if (opts.signal?.aborted === true) { onAbort(); opts.signal.throwIfAborted() }
  opts.signal?.addEventListener('abort', onAbort, { once: true })
  let complete = false
  const reader = new FrameReader(stream, opts.timeoutMs, what)
  try {
    stream.send(encodeRequest(names))
    await stream.close({ signal: AbortSignal.timeout(opts.timeoutMs) })
    let pending = 0
    for (let i = 0; i < names.length; i++) {
      const reply = await reader.readReply(i, names[i]!)
      if (reply.status === ChunkStatus.PENDING) {
        if (++pending > MAX_PENDING_FRAMES) throw new ChunkProtocolError(`${what}: more than ${MAX_PENDING_FRAMES} pending frames`)
        i--
        continue
      }
      // all asked for is here: whatever else the server sends is not ours to hold
      if (i === names.length - 1) { complete = true; reader.release() }
      yield reply
    }
  } catch (err) {
    stream.abort(err instanceof Error ? err : new Error(String(err)))
    throw err
  } finally {
    opts.signal?.removeEventListener('abort', onAbort)
    if (!complete) stream.abort(new ChunkProtocolError(`${what}: stopped reading`))
  }
}
