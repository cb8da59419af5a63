/**
 * The OCI distribution client: pull side (ping, manifests with platform selection, blob streams and ranges) and
 * push side (blob uploads, mounts, manifests). It keeps no image state of its own; convert orchestrates pushes and
 * puts the manifest last.
 */
import { createHash } from 'node:crypto'
import type { Agent, Dispatcher } from 'undici'
import { Authenticator, parseWwwAuthenticate, repositoryScope, type Credentials } from './auth.js'
import { RangeSupport, fetchRange, openBlob, openRange, type BlobStream, type RangeStream } from './blob-download.js'
import { mount, uploadBlob, type BlobSource, type UploadOptions } from './blob-upload.js'
import {
  DigestMismatchError, ManifestInvalidError, RegistryHttpError, RegistryTooLargeError, RegistryUploadError,
  type RegistryErrorContext
} from './errors.js'
import {
  MANIFEST_MEDIA_TYPES, MAX_MANIFEST_BYTES, isIndex, parseManifest, parsePlatform, selectPlatform,
  type ImageIndex, type ImageManifest, type Platform
} from './manifest.js'
import { digestAlgorithm, registryEndpoint, toReference, validateDigest, type ImageReference } from './reference.js'
import { TrafficCounters, Transport, header, readCapped, undici } from './transport.js'
import type { ComponentLogger } from '../base/index.js'

export const DEFAULT_TIMEOUT_MS = 30_000
export const DEFAULT_RETRIES = 3
export const DEFAULT_RETRY_BASE_MS = 250
export const DEFAULT_RETRY_MAX_MS = 8_000
export const DEFAULT_MAX_RETRY_AFTER_MS = 60_000
export const DEFAULT_USER_AGENT = 'rafspeer/0.1'

export interface RegistryClientInit {
  /**
   * `'auto'` (default): plain HTTP for loopback hosts (127.x, localhost, ::1), TLS for the rest; a function decides
   * per `host[:port]` (a mirror with per-upstream settings)
   */
  plainHttp?: boolean | 'auto' | ((host: string) => boolean)
  /** extra CA certificate(s), PEM, for registries with a private CA */
  ca?: string | Buffer
  /** per registry host (`host[:port]`, or `docker.io`); win over the Docker config */
  credentials?: Record<string, Credentials>
  /** a Docker `config.json` or its directory; default `$DOCKER_CONFIG/config.json` or `~/.docker/config.json` */
  dockerConfig?: string
  /** extra attempts after a 5xx, 429, reset or timeout (default 3) */
  retries?: number
  /** deadline of a request without a long body, and idle timeout of one with it (default 30 s) */
  timeoutMs?: number
  /** first backoff delay, doubled per attempt, with jitter (default 250 ms) */
  retryBaseMs?: number
  retryMaxMs?: number
  /** a longer Retry-After fails at once (default 60 s) */
  maxRetryAfterMs?: number
  userAgent?: string
  /** an undici dispatcher to send through (a proxy agent, a mock); `ca` is ignored when given */
  dispatcher?: Dispatcher
  /** where the client says what the caller should know (a registry that ignores `Range`); default: nowhere */
  logger?: ComponentLogger
}

export interface CallOptions {
  signal?: AbortSignal
  /**
   * Pass another client's credentials through (a registry mirror): this `Authorization` is sent as is (null:
   * anonymous), no credentials or tokens of this client are used, and a 401 fails with its challenge attached.
   */
  authorization?: string | null
}

export interface GetManifestOptions extends CallOptions {
  /** `linux/amd64`, `linux/arm64/v8`: when the reference names an index, return that platform's manifest */
  platform?: string | Platform
  /** the `Accept` header (default: every manifest and index type this client reads) */
  accept?: string
}

/** A manifest as the registry sent it, unparsed: what a mirror relays. */
export interface RawManifest {
  bytes: Buffer
  /** the registry's `Content-Type`, without parameters */
  mediaType: string | undefined
  /** `sha256:…` of `bytes`: checked against the reference's digest and against `Docker-Content-Digest` */
  digest: string
}

export interface ManifestResult {
  mediaType: string
  /** sha256 of `bytes`, checked against the asked digest and the registry's `Docker-Content-Digest` */
  digest: string
  bytes: Buffer
  json: ImageManifest | ImageIndex
  /** set when the manifest was chosen from an index for a platform */
  index?: { digest: string, mediaType: string }
}

export interface PingResult {
  host: string
  /** the base URL used, with the scheme chosen */
  url: string
  status: number
  /** what the registry asks for on `/v2/` */
  auth: 'none' | 'basic' | 'bearer' | 'other'
  apiVersion: string | undefined
}

export interface PushBlobResult {
  digest: string
  size: number
  /** false when the registry already had it (nothing sent) */
  pushed: boolean
}

type Ref = string | ImageReference

export class RegistryClient {
  /** bytes downloaded and uploaded, per registry host */
  readonly counters = new TrafficCounters()
  private readonly transport: Transport
  private readonly auth: Authenticator
  private owned: Agent | undefined
  private readonly ranges: RangeSupport

  constructor (init: RegistryClientInit = {}) {
    this.ranges = new RangeSupport(init.logger?.forComponent('rafspeer:registry'))
    const { dispatcher: given, ca } = init
    // undici is loaded with the first request (see transport.ts); so is the pool for a custom CA
    const dispatcher = async (): Promise<Dispatcher> => {
      if (given !== undefined) return given
      const { Agent, getGlobalDispatcher } = await undici()
      if (ca === undefined) return getGlobalDispatcher()
      this.owned ??= new Agent({ connect: { ca } })
      return this.owned
    }
    let transport: Transport | undefined
    this.auth = new Authenticator({
      ...(init.credentials !== undefined ? { credentials: init.credentials } : {}),
      ...(init.dockerConfig !== undefined ? { dockerConfig: init.dockerConfig } : {}),
      fetchToken: async (url, headers, signal) => await transport!.fetchToken(url, headers, signal)
    })
    transport = this.transport = new Transport({
      plainHttp: init.plainHttp ?? 'auto',
      dispatcher,
      auth: this.auth,
      counters: this.counters,
      retries: init.retries ?? DEFAULT_RETRIES,
      timeoutMs: init.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      retryBaseMs: init.retryBaseMs ?? DEFAULT_RETRY_BASE_MS,
      retryMaxMs: init.retryMaxMs ?? DEFAULT_RETRY_MAX_MS,
      maxRetryAfterMs: init.maxRetryAfterMs ?? DEFAULT_MAX_RETRY_AFTER_MS,
      userAgent: init.userAgent ?? DEFAULT_USER_AGENT
    })
  }

  /** Token requests sent so far (each cached token saves one). */
  get tokenRequests (): number { return this.auth.tokenRequests }

  /** Closes the connection pool the client created for a custom CA; a shared dispatcher is left alone. */
  async close (): Promise<void> {
    await this.owned?.close()
  }

  /** `GET /v2/`: is this an OCI registry, and which auth does it ask for. A 401 is an answer, not an error. */
  async ping (host: string, opts: CallOptions = {}): Promise<PingResult> {
    const endpoint = registryEndpoint(host)
    const res = await this.transport.send({
      method: 'GET', host: endpoint, url: '/v2/', ctx: { host: endpoint }, scopes: [], expect: [200, 401], ...sig(opts)
    })
    await res.body.dump().catch(() => {})
    const schemes = parseWwwAuthenticate(res.headers['www-authenticate']).map(c => c.scheme)
    const auth = res.status === 200 ? 'none' : schemes.includes('bearer') ? 'bearer' : schemes.includes('basic') ? 'basic' : 'other'
    return { host: endpoint, url: this.transport.baseUrl(endpoint), status: res.status, auth, apiVersion: header(res.headers, 'docker-distribution-api-version') }
  }

  /**
   * Fetches a manifest or index by tag or digest. With `platform`, an index is resolved to that platform's
   * manifest (fetched by digest and verified). Every byte is hashed: against the reference's digest when there is
   * one, and against `Docker-Content-Digest` when the registry sends it.
   */
  async getManifest (ref: Ref, opts: GetManifestOptions = {}): Promise<ManifestResult> {
    const r = toReference(ref)
    const host = registryEndpoint(r.registry)
    const result = await this.fetchManifest(host, r.repository, r.digest ?? r.tag ?? 'latest', opts)
    if (opts.platform === undefined || !isIndex(result.json)) return result
    const platform = typeof opts.platform === 'string' ? parsePlatform(opts.platform) : opts.platform
    const ctx = { host, repository: r.repository, target: result.digest }
    const chosen = selectPlatform(result.json, platform, ctx)
    const child = await this.fetchManifest(host, r.repository, chosen.digest, opts)
    if (isIndex(child.json)) throw new ManifestInvalidError(`index entry ${chosen.digest} is itself an index`, ctx)
    if (child.bytes.length !== chosen.size) {
      throw new ManifestInvalidError(`manifest ${chosen.digest} is ${child.bytes.length} bytes, index says ${chosen.size}`, ctx)
    }
    return { ...child, index: { digest: result.digest, mediaType: result.mediaType } }
  }

  /** `HEAD` of a manifest: its digest, type and size, or undefined when the tag or digest does not exist. */
  async headManifest (ref: Ref, opts: CallOptions = {}): Promise<{ digest: string | undefined, mediaType: string | undefined, size: number | undefined } | undefined> {
    const r = toReference(ref)
    const host = registryEndpoint(r.registry)
    const target = r.digest ?? r.tag ?? 'latest'
    const res = await this.transport.send({
      method: 'HEAD', host, url: `/v2/${r.repository}/manifests/${target}`, ctx: { host, repository: r.repository, target },
      scopes: [repositoryScope(r.repository, 'pull')], headers: { accept: MANIFEST_MEDIA_TYPES.join(', ') }, expect: [200, 404], ...sig(opts)
    })
    await res.body.dump().catch(() => {})
    if (res.status === 404) return undefined
    const length = header(res.headers, 'content-length')
    return {
      digest: header(res.headers, 'docker-content-digest'),
      mediaType: header(res.headers, 'content-type')?.split(';')[0],
      size: length !== undefined ? Number(length) : undefined
    }
  }

  /**
   * A manifest's bytes, media type and digest, not parsed (any media type the `Accept` allows: a mirror relays what
   * its client asked for). The bytes are size-capped and checked like `getManifest`'s.
   */
  async getManifestBytes (ref: Ref, opts: GetManifestOptions = {}): Promise<RawManifest> {
    const r = toReference(ref)
    const host = registryEndpoint(r.registry)
    const target = r.digest ?? r.tag ?? 'latest'
    const { bytes, digest, res } = await this.manifestBytes(host, r.repository, target, opts)
    return { bytes, digest, mediaType: header(res.headers, 'content-type')?.split(';')[0]?.trim() }
  }

  private async manifestBytes (host: string, repository: string, target: string, opts: GetManifestOptions): Promise<{ bytes: Buffer, digest: string, res: Awaited<ReturnType<Transport['send']>> }> {
    const ctx: RegistryErrorContext = { host, repository, target }
    const res = await this.transport.send({
      method: 'GET', host, url: `/v2/${repository}/manifests/${target}`, ctx, scopes: [repositoryScope(repository, 'pull')],
      headers: { accept: opts.accept ?? MANIFEST_MEDIA_TYPES.join(', ') }, expect: [200], notFound: 'manifest', ...sig(opts)
    })
    const bytes = await readCapped(res, MAX_MANIFEST_BYTES, ctx, 'manifest', this.counters)
    const byDigest = target.includes(':')
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`
    if (byDigest) checkDigest(bytes, target, ctx)
    const echoed = header(res.headers, 'docker-content-digest')
    if (echoed !== undefined) {
      try { validateDigest(echoed) } catch (err) {
        throw new RegistryHttpError(`invalid Docker-Content-Digest "${echoed}"`, ctx, { cause: err })
      }
      checkDigest(bytes, echoed, ctx)
    }
    return { bytes, digest: byDigest ? target : digest, res }
  }

  private async fetchManifest (host: string, repository: string, target: string, opts: GetManifestOptions): Promise<ManifestResult> {
    const ctx: RegistryErrorContext = { host, repository, target }
    const { bytes, digest, res } = await this.manifestBytes(host, repository, target, opts)
    const { mediaType, json } = parseManifest(bytes, header(res.headers, 'content-type'), ctx)
    return { mediaType, digest, bytes, json }
  }

  /**
   * Stores a manifest under the reference's tag (or digest) and returns its digest. Push every blob it names
   * first: the registry may refuse a manifest whose blobs are missing, and a manifest is what makes an image
   * visible, so it must come last.
   */
  async putManifest (ref: Ref, mediaType: string, bytes: Uint8Array, opts: CallOptions = {}): Promise<string> {
    const r = toReference(ref)
    const host = registryEndpoint(r.registry)
    const body = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    const target = r.digest ?? r.tag ?? 'latest'
    const ctx: RegistryErrorContext = { host, repository: r.repository, target }
    if (body.length > MAX_MANIFEST_BYTES) throw new RegistryTooLargeError(`manifest of ${body.length} bytes`, MAX_MANIFEST_BYTES, ctx)
    const digest = r.digest !== undefined ? checkDigest(body, r.digest, ctx) : `sha256:${createHash('sha256').update(body).digest('hex')}`
    const res = await this.transport.send({
      method: 'PUT', host, url: `/v2/${r.repository}/manifests/${target}`, ctx, scopes: [repositoryScope(r.repository, 'pull,push')],
      headers: { 'content-type': mediaType }, body, expect: [201], notFound: 'repository or referenced blob', ...sig(opts)
    })
    await res.body.dump().catch(() => {})
    const echoed = header(res.headers, 'docker-content-digest')
    if (echoed !== undefined && echoed !== digest) throw new RegistryUploadError(`registry stored the manifest as ${echoed}, expected ${digest}`, ctx)
    return digest
  }

  /** The blob's size, or undefined when the repository does not have it. */
  async headBlob (repo: Ref, digest: string, opts: CallOptions = {}): Promise<number | undefined> {
    const { host, repository } = this.repo(repo, digest)
    const ctx = { host, repository, target: digest }
    const res = await this.transport.send({
      method: 'HEAD', host, url: `/v2/${repository}/blobs/${digest}`, ctx, scopes: [repositoryScope(repository, 'pull')],
      expect: [200, 404], ...sig(opts)
    })
    await res.body.dump().catch(() => {})
    if (res.status === 404) return undefined
    const length = header(res.headers, 'content-length')
    if (length === undefined || !/^\d+$/.test(length)) throw new RegistryHttpError('HEAD of a blob without Content-Length', ctx)
    return Number(length)
  }

  async blobExists (repo: Ref, digest: string, opts: CallOptions = {}): Promise<boolean> {
    return await this.headBlob(repo, digest, opts) !== undefined
  }

  /**
   * Opens a blob for reading. Rejects at once on 404/auth; the stream is verified against `digest` as it flows,
   * resumes with Range after a reset, and errors (withholding its last chunk) on a mismatch.
   */
  async getBlob (repo: Ref, digest: string, opts: CallOptions = {}): Promise<BlobStream> {
    const { host, repository } = this.repo(repo, digest)
    return await openBlob(this.transport, this.counters, { host, repository, digest, ...sig(opts) }, this.ranges)
  }

  /**
   * Bytes `[start, endInclusive]` of a blob, via `Range` (see `fetchRange` for what is accepted). Against a registry
   * that ignores Range, the bytes before `start` are downloaded and skipped. `onBytes` hears the range's bytes as
   * they arrive; with `into` (a buffer of the range's length) they land there, and `onFilled` hears how many are in
   * from the start, so the caller can use the first bytes before the last arrive.
   */
  async fetchBlobRange (repo: Ref, digest: string, start: number, endInclusive: number,
    opts: CallOptions & { onBytes?: (n: number) => void, into?: Buffer, onFilled?: (bytes: number) => void } = {}): Promise<Buffer> {
    const { host, repository } = this.repo(repo, digest)
    const sink = opts.into !== undefined ? { into: opts.into, filled: opts.onFilled ?? (() => {}) } : undefined
    return await fetchRange(this.transport, this.counters, { host, repository, digest, ...sig(opts) }, start, endInclusive, this.ranges, opts.onBytes, sink)
  }

  /**
   * Whether the registry of `repo` answered this client's last Range request with the whole blob: every range read
   * from it then costs the bytes before the range, so a caller reads what it needs of a blob in as few requests as
   * it can.
   */
  ignoresRange (repo: Ref): boolean {
    return this.ranges.ignores(registryEndpoint(toReference(repo).registry))
  }

  /** Bytes `[start, endInclusive]` (or to the end) of a blob as a stream, unchecked (see `openRange`). */
  async getBlobRange (repo: Ref, digest: string, start: number, endInclusive?: number, opts: CallOptions = {}): Promise<RangeStream> {
    const { host, repository } = this.repo(repo, digest)
    return await openRange(this.transport, this.counters, { host, repository, digest, ...sig(opts) }, start, endInclusive, this.ranges)
  }

  /**
   * Uploads a blob unless the repository already has it. `source` is a file path or a factory of byte streams
   * (called again on retry); its bytes must hash to `digest` or the upload fails with DigestMismatchError.
   */
  async pushBlob (repo: Ref, digest: string, size: number, source: BlobSource, opts: UploadOptions = {}): Promise<PushBlobResult> {
    const { host, repository } = this.repo(repo, digest)
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`blob size must be a non-negative integer, got ${size}`)
    const existing = await this.headBlob(repo, digest, sig(opts))
    if (existing === size) return { digest, size, pushed: false }
    await uploadBlob(this.transport, { host, repository, digest, size }, source, opts)
    return { digest, size, pushed: true }
  }

  /** Cross-repository mount: true when mounted (201), false when the registry wants an upload instead (202). */
  async mountBlob (repo: Ref, digest: string, fromRepository: string, opts: CallOptions = {}): Promise<boolean> {
    const { host, repository } = this.repo(repo, digest)
    const from = toReference(`${host}/${fromRepository}`).repository
    return await mount(this.transport, host, repository, digest, from, opts.signal)
  }

  private repo (ref: Ref, digest: string): { host: string, repository: string } {
    validateDigest(digest)
    const r = toReference(ref)
    return { host: registryEndpoint(r.registry), repository: r.repository }
  }
}

function sig (opts: CallOptions): { signal?: AbortSignal, authorization?: string | null } {
  return {
    ...(opts.signal !== undefined ? { signal: opts.signal } : {}),
    ...(opts.authorization !== undefined ? { authorization: opts.authorization } : {})
  }
}

/** Returns the digest when `bytes` hash to it; throws DigestMismatchError otherwise. */
function checkDigest (bytes: Buffer, expected: string, ctx: RegistryErrorContext): string {
  const algorithm = digestAlgorithm(expected)
  const actual = `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`
  if (actual !== expected) throw new DigestMismatchError(expected, actual, ctx)
  return expected
}
