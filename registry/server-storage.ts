/**
 * On-disk storage of the embedded registry.
 *
 * ```
 * root/blobs/<alg>/<hh>/<hex>                              content, shared by every repository
 * root/repositories/<name>/_layers/<alg>/<hex>             marker: the repository holds this blob
 * root/repositories/<name>/_manifests/revisions/<alg>/<hex> {"mediaType"} of a manifest stored as a blob
 * root/repositories/<name>/_manifests/tags/<tag>           digest the tag points at
 * root/uploads/<uuid>                                      upload sessions and temporary files
 * ```
 * Repository components cannot start with `_`, so the markers never collide with a nested repository. Every
 * file appears by rename from `uploads/` (same file system), so a reader sees the whole file or none.
 */
import { createHash, randomUUID, type Hash } from 'node:crypto'
import { createReadStream, createWriteStream } from 'node:fs'
import { mkdir, readdir, readFile, rename, rm, stat, truncate, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { Transform, type Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { DistributionError, isDigest, isTag } from './server-http.js'

/**
 * Upload sessions idle longer than this are dropped with their file. A client pushing a layer sends its next chunk
 * within seconds; ten minutes leaves room for a slow client between chunks without letting abandoned sessions pile
 * up on disk for an hour.
 */
export const DEFAULT_UPLOAD_IDLE_MS = 10 * 60 * 1000
/**
 * Upload sessions open at once. Pushers open a handful each (skopeo and containerd push 3 to 6 layers in parallel);
 * the bound keeps a client that opens sessions and never finishes them from growing memory and disk without end.
 */
export const DEFAULT_MAX_UPLOADS = 256
/** how often idle sessions are looked for, at most (a short idle time is looked for more often) */
const MAX_REAP_INTERVAL_MS = 60_000

export interface RegistryStorageInit {
  /** upload sessions open at once; `newUpload` past it fails with 429 TOOMANYREQUESTS (default 256) */
  maxUploads?: number
  /** a session without a request for this long is dropped with its data (default 10 min) */
  uploadIdleMs?: number
  /** milliseconds clock of the idle times */
  now?: () => number
}

export interface UploadSession {
  readonly id: string
  readonly name: string
  readonly path: string
  size: number
  /** sha256 of the bytes so far, kept incrementally so the final PUT needs no second pass over the file. */
  hash: Hash
  busy: boolean
  touched: number
}

export interface StoredManifest { digest: string, mediaType: string, size: number, path: string }

export interface ReceiveOptions {
  /** Exact body length the caller announced (Content-Range or Content-Length); fewer or more bytes fail. */
  expected?: number
  onBytes?: (n: number) => void
}

function split (digest: string): [string, string] {
  const i = digest.indexOf(':')
  return [digest.slice(0, i), digest.slice(i + 1)]
}

async function exists (path: string): Promise<boolean> {
  try { await stat(path); return true } catch { return false }
}

export class RegistryStorage {
  readonly root: string
  private readonly uploads = new Map<string, UploadSession>()
  private readonly maxUploads: number
  private readonly uploadIdleMs: number
  private readonly now: () => number

  constructor (root: string, init: RegistryStorageInit = {}) {
    this.root = root
    this.maxUploads = init.maxUploads ?? DEFAULT_MAX_UPLOADS
    this.uploadIdleMs = init.uploadIdleMs ?? DEFAULT_UPLOAD_IDLE_MS
    this.now = init.now ?? Date.now
  }

  /** How often the server should call `reapIdleUploads`: a session is then dropped at most 1.5 idle times late. */
  get reapIntervalMs (): number { return Math.max(10, Math.min(MAX_REAP_INTERVAL_MS, Math.floor(this.uploadIdleMs / 2))) }

  async init (): Promise<void> {
    // Sessions live in memory; files left by an earlier process can never be resumed.
    await rm(join(this.root, 'uploads'), { recursive: true, force: true })
    await mkdir(join(this.root, 'uploads'), { recursive: true })
    await mkdir(join(this.root, 'blobs'), { recursive: true })
    await mkdir(join(this.root, 'repositories'), { recursive: true })
  }

  blobPath (digest: string): string {
    const [alg, hex] = split(digest)
    return join(this.root, 'blobs', alg, hex.slice(0, 2), hex)
  }

  private repoDir (name: string): string { return join(this.root, 'repositories', ...name.split('/')) }
  private layerLink (name: string, digest: string): string { return join(this.repoDir(name), '_layers', ...split(digest)) }
  private revisionLink (name: string, digest: string): string {
    return join(this.repoDir(name), '_manifests', 'revisions', ...split(digest))
  }

  private tagLink (name: string, tag: string): string { return join(this.repoDir(name), '_manifests', 'tags', tag) }
  private tempPath (): string { return join(this.root, 'uploads', `${randomUUID()}.tmp`) }

  private async writeAtomic (path: string, data: string | Buffer): Promise<void> {
    const tmp = this.tempPath()
    await writeFile(tmp, data)
    await mkdir(dirname(path), { recursive: true })
    await rename(tmp, path)
  }

  async repoExists (name: string): Promise<boolean> {
    const dir = this.repoDir(name)
    return await exists(join(dir, '_layers')) || await exists(join(dir, '_manifests'))
  }

  /** Size of a blob the repository holds, or undefined. */
  async blobSize (name: string, digest: string): Promise<number | undefined> {
    if (!await exists(this.layerLink(name, digest))) return undefined
    try { return (await stat(this.blobPath(digest))).size } catch { return undefined }
  }

  async linkBlob (name: string, digest: string): Promise<void> {
    const link = this.layerLink(name, digest)
    if (await exists(link)) return
    await this.writeAtomic(link, '')
  }

  async unlinkBlob (name: string, digest: string): Promise<boolean> {
    if (!await exists(this.layerLink(name, digest))) return false
    await rm(this.layerLink(name, digest), { force: true })
    return true
  }

  // ---- uploads

  /** Drops every session that is not being written and saw no request for the idle time, with its file. */
  async reapIdleUploads (): Promise<number> {
    const now = this.now()
    const idle = [...this.uploads.values()].filter(s => !s.busy && now - s.touched > this.uploadIdleMs)
    await Promise.all(idle.map(async s => await this.deleteUpload(s)))
    return idle.length
  }

  async newUpload (name: string): Promise<UploadSession> {
    if (this.uploads.size >= this.maxUploads) await this.reapIdleUploads()
    if (this.uploads.size >= this.maxUploads) {
      throw new DistributionError('TOOMANYREQUESTS', `too many upload sessions open (${this.maxUploads}): finish or cancel one, or retry later`, {
        detail: { open: this.uploads.size, max: this.maxUploads },
        // a session frees up when a push finishes; the client's retry should come after that, not at once
        headers: { 'Retry-After': '1' }
      })
    }
    const now = this.now()
    const id = randomUUID()
    const session: UploadSession = { id, name, path: join(this.root, 'uploads', id), size: 0, hash: createHash('sha256'), busy: false, touched: now }
    await writeFile(session.path, '')
    this.uploads.set(id, session)
    return session
  }

  /** The session, marked used now (a client asking about its session is not idle). */
  getUpload (name: string, id: string): UploadSession {
    const s = this.uploads.get(id)
    if (s === undefined || s.name !== name) throw new DistributionError('BLOB_UPLOAD_UNKNOWN', 'no such upload', { detail: { id } })
    s.touched = this.now()
    return s
  }

  async deleteUpload (session: UploadSession): Promise<void> {
    this.uploads.delete(session.id)
    await rm(session.path, { force: true })
  }

  /**
   * Appends `body` to the session. All or nothing: on any failure (client abort, wrong length) the file is cut
   * back and the hash restored, so the session stays usable at its previous offset.
   */
  async append (session: UploadSession, body: Readable, opts: ReceiveOptions = {}): Promise<void> {
    if (session.busy) throw new DistributionError('RANGE_INVALID', 'another request is writing this upload')
    session.busy = true
    const saved = session.hash.copy()
    try {
      const n = await receive(body, session.path, 'a', [session.hash], opts)
      session.size += n
    } catch (err) {
      session.hash = saved
      await truncate(session.path, session.size).catch(() => {})
      throw err
    } finally {
      session.busy = false
      session.touched = this.now()
    }
  }

  /** Verifies the session against `digest` and moves it into the blob store, linked to its repository. */
  async commit (session: UploadSession, digest: string): Promise<void> {
    if (session.busy) throw new DistributionError('RANGE_INVALID', 'another request is writing this upload')
    session.busy = true
    try {
      const [alg] = split(digest)
      const actual = alg === 'sha256' ? `sha256:${session.hash.copy().digest('hex')}` : await hashFile(session.path, alg)
      if (actual !== digest) {
        throw new DistributionError('DIGEST_INVALID', 'uploaded content does not match digest', { detail: { expected: digest, actual } })
      }
      await this.store(session.path, digest)
      await this.linkBlob(session.name, digest)
    } catch (err) {
      // A failed verification ends the session: nothing of it may be kept.
      this.uploads.delete(session.id)
      await rm(session.path, { force: true })
      throw err
    }
    this.uploads.delete(session.id)
  }

  /** Single-request upload (`POST ?digest=`): hash while writing a temp file, keep it only if it matches. */
  async putBlob (name: string, digest: string, body: Readable, opts: ReceiveOptions = {}): Promise<void> {
    const tmp = this.tempPath()
    try {
      const hash = createHash(split(digest)[0])
      await receive(body, tmp, 'w', [hash], opts)
      const actual = `${split(digest)[0]}:${hash.digest('hex')}`
      if (actual !== digest) {
        throw new DistributionError('DIGEST_INVALID', 'uploaded content does not match digest', { detail: { expected: digest, actual } })
      }
      await this.store(tmp, digest)
      await this.linkBlob(name, digest)
    } finally {
      await rm(tmp, { force: true })
    }
  }

  private async store (file: string, digest: string): Promise<void> {
    const dest = this.blobPath(digest)
    if (await exists(dest)) { await rm(file, { force: true }); return }
    await mkdir(dirname(dest), { recursive: true })
    await rename(file, dest)
  }

  // ---- manifests

  async putManifest (name: string, reference: string, body: Buffer, mediaType: string): Promise<string> {
    const alg = isDigest(reference) ? split(reference)[0] : 'sha256'
    const digest = `${alg}:${createHash(alg).update(body).digest('hex')}`
    if (isDigest(reference) && reference !== digest) {
      throw new DistributionError('DIGEST_INVALID', 'manifest content does not match the digest it was pushed under', { detail: { expected: reference, actual: digest } })
    }
    if (!await exists(this.blobPath(digest))) await this.writeAtomic(this.blobPath(digest), body)
    await this.writeAtomic(this.revisionLink(name, digest), JSON.stringify({ mediaType }))
    if (!isDigest(reference)) await this.writeAtomic(this.tagLink(name, reference), digest)
    return digest
  }

  async resolve (name: string, reference: string): Promise<string | undefined> {
    if (isDigest(reference)) return reference
    try {
      const digest = (await readFile(this.tagLink(name, reference), 'utf8')).trim()
      return isDigest(digest) ? digest : undefined
    } catch { return undefined }
  }

  async getManifest (name: string, reference: string): Promise<StoredManifest | undefined> {
    const digest = await this.resolve(name, reference)
    if (digest === undefined) return undefined
    try {
      const link = JSON.parse(await readFile(this.revisionLink(name, digest), 'utf8')) as { mediaType?: unknown }
      const path = this.blobPath(digest)
      const size = (await stat(path)).size
      return { digest, mediaType: typeof link.mediaType === 'string' ? link.mediaType : 'application/octet-stream', size, path }
    } catch { return undefined }
  }

  async hasManifest (name: string, digest: string): Promise<boolean> {
    return await exists(this.revisionLink(name, digest))
  }

  /** Deletes a tag, or a manifest revision together with every tag pointing at it. */
  async deleteManifest (name: string, reference: string): Promise<boolean> {
    if (!isDigest(reference)) {
      if (!await exists(this.tagLink(name, reference))) return false
      await rm(this.tagLink(name, reference), { force: true })
      return true
    }
    if (!await this.hasManifest(name, reference)) return false
    for (const tag of await this.tags(name)) {
      if (await this.resolve(name, tag) === reference) await rm(this.tagLink(name, tag), { force: true })
    }
    await rm(this.revisionLink(name, reference), { force: true })
    return true
  }

  async tags (name: string): Promise<string[]> {
    try {
      const entries = await readdir(join(this.repoDir(name), '_manifests', 'tags'))
      return entries.filter(isTag).sort()
    } catch { return [] }
  }
}

/** Streams `body` into `file` through `hashes`; returns the byte count. */
async function receive (body: Readable, file: string, flags: 'a' | 'w', hashes: Hash[], opts: ReceiveOptions): Promise<number> {
  let n = 0
  const meter = new Transform({
    transform (chunk: Buffer, _enc, cb) {
      n += chunk.length
      if (opts.expected !== undefined && n > opts.expected) {
        cb(new DistributionError('SIZE_INVALID', 'body longer than announced', { detail: { expected: opts.expected } }))
        return
      }
      for (const h of hashes) h.update(chunk)
      opts.onBytes?.(chunk.length)
      cb(null, chunk)
    }
  })
  const out = createWriteStream(file, { flags })
  try {
    await pipeline(body, meter, out)
  } finally {
    // The descriptor must be closed before a rollback truncates the file, or a late write could extend it again.
    if (!out.closed) await new Promise<void>(resolve => out.once('close', () => resolve()))
  }
  if (opts.expected !== undefined && n !== opts.expected) {
    throw new DistributionError('SIZE_INVALID', 'body shorter than announced', { detail: { expected: opts.expected, received: n } })
  }
  return n
}

async function hashFile (path: string, alg: string): Promise<string> {
  const h = createHash(alg)
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer)
  return `${alg}:${h.digest('hex')}`
}
