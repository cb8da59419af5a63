/**
 * Pushing blobs: monolithic (POST, then one PUT with the body) or chunked (POST, a PATCH per chunk, then PUT), and
 * cross-repository mounts. The source is hashed while it is sent, so a source that does not match its digest is
 * reported as such (not as the registry's 400). An upload is retried from a fresh session, never by replaying a
 * PATCH, because after a failure we cannot know how much of it the registry kept.
 */
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { repositoryScope } from './auth.js'
import {
  DigestMismatchError, RegistryError, RegistryUploadError, type RegistryErrorContext
} from './errors.js'
import { digestAlgorithm } from './reference.js'
import { delay } from '../base/index.js'
import { header, isRetryableNetworkError, type Response, type Transport } from './transport.js'

/** Bytes to push: a file path or a factory (called again on every retry). */
export type BlobSource = string | (() => AsyncIterable<Uint8Array>)

export interface UploadOptions {
  /** PATCH per chunk instead of one PUT; registries behind proxies with body limits need it */
  chunked?: boolean
  /** bytes per PATCH (default 8 MiB; S3-backed registries want ≥ 5 MiB) */
  chunkSize?: number
  signal?: AbortSignal
}

export const DEFAULT_CHUNK_SIZE = 8 << 20

interface Target { host: string, repository: string, digest: string, size: number }

/** Appends `digest=` without re-encoding the session's own query parameters (its `_state` must come back intact). */
export function withDigest (url: string, digest: string): string {
  const u = new URL(url)
  const q = `digest=${encodeURIComponent(digest)}`
  u.search = u.search.length > 1 ? `${u.search.slice(1)}&${q}` : q
  return u.href
}

/** The next upload URL from a Location header, relative to the URL that answered. */
function nextLocation (res: Response, ctx: RegistryErrorContext): string {
  const location = header(res.headers, 'location')
  if (location === undefined || location === '') throw new RegistryUploadError(`upload answer ${res.status} without a Location`, ctx)
  return new URL(location, res.url).href
}

/** Retryable: network faults and the statuses a registry gives when it is busy or failing. */
function retryable (err: unknown): boolean {
  if (err instanceof RegistryError) {
    // a PUT or PATCH is sent once by the transport, so a reset during it surfaces here as a network error
    if (err.code === 'RAFSPEER_ERR_REGISTRY_NETWORK') return isRetryableNetworkError(err.cause)
    return err.status !== undefined && (err.status >= 500 || err.status === 429 || err.status === 408)
  }
  return isRetryableNetworkError(err)
}

/**
 * Wraps the source: hashes and counts it, and fails the request body itself when the bytes disagree with the
 * announced size or digest, so a wrong source is never committed.
 */
function verified (source: BlobSource, target: Target, ctx: RegistryErrorContext, onError: (e: RegistryError) => void):
() => AsyncIterable<Uint8Array> {
  const open = typeof source === 'string' ? () => createReadStream(source) as AsyncIterable<Buffer> : source
  return async function * () {
    const hash = createHash(digestAlgorithm(target.digest))
    let n = 0
    for await (const chunk of open()) {
      n += chunk.byteLength
      if (n > target.size) {
        const e = new RegistryUploadError(`source is longer than the declared ${target.size} bytes`, ctx)
        onError(e)
        throw e
      }
      hash.update(chunk)
      yield chunk
    }
    const actual = `${digestAlgorithm(target.digest)}:${hash.digest('hex')}`
    if (n !== target.size || actual !== target.digest) {
      const e = n !== target.size
        ? new RegistryUploadError(`source has ${n} bytes, declared ${target.size}`, ctx)
        : new DigestMismatchError(target.digest, actual, ctx)
      onError(e)
      throw e
    }
  }
}

/** Regroups a byte stream into pieces of exactly `size` bytes (the last one shorter). */
async function * pieces (source: AsyncIterable<Uint8Array>, size: number): AsyncGenerator<Buffer> {
  let parts: Buffer[] = []
  let n = 0
  for await (const c of source) {
    let chunk = Buffer.from(c.buffer, c.byteOffset, c.byteLength)
    while (chunk.length > 0) {
      const take = Math.min(size - n, chunk.length)
      parts.push(chunk.subarray(0, take))
      n += take
      chunk = chunk.subarray(take)
      if (n === size) { yield Buffer.concat(parts, n); parts = []; n = 0 }
    }
  }
  if (n > 0) yield Buffer.concat(parts, n)
}

export async function uploadBlob (t: Transport, target: Target, source: BlobSource, opts: UploadOptions): Promise<void> {
  const ctx: RegistryErrorContext = { host: target.host, repository: target.repository, target: target.digest }
  for (let attempt = 0; ; attempt++) {
    try {
      await uploadOnce(t, target, source, opts, ctx)
      return
    } catch (err) {
      if (opts.signal?.aborted === true) throw opts.signal.reason
      if (!retryable(err) || attempt >= t.retries) throw err
      await delay(t.backoff(attempt), opts.signal)
    }
  }
}

async function uploadOnce (t: Transport, target: Target, source: BlobSource, opts: UploadOptions,
  ctx: RegistryErrorContext): Promise<void> {
  const { host, repository, digest, size } = target
  const scopes = [repositoryScope(repository, 'pull,push')]
  const signal = opts.signal !== undefined ? { signal: opts.signal } : {}
  const started = await t.send({
    method: 'POST', host, url: `/v2/${repository}/blobs/uploads/`, ctx, scopes, expect: [202], ...signal,
    headers: { 'content-length': '0' }
  })
  await started.body.dump().catch(() => {})
  let url = nextLocation(started, ctx)
  let sourceError: RegistryError | undefined
  const body = verified(source, target, ctx, e => { sourceError = e })
  const octets = { 'content-type': 'application/octet-stream' }
  try {
    let done: Response
    if (opts.chunked !== true) {
      done = await t.send({
        method: 'PUT', host, url: withDigest(url, digest), ctx, scopes, expect: [201], retry: false, stream: true, ...signal,
        headers: { ...octets, 'content-length': String(size) }, body
      })
    } else {
      const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE
      if (!Number.isSafeInteger(chunkSize) || chunkSize < 1) throw new RangeError(`chunkSize must be a positive integer, got ${chunkSize}`)
      let offset = 0
      for await (const piece of pieces(body(), chunkSize)) {
        const end = offset + piece.length - 1
        const res = await t.send({
          method: 'PATCH', host, url, ctx, scopes, expect: [202], retry: false, ...signal,
          headers: { ...octets, 'content-length': String(piece.length), 'content-range': `${offset}-${end}` },
          body: piece
        })
        await res.body.dump().catch(() => {})
        // the registry echoes what it holds; anything else means our next PATCH would land in the wrong place
        const range = header(res.headers, 'range')
        if (range !== undefined && range.replace(/^bytes=/, '') !== `0-${end}`) {
          throw new RegistryUploadError(`after PATCH of bytes ${offset}-${end} the registry holds "${range}"`, ctx)
        }
        url = nextLocation(res, ctx)
        offset = end + 1
      }
      done = await t.send({
        method: 'PUT', host, url: withDigest(url, digest), ctx, scopes, expect: [201], ...signal,
        headers: { 'content-length': '0' }
      })
    }
    await done.body.dump().catch(() => {})
    const echoed = header(done.headers, 'docker-content-digest')
    if (echoed !== undefined && echoed !== digest) {
      throw new RegistryUploadError(`registry committed the blob as ${echoed}`, ctx)
    }
  } catch (err) {
    await cancel(t, url, host, scopes, ctx)
    if (sourceError !== undefined) throw sourceError
    throw err
  }
}

/** Best effort: a dead session would otherwise hold its partial data until the registry purges it. */
async function cancel (t: Transport, url: string, host: string, scopes: string[], ctx: RegistryErrorContext): Promise<void> {
  try {
    const res = await t.send({ method: 'DELETE', host, url, ctx, scopes, expect: [200, 202, 204, 404], retry: false })
    await res.body.dump().catch(() => {})
  } catch {}
}

/**
 * Asks the registry to link `digest` from `fromRepository` into `repository` without sending bytes. True when it
 * did (201); false when it opened an upload instead (202), which is cancelled so the caller can push normally.
 */
export async function mount (t: Transport, host: string, repository: string, digest: string, fromRepository: string,
  signal?: AbortSignal): Promise<boolean> {
  const ctx: RegistryErrorContext = { host, repository, target: digest }
  const scopes = [repositoryScope(repository, 'pull,push'), repositoryScope(fromRepository, 'pull')]
  const res = await t.send({
    method: 'POST',
    host,
    url: `/v2/${repository}/blobs/uploads/?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(fromRepository)}`,
    ctx,
    scopes,
    expect: [201, 202],
    headers: { 'content-length': '0' },
    ...(signal !== undefined ? { signal } : {})
  })
  await res.body.dump().catch(() => {})
  if (res.status === 201) return true
  const location = header(res.headers, 'location')
  if (location !== undefined) await cancel(t, new URL(location, res.url).href, host, scopes, ctx)
  return false
}
