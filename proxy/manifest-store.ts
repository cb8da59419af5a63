/**
 * Manifests the mirror has served, by digest, on disk: a digest-addressed manifest can be answered without the
 * upstream (once the client's access is checked), and a restarted or offline node still has them. A file holds the
 * media type on its first line, then the bytes; it is checked against its digest when read. At most `maxEntries`
 * are kept, the least recently used go first.
 *
 * @example
 * ```ts
 * const store = new ManifestStore('/var/lib/rafspeer/proxy/manifests')
 * await store.put(digest, 'application/vnd.oci.image.manifest.v1+json', bytes)
 * const m = await store.get(digest)   // { mediaType, bytes } or undefined
 * ```
 */
import { createHash, randomBytes } from 'node:crypto'
import { mkdir, readFile, readdir, rename, rm, stat, utimes, writeFile } from 'node:fs/promises'
import { join } from 'node:path'

export const DEFAULT_MAX_MANIFESTS = 10_000

export interface StoredManifest { mediaType: string, bytes: Buffer }

export class ManifestStore {
  /** digest → last use, oldest first (Map keeps insertion order; a use re-inserts) */
  private readonly uses = new Map<string, number>()
  private loaded: Promise<void> | undefined

  constructor (readonly dir: string, private readonly maxEntries = DEFAULT_MAX_MANIFESTS) {}

  private path (digest: string): string {
    const [alg, hex] = digest.split(':') as [string, string]
    return join(this.dir, `${alg}-${hex}`)
  }

  private async load (): Promise<void> {
    this.loaded ??= (async () => {
      await mkdir(this.dir, { recursive: true })
      const found: Array<[string, number]> = []
      for (const n of await readdir(this.dir)) {
        const m = /^(sha256|sha512)-([0-9a-f]+)$/.exec(n)
        if (m === null) continue
        try { found.push([`${m[1]!}:${m[2]!}`, (await stat(join(this.dir, n))).mtimeMs]) } catch {}
      }
      found.sort((a, b) => a[1] - b[1])
      for (const [d, t] of found) this.uses.set(d, t)
    })()
    await this.loaded
  }

  async get (digest: string): Promise<StoredManifest | undefined> {
    await this.load()
    if (!this.uses.has(digest)) return undefined
    let buf: Buffer
    try { buf = await readFile(this.path(digest)) } catch { this.uses.delete(digest); return undefined }
    const nl = buf.indexOf(10)
    const bytes = buf.subarray(nl + 1)
    const [alg] = digest.split(':') as [string]
    if (nl < 0 || `${alg}:${createHash(alg).update(bytes).digest('hex')}` !== digest) {
      // a damaged file is not a manifest: forget it, the upstream has the real one
      this.uses.delete(digest)
      await rm(this.path(digest), { force: true })
      return undefined
    }
    this.uses.delete(digest)
    this.uses.set(digest, Date.now())
    // the file's time is its last use, so a restarted store evicts the least recently used too
    const now = new Date()
    await utimes(this.path(digest), now, now).catch(() => {})
    return { mediaType: buf.subarray(0, nl).toString('utf8'), bytes }
  }

  /** Stores verified bytes (the caller checked them against `digest`). */
  async put (digest: string, mediaType: string, bytes: Buffer): Promise<void> {
    await this.load()
    const path = this.path(digest)
    const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`
    await writeFile(tmp, Buffer.concat([Buffer.from(`${mediaType.replace(/[\r\n]/g, '')}\n`), bytes]))
    await rename(tmp, path)
    this.uses.delete(digest)
    this.uses.set(digest, Date.now())
    while (this.uses.size > this.maxEntries) {
      const oldest = this.uses.keys().next().value as string
      this.uses.delete(oldest)
      await rm(this.path(oldest), { force: true })
    }
  }
}
