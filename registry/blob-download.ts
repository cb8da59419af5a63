/**
 * Reading blobs: a whole blob as a stream that is hashed as it flows and resumed with `Range` when the connection
 * drops, and a byte range read into one buffer with its `206`/`Content-Range` checked. A whole blob with the wrong
 * digest ends in an error and its last chunk is withheld, so a consumer never holds a complete wrong blob.
 *
 * A registry may ignore `Range` and answer 200 with the whole blob (HTTP allows it). A range is then read from that
 * body by skipping to its start, never buffering what is skipped: slower (the bytes before the range cross the
 * network), but lazy reads keep working, and the callers verify chunk digests as always. `RangeSupport` remembers
 * such registries, logs each once, and lets a caller read several ranges of a blob in one pass.
 */
import { createHash } from 'node:crypto'
import { Readable } from 'node:stream'
import { DigestMismatchError, RegistryRangeError, RegistryTooLargeError, RegistryTruncatedError, type RegistryErrorContext } from './errors.js'
import { repositoryScope } from './auth.js'
import { digestAlgorithm } from './reference.js'
import { RafspeerError, delay, type Logger } from '../base/index.js'
import { discard, header, isRetryableNetworkError, type Response, type TrafficCounters, type Transport } from './transport.js'

/** A blob being downloaded. `size` is known when the registry sent a length. */
export type BlobStream = Readable & { readonly size: number | undefined, readonly digest: string }

/** One Range read is one allocation; above this, callers should read in pieces. */
export const MAX_RANGE_BYTES = 256 << 20

export interface ContentRange { start: number, end: number, total: number | undefined }

/** `bytes 0-99/1234` or `bytes 0-99/*` */
export function parseContentRange (value: string | undefined): ContentRange | undefined {
  const m = value === undefined ? null : /^\s*bytes\s+(\d+)-(\d+)\/(\d+|\*)\s*$/i.exec(value)
  if (m === null) return undefined
  return { start: Number(m[1]), end: Number(m[2]), total: m[3] === '*' ? undefined : Number(m[3]) }
}

/** The body ended cleanly but short of its announced length: resumable like a reset. */
class EarlyEnd extends RafspeerError<'RAFSPEER_ERR_REGISTRY_TRUNCATED'> {
  constructor () { super('RAFSPEER_ERR_REGISTRY_TRUNCATED', 'the body ended before its announced length') }
}

interface Target { host: string, repository: string, digest: string, signal?: AbortSignal, authorization?: string | null }

/**
 * Which registries (`host[:port]`) answered a `Range` request with the whole blob. A registry that later answers 206
 * is taken off the list (a fleet behind a load balancer may mix both); the warning is logged once per registry.
 */
export class RangeSupport {
  private readonly ignoring = new Set<string>()
  private readonly warned = new Set<string>()

  constructor (private readonly log?: Logger) {}

  /** The registry's last answer to a Range request was the whole blob. */
  ignores (host: string): boolean { return this.ignoring.has(host) }

  noteIgnored (target: Target, asked: string): void {
    this.ignoring.add(target.host)
    if (this.warned.has(target.host)) return
    this.warned.add(target.host)
    this.log?.warn('registry %s ignores Range (answered 200 to "%s" for %s@%s): ranges of its blobs are read from the ' +
      'blob\'s start, skipping to the wanted bytes; slower, still verified', target.host, asked, target.repository, target.digest)
  }

  noteHonoured (host: string): void { this.ignoring.delete(host) }
}

/** `Content-Length` as a number, when it is one. */
function contentLength (res: Response): number | undefined {
  const v = header(res.headers, 'content-length')
  return v !== undefined && /^\d+$/.test(v) ? Number(v) : undefined
}

function blobRequest (t: Transport, target: Target, range: string | undefined): Promise<Response> {
  const { host, repository, digest, signal, authorization } = target
  return t.send({
    method: 'GET',
    host,
    url: `/v2/${repository}/blobs/${digest}`,
    ctx: { host, repository, target: digest },
    scopes: [repositoryScope(repository, 'pull')],
    headers: range !== undefined ? { range } : {},
    expect: range !== undefined ? [200, 206] : [200],
    stream: true,
    notFound: 'blob',
    ...(signal !== undefined ? { signal } : {}),
    ...(authorization !== undefined ? { authorization } : {})
  })
}

/**
 * Opens a whole blob. Resolves once the registry has answered 200 (so a 404 or an auth failure rejects here), and
 * the stream then errors with DigestMismatchError or RegistryTruncatedError instead of ending, when it must.
 */
export async function openBlob (t: Transport, counters: TrafficCounters, target: Target, ranges?: RangeSupport): Promise<BlobStream> {
  const ctx: RegistryErrorContext = { host: target.host, repository: target.repository, target: target.digest }
  let res = await blobRequest(t, target, undefined)
  const size = contentLength(res)
  const algorithm = digestAlgorithm(target.digest)

  async function * flow (): AsyncGenerator<Buffer> {
    const hash = createHash(algorithm)
    let received = 0
    let total = size
    let skip = 0 // bytes to drop from a resumed body that restarted at 0 (server ignored Range)
    let held: Buffer | undefined
    let attempt = 0
    try {
      for (;;) {
        try {
          for await (const raw of res.body as AsyncIterable<Buffer>) {
            let chunk = raw
            counters.addDownloaded(target.host, chunk.length)
            if (skip > 0) {
              const drop = Math.min(skip, chunk.length)
              skip -= drop
              chunk = chunk.subarray(drop)
              if (chunk.length === 0) continue
            }
            received += chunk.length
            if (total !== undefined && received > total) {
              throw new RegistryTruncatedError(`blob body longer than its announced ${total} bytes`, ctx)
            }
            hash.update(chunk)
            if (held !== undefined) yield held
            held = chunk
          }
          if (total !== undefined && received < total) throw new EarlyEnd()
          break
        } catch (err) {
          discard(res.body)
          if (target.signal?.aborted === true) throw target.signal.reason
          const resumable = err instanceof EarlyEnd || isRetryableNetworkError(err)
          if (!resumable || attempt >= t.retries) {
            if (!resumable) throw err
            throw new RegistryTruncatedError(`blob body cut at byte ${received} of ${total ?? 'unknown'} after ${attempt + 1} attempts`,
              ctx, { cause: err })
          }
          await delay(t.backoff(attempt++), target.signal)
          const asked = `bytes=${received}-`
          res = await blobRequest(t, target, asked)
          if (res.status === 206) {
            ranges?.noteHonoured(target.host)
            const cr = parseContentRange(header(res.headers, 'content-range'))
            if (cr === undefined || cr.start !== received || (total !== undefined && cr.total !== undefined && cr.total !== total)) {
              discard(res.body)
              throw new RegistryRangeError(`resume from byte ${received} answered Content-Range ` +
                `"${header(res.headers, 'content-range') ?? 'none'}"`, ctx)
            }
            total ??= cr.total
          } else {
            ranges?.noteIgnored(target, asked)
            skip = received
          }
        }
      }
      const actual = `${algorithm}:${hash.digest('hex')}`
      if (actual !== target.digest) throw new DigestMismatchError(target.digest, actual, ctx)
      if (held !== undefined) yield held
    } finally {
      discard(res.body)
    }
  }

  return Object.assign(Readable.from(flow(), { objectMode: false }), { size, digest: target.digest })
}

/**
 * Reads bytes `[start, endInclusive]` of a blob. A 206 must carry exactly that Content-Range. A 200 (Range ignored)
 * is the whole blob: the bytes before the range are skipped as they arrive (counted, never buffered), the range is
 * kept, and the connection is dropped after it. The bytes are not digest-checked here (a range has no digest of its
 * own); callers verify the chunk digests inside. `onBytes` hears each piece of the range as it arrives (a caller's
 * idle deadline: a range that keeps arriving under a slow link is not stalled). With `sink`, the bytes land in
 * `sink.into` (the range's length) and `sink.filled` hears how many of them are in, from the start, as they arrive
 * (never fewer than before: a cut range resumes where it was cut), so a caller can use the first bytes before the
 * last arrive.
 */
export async function fetchRange (t: Transport, counters: TrafficCounters, target: Target, start: number,
  endInclusive: number, ranges?: RangeSupport, onBytes?: (n: number) => void, sink?: RangeSink): Promise<Buffer> {
  const ctx: RegistryErrorContext = { host: target.host, repository: target.repository, target: target.digest }
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(endInclusive) || start < 0 || endInclusive < start) {
    throw new RegistryRangeError(`invalid range ${start}-${endInclusive}`, ctx)
  }
  const length = endInclusive - start + 1
  if (length > MAX_RANGE_BYTES) throw new RegistryTooLargeError(`range of ${length} bytes`, MAX_RANGE_BYTES, ctx)
  if (sink !== undefined && sink.into.length !== length) throw new RangeError(`a range of ${length} bytes cannot land in a buffer of ${sink.into.length}`)
  const buf = sink?.into ?? Buffer.allocUnsafe(length)
  let got = 0
  for (let attempt = 0; ; attempt++) {
    const from = start + got
    const asked = `bytes=${from}-${endInclusive}`
    const res = await blobRequest(t, target, asked)
    const contentRange = header(res.headers, 'content-range')
    try {
      // bytes of a whole-blob answer still to drop before `from`
      let skip = 0
      if (res.status === 206) {
        const cr = parseContentRange(contentRange)
        if (cr === undefined || cr.start !== from || cr.end !== endInclusive) {
          throw new RegistryRangeError(`asked bytes ${from}-${endInclusive}, got 206 with Content-Range "${contentRange ?? 'none'}"`, ctx)
        }
        ranges?.noteHonoured(target.host)
      } else {
        const total = contentLength(res)
        if (total !== undefined && total <= endInclusive) {
          throw new RegistryRangeError(`blob has only ${total} bytes, asked up to byte ${endInclusive}`, ctx)
        }
        ranges?.noteIgnored(target, asked)
        skip = from
      }
      for await (const raw of res.body as AsyncIterable<Buffer>) {
        counters.addDownloaded(target.host, raw.length)
        let chunk = raw
        if (skip > 0) {
          const drop = Math.min(skip, chunk.length)
          skip -= drop
          chunk = chunk.subarray(drop)
          if (chunk.length === 0) continue
        }
        const take = Math.min(chunk.length, length - got)
        if (take < chunk.length && res.status === 206) {
          throw new RegistryRangeError(`206 body longer than the ${length} bytes of Content-Range "${contentRange ?? ''}"`, ctx)
        }
        chunk.copy(buf, got, 0, take)
        got += take
        onBytes?.(take)
        sink?.filled(got)
        if (got === length) break // a whole-blob answer: the rest of the blob is not wanted
      }
      if (got < length) {
        if (res.status === 200) throw new RegistryRangeError(`blob has only ${start + got - skip} bytes, asked up to byte ${endInclusive}`, ctx)
        throw new EarlyEnd()
      }
      return buf
    } catch (err) {
      if (target.signal?.aborted === true) throw target.signal.reason
      const resumable = err instanceof EarlyEnd || isRetryableNetworkError(err)
      if (!resumable) throw err
      if (attempt >= t.retries) {
        throw new RegistryTruncatedError(`range ${start}-${endInclusive} cut at byte ${start + got} after ${attempt + 1} attempts`,
          ctx, { cause: err })
      }
      await delay(t.backoff(attempt), target.signal)
    } finally {
      discard(res.body)
    }
  }
}

/** Where a range's bytes land as they arrive (`fetchRange`): the buffer, and who hears how many are in. */
export interface RangeSink {
  into: Buffer
  filled: (bytes: number) => void
}

/** A byte range of a blob being downloaded: where it starts and ends in the blob, and the blob's total size. */
export type RangeStream = Readable & { readonly start: number, readonly end: number, readonly total: number | undefined }

/**
 * Opens bytes `[start, endInclusive]` (or to the end) of a blob as a stream, for a caller that relays them (a
 * registry mirror answering a `Range` request it cannot serve itself). A 206 must carry a `Content-Range` starting at
 * `start`; a 200 (Range ignored) is the whole blob, read from `start` by skipping (its length must be known, to say
 * where the range ends). A range has no digest of its own, so the bytes are not checked here, and a body cut short
 * errors the stream.
 */
export async function openRange (t: Transport, counters: TrafficCounters, target: Target, start: number,
  endInclusive?: number, ranges?: RangeSupport): Promise<RangeStream> {
  const ctx: RegistryErrorContext = { host: target.host, repository: target.repository, target: target.digest }
  if (!Number.isSafeInteger(start) || start < 0 || (endInclusive !== undefined && (!Number.isSafeInteger(endInclusive) || endInclusive < start))) {
    throw new RegistryRangeError(`invalid range ${start}-${endInclusive ?? ''}`, ctx)
  }
  const asked = `bytes=${start}-${endInclusive ?? ''}`
  const res = await blobRequest(t, target, asked)
  const fail = (why: string): RegistryRangeError => {
    discard(res.body)
    return new RegistryRangeError(`range ${start}-${endInclusive ?? ''} answered HTTP ${res.status} ${why}`, ctx)
  }
  let cr: ContentRange | undefined
  let skip = 0
  if (res.status === 206) {
    cr = parseContentRange(header(res.headers, 'content-range'))
    if (cr === undefined || cr.start !== start || (endInclusive !== undefined && cr.end > endInclusive)) {
      throw fail(`with Content-Range "${header(res.headers, 'content-range') ?? 'none'}"`)
    }
    ranges?.noteHonoured(target.host)
  } else {
    const total = contentLength(res)
    if (total === undefined) throw fail('without a Content-Length (Range ignored, and the end of the blob unknown)')
    if (start >= total) throw fail(`for a blob of ${total} bytes`)
    ranges?.noteIgnored(target, asked)
    cr = { start, end: Math.min(endInclusive ?? total - 1, total - 1), total }
    skip = start
  }
  const want = cr.end - cr.start + 1
  const whole = res.status !== 206
  async function * flow (): AsyncGenerator<Buffer> {
    let got = 0
    let drop = skip
    try {
      for await (const raw of res.body as AsyncIterable<Buffer>) {
        counters.addDownloaded(target.host, raw.length)
        let chunk = raw
        if (drop > 0) {
          const n = Math.min(drop, chunk.length)
          drop -= n
          chunk = chunk.subarray(n)
          if (chunk.length === 0) continue
        }
        if (whole) {
          // keep the range, drop the rest of the blob
          chunk = chunk.subarray(0, want - got)
          got += chunk.length
          yield chunk
          if (got === want) return
          continue
        }
        got += chunk.length
        if (got > want) throw new RegistryTruncatedError(`range body longer than its ${want} bytes`, ctx)
        yield chunk
      }
      if (got < want) throw new RegistryTruncatedError(`range body cut at ${got} of ${want} bytes`, ctx)
    } finally {
      discard(res.body)
    }
  }
  return Object.assign(Readable.from(flow(), { objectMode: false }), { start: cr.start, end: cr.end, total: cr.total })
}
