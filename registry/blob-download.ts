/**
 * Reading blobs: a whole blob as a stream that is hashed as it flows and resumed with `Range` when the connection
 * drops, and a byte range read into one buffer with its `206`/`Content-Range` checked. A whole blob with the wrong
 * digest ends in an error and its last chunk is withheld, so a consumer never holds a complete wrong blob.
 */
import { createHash } from 'node:crypto'
import { Readable } from 'node:stream'
import { DigestMismatchError, RegistryRangeError, RegistryTooLargeError, RegistryTruncatedError, type RegistryErrorContext } from './errors.js'
import { repositoryScope } from './auth.js'
import { digestAlgorithm } from './reference.js'
import { RafspeerError, delay } from '../base/index.js'
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
export async function openBlob (t: Transport, counters: TrafficCounters, target: Target): Promise<BlobStream> {
  const ctx: RegistryErrorContext = { host: target.host, repository: target.repository, target: target.digest }
  let res = await blobRequest(t, target, undefined)
  const length = header(res.headers, 'content-length')
  const size = length !== undefined && /^\d+$/.test(length) ? Number(length) : undefined
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
          res = await blobRequest(t, target, `bytes=${received}-`)
          if (res.status === 206) {
            const cr = parseContentRange(header(res.headers, 'content-range'))
            if (cr === undefined || cr.start !== received || (total !== undefined && cr.total !== undefined && cr.total !== total)) {
              discard(res.body)
              throw new RegistryRangeError(`resume from byte ${received} answered Content-Range ` +
                `"${header(res.headers, 'content-range') ?? 'none'}"`, ctx)
            }
            total ??= cr.total
          } else {
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
 * Reads bytes `[start, endInclusive]` of a blob. The registry must answer 206 with exactly that Content-Range. A 200
 * (Range ignored) is accepted only when the range starts at 0: the prefix is read and the connection dropped. For a
 * later start a 200 would mean downloading the whole blob to keep a slice of it, which is exactly what lazy loading
 * exists to avoid, so it is a RegistryRangeError. The bytes are not digest-checked here (a range has no digest of its
 * own); callers verify the chunk digests inside.
 */
export async function fetchRange (t: Transport, counters: TrafficCounters, target: Target, start: number,
  endInclusive: number): Promise<Buffer> {
  const ctx: RegistryErrorContext = { host: target.host, repository: target.repository, target: target.digest }
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(endInclusive) || start < 0 || endInclusive < start) {
    throw new RegistryRangeError(`invalid range ${start}-${endInclusive}`, ctx)
  }
  const length = endInclusive - start + 1
  if (length > MAX_RANGE_BYTES) throw new RegistryTooLargeError(`range of ${length} bytes`, MAX_RANGE_BYTES, ctx)
  const buf = Buffer.allocUnsafe(length)
  let got = 0
  for (let attempt = 0; ; attempt++) {
    const from = start + got
    const res = await blobRequest(t, target, `bytes=${from}-${endInclusive}`)
    const contentRange = header(res.headers, 'content-range')
    try {
      if (res.status === 206) {
        const cr = parseContentRange(contentRange)
        if (cr === undefined || cr.start !== from || cr.end !== endInclusive) {
          throw new RegistryRangeError(`asked bytes ${from}-${endInclusive}, got 206 with Content-Range "${contentRange ?? 'none'}"`, ctx)
        }
      } else if (from !== 0) {
        throw new RegistryRangeError(`asked bytes ${from}-${endInclusive}, got ${res.status} without a range (server ignores Range)`, ctx)
      }
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        counters.addDownloaded(target.host, chunk.length)
        const take = Math.min(chunk.length, length - got)
        if (take < chunk.length && res.status === 206) {
          throw new RegistryRangeError(`206 body longer than the ${length} bytes of Content-Range "${contentRange ?? ''}"`, ctx)
        }
        chunk.copy(buf, got, 0, take)
        got += take
        if (got === length) break // a 200 for a 0-based range: the rest of the blob is not wanted
      }
      if (got < length) {
        if (res.status === 200) throw new RegistryRangeError(`blob has only ${got} bytes, asked up to byte ${endInclusive}`, ctx)
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

/** A byte range of a blob being downloaded: where it starts and ends in the blob, and the blob's total size. */
export type RangeStream = Readable & { readonly start: number, readonly end: number, readonly total: number | undefined }

/**
 * Opens bytes `[start, endInclusive]` (or to the end) of a blob as a stream, for a caller that relays them (a
 * registry mirror answering a `Range` request it cannot serve itself). The registry must answer 206 with a
 * `Content-Range` starting at `start`; a range has no digest of its own, so the bytes are not checked here, and a
 * body cut short errors the stream.
 */
export async function openRange (t: Transport, counters: TrafficCounters, target: Target, start: number,
  endInclusive?: number): Promise<RangeStream> {
  const ctx: RegistryErrorContext = { host: target.host, repository: target.repository, target: target.digest }
  if (!Number.isSafeInteger(start) || start < 0 || (endInclusive !== undefined && (!Number.isSafeInteger(endInclusive) || endInclusive < start))) {
    throw new RegistryRangeError(`invalid range ${start}-${endInclusive ?? ''}`, ctx)
  }
  const res = await blobRequest(t, target, `bytes=${start}-${endInclusive ?? ''}`)
  const cr = parseContentRange(header(res.headers, 'content-range'))
  if (res.status !== 206 || cr === undefined || cr.start !== start || (endInclusive !== undefined && cr.end > endInclusive)) {
    discard(res.body)
    throw new RegistryRangeError(`range ${start}-${endInclusive ?? ''} answered HTTP ${res.status} with Content-Range ` +
      `"${header(res.headers, 'content-range') ?? 'none'}"`, ctx)
  }
  const want = cr.end - cr.start + 1
  async function * flow (): AsyncGenerator<Buffer> {
    let got = 0
    try {
      for await (const raw of res.body as AsyncIterable<Buffer>) {
        counters.addDownloaded(target.host, raw.length)
        got += raw.length
        if (got > want) throw new RegistryTruncatedError(`range body longer than its ${want} bytes`, ctx)
        yield raw
      }
      if (got < want) throw new RegistryTruncatedError(`range body cut at ${got} of ${want} bytes`, ctx)
    } finally {
      discard(res.body)
    }
  }
  return Object.assign(Readable.from(flow(), { objectMode: false }), { start: cr.start, end: cr.end, total: cr.total })
}
