/**
 * Unary gRPC calls over HTTP/2 on a Unix socket, on Node's own `node:http2`: the request is one length-prefixed
 * message, the answer one message and a `grpc-status` trailer (the gRPC over HTTP/2 spec, PROTOCOL-HTTP2.md).
 * grpc-js does this and much more (name resolution, load balancing, retries, keepalives) at a price paid on every
 * cold start: loading it and parsing a proto took ~0.2 s of `rafspeer rpull`, a third of what a container start
 * may cost. A client here needs one channel to one local socket, so it keeps one HTTP/2 session, reopened when it
 * breaks.
 *
 * Deadlines travel as `grpc-timeout` and are enforced here too; an abort or a deadline cancels the stream
 * (RST_STREAM CANCEL), which cancels the server's work. Failures are returned, not thrown, as a status with
 * `answered` telling whether the server itself sent it (a status of our own: no connection, connection lost).
 */
import { connect as http2Connect, constants, type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders } from 'node:http2'
import { connect as netConnect } from 'node:net'

/** gRPC status codes (grpc/doc/statuscodes.md) */
export const GrpcStatus = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16
} as const

const STATUS_NAMES = Object.fromEntries(Object.entries(GrpcStatus).map(([k, v]) => [v, k])) as Record<number, string>
export const grpcStatusName = (code: number): string => STATUS_NAMES[code] ?? String(code)

/** largest answer accepted (containerd's own `grpc.max_recv_message_size`) */
export const DEFAULT_MAX_MESSAGE_BYTES = 16 << 20
const PREFIX_BYTES = 5

export type UnaryResult =
  | { ok: true, body: Buffer }
  | { ok: false, code: number, details: string, answered: boolean, cause?: unknown }

export interface UnaryCallOptions {
  /** ms from now; sent as `grpc-timeout` and enforced here */
  timeoutMs: number
  signal?: AbortSignal
}

export interface GrpcUnaryChannelInit {
  maxMessageBytes?: number
}

type Attempt = UnaryResult | (Extract<UnaryResult, { ok: false }> & { refused: true })
const strip = (r: Attempt): UnaryResult => {
  if (!('refused' in r)) return r
  const { refused: _, ...rest } = r
  return rest
}

/** One HTTP/2 session to a gRPC server on a Unix socket. */
export class GrpcUnaryChannel {
  private session: ClientHttp2Session | undefined
  /** why a session failed, for the calls it takes down */
  private readonly failures = new WeakMap<ClientHttp2Session, Error>()
  private inFlight = 0
  private readonly maxMessageBytes: number

  constructor (readonly socketPath: string, init: GrpcUnaryChannelInit = {}) {
    this.maxMessageBytes = init.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES
  }

  /**
   * Calls `/service/method` with one encoded message; resolves with the answer's message or a failed status.
   * Rejects only with the signal's reason when the caller aborts.
   */
  async call (path: string, message: Buffer, opts: UnaryCallOptions): Promise<UnaryResult> {
    opts.signal?.throwIfAborted()
    const frame = Buffer.alloc(PREFIX_BYTES + message.length)
    frame.writeUInt32BE(message.length, 1)
    message.copy(frame, PREFIX_BYTES)
    const deadline = performance.now() + opts.timeoutMs
    // a call the server never saw (a session closing under it, a refused stream) goes once more on a new session,
    // as gRPC's transparent retry does: nothing ran, so nothing runs twice
    for (let attempt = 0; ; attempt++) {
      const timeoutMs = Math.max(1, deadline - performance.now())
      const r = await this.attempt(path, frame, { ...opts, timeoutMs })
      if (!('refused' in r) || attempt === 1) return strip(r)
    }
  }

  private async attempt (path: string, frame: Buffer, opts: UnaryCallOptions): Promise<Attempt> {
    let stream: ClientHttp2Stream
    const session = this.open()
    try {
      stream = session.request({
        [constants.HTTP2_HEADER_METHOD]: 'POST',
        [constants.HTTP2_HEADER_PATH]: path,
        [constants.HTTP2_HEADER_CONTENT_TYPE]: 'application/grpc',
        [constants.HTTP2_HEADER_TE]: 'trailers',
        'grpc-timeout': `${Math.max(1, Math.min(99_999_999, Math.ceil(opts.timeoutMs)))}m`
      })
    } catch (err) {
      this.drop(session)
      const cause = this.failures.get(session) ?? err as Error
      return { ok: false, code: GrpcStatus.UNAVAILABLE, details: cause.message, answered: false, cause, refused: true }
    }
    this.inFlight++
    session.ref()
    try {
      const r = await this.exchange(session, stream, frame, opts)
      if (!r.ok && !r.answered && stream.rstCode === constants.NGHTTP2_REFUSED_STREAM) {
        this.drop(session)
        return { ...r, refused: true }
      }
      return r
    } finally {
      if (--this.inFlight === 0) session.unref()
    }
  }

  /** Closes the session; calls in flight fail as UNAVAILABLE. */
  close (): void {
    const s = this.session
    this.session = undefined
    s?.destroy()
  }

  private open (): ClientHttp2Session {
    if (this.session !== undefined && !this.session.closed && !this.session.destroyed) return this.session
    const session = http2Connect('http://localhost', { createConnection: () => netConnect(this.socketPath) })
    session.on('error', (err: Error) => { this.failures.set(session, err) })
    session.on('goaway', () => { this.drop(session) })
    session.on('close', () => { this.drop(session) })
    session.unref()
    this.session = session
    return session
  }

  private drop (session: ClientHttp2Session): void {
    if (this.session === session) this.session = undefined
  }

  private async exchange (session: ClientHttp2Session, stream: ClientHttp2Stream, frame: Buffer, opts: UnaryCallOptions): Promise<UnaryResult> {
    const { signal } = opts
    return await new Promise<UnaryResult>((resolve, reject) => {
      const chunks: Buffer[] = []
      let received = 0
      let headers: IncomingHttpHeaders | undefined
      let trailers: IncomingHttpHeaders | undefined
      let outcome: UnaryResult | undefined
      let aborted = false
      const settle = (r: UnaryResult): void => {
        if (outcome === undefined) outcome = r
      }
      const cancel = (r: UnaryResult): void => {
        settle(r)
        if (!stream.closed) stream.close(constants.NGHTTP2_CANCEL)
      }
      const timer = setTimeout(() => {
        cancel({ ok: false, code: GrpcStatus.DEADLINE_EXCEEDED, details: `deadline of ${opts.timeoutMs} ms exceeded`, answered: false })
      }, opts.timeoutMs)
      const onAbort = (): void => {
        aborted = true
        if (!stream.closed) stream.close(constants.NGHTTP2_CANCEL)
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      stream.on('response', (h) => { headers = h })
      stream.on('trailers', (t) => { trailers = t })
      stream.on('data', (chunk: Buffer) => {
        received += chunk.length
        if (received > this.maxMessageBytes + PREFIX_BYTES) {
          cancel({ ok: false, code: GrpcStatus.RESOURCE_EXHAUSTED, details: `answer larger than ${this.maxMessageBytes} bytes`, answered: false })
          return
        }
        chunks.push(chunk)
      })
      // a stream error is followed by 'close', where the outcome is decided
      stream.on('error', (err: Error) => {
        // a stream the session's failure cancelled carries that failure (ENOENT, ECONNREFUSED…) as its cause
        const cause = this.failures.get(session) ?? ((err as { cause?: unknown }).cause instanceof Error ? (err as { cause: Error }).cause : err)
        settle({ ok: false, code: GrpcStatus.UNAVAILABLE, details: cause.message, answered: false, cause })
      })
      stream.on('close', () => {
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        if (aborted) { reject(signal!.reason); return }
        resolve(outcome ?? this.decide(session, stream, headers, trailers, Buffer.concat(chunks)))
      })
      stream.end(frame)
    })
  }

  /** The call's result from what the server sent (PROTOCOL-HTTP2.md: trailers, or a trailers-only response). */
  private decide (session: ClientHttp2Session, stream: ClientHttp2Stream, headers: IncomingHttpHeaders | undefined,
    trailers: IncomingHttpHeaders | undefined, body: Buffer): UnaryResult {
    if (headers === undefined) {
      const err = this.failures.get(session)
      const details = err?.message ?? `the stream closed before any answer (HTTP/2 code ${stream.rstCode ?? '?'})`
      return { ok: false, code: GrpcStatus.UNAVAILABLE, details, answered: false, ...(err !== undefined ? { cause: err } : {}) }
    }
    const httpStatus = Number(headers[constants.HTTP2_HEADER_STATUS])
    const statusHeader = trailers?.['grpc-status'] ?? headers['grpc-status']
    if (statusHeader === undefined) {
      // no gRPC status: an HTTP error or a cut stream (the mapping of the spec's "HTTP to gRPC status" table)
      const code = httpStatus === 200 ? GrpcStatus.UNKNOWN : httpToGrpc(httpStatus)
      return { ok: false, code, details: `HTTP ${httpStatus} without a grpc-status${stream.rstCode !== undefined && stream.rstCode !== 0 ? ` (HTTP/2 code ${stream.rstCode})` : ''}`, answered: true }
    }
    const code = Number(statusHeader)
    const message = trailers?.['grpc-message'] ?? headers['grpc-message']
    const details = typeof message === 'string' ? decodeGrpcMessage(message) : ''
    if (code !== GrpcStatus.OK) return { ok: false, code: Number.isInteger(code) ? code : GrpcStatus.UNKNOWN, details, answered: true }
    if (body.length < PREFIX_BYTES) return { ok: false, code: GrpcStatus.INTERNAL, details: 'OK without a message', answered: true }
    if (body[0] !== 0) return { ok: false, code: GrpcStatus.INTERNAL, details: 'a compressed message, though none was accepted', answered: true }
    const n = body.readUInt32BE(1)
    if (body.length !== PREFIX_BYTES + n) {
      return { ok: false, code: GrpcStatus.INTERNAL, details: `a message framed as ${n} bytes in ${body.length - PREFIX_BYTES}`, answered: true }
    }
    return { ok: true, body: body.subarray(PREFIX_BYTES) }
  }
}

function httpToGrpc (status: number): number {
  switch (status) {
    case 400: return GrpcStatus.INTERNAL
    case 401: return GrpcStatus.UNAUTHENTICATED
    case 403: return GrpcStatus.PERMISSION_DENIED
    case 404: return GrpcStatus.UNIMPLEMENTED
    case 429: case 502: case 503: case 504: return GrpcStatus.UNAVAILABLE
    default: return GrpcStatus.UNKNOWN
  }
}

/** `grpc-message` is percent-encoded UTF-8; a malformed escape is kept as sent. */
function decodeGrpcMessage (v: string): string {
  try { return decodeURIComponent(v) } catch { return v }
}
