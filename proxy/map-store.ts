/**
 * Confirmed piece maps on disk: one file per blob (`<dir>/<hex>.map`, piece-map.ts's binary form), written only
 * after this node hashed the whole blob to its digest, and atomically (temp file + rename), so a map read back is
 * one this node verified. Maps are small (32 bytes per 4 MiB piece) and outlive the pieces they name: a piece
 * evicted from the cache is fetched again by digest.
 *
 * @example
 * ```ts
 * const maps = new MapStore('/var/lib/rafspeer/proxy/maps')
 * await maps.save(layout, digests)
 * const m = await maps.get('sha256:…')   // { layout, digests } or undefined
 * ```
 */
import { randomBytes } from 'node:crypto'
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { LRUCache } from 'lru-cache'
import { decodeMap, encodeMap, type PieceLayout } from './piece-map.js'

export interface ConfirmedMap { layout: PieceLayout, digests: Buffer[] }

const FILE = /^([0-9a-f]{64})\.map$/

export class MapStore {
  private readonly memo = new LRUCache<string, ConfirmedMap>({ max: 512 })
  private made = false

  constructor (readonly dir: string) {}

  private path (digest: string): string {
    const hex = digest.slice('sha256:'.length)
    if (!digest.startsWith('sha256:') || !/^[0-9a-f]{64}$/.test(hex)) throw new RangeError(`not a sha256 digest: ${digest.slice(0, 80)}`)
    return join(this.dir, `${hex}.map`)
  }

  /** The confirmed map of `digest`, or undefined (none, or a file that does not decode: it is removed). */
  async get (digest: string): Promise<ConfirmedMap | undefined> {
    if (!/^sha256:[0-9a-f]{64}$/.test(digest)) return undefined
    const hit = this.memo.get(digest)
    if (hit !== undefined) return hit
    let buf: Buffer
    try { buf = await readFile(this.path(digest)) } catch { return undefined }
    try {
      const { layout, part } = decodeMap(buf, digest)
      if (part.first !== 0 || part.digests.length !== layout.count) throw new Error('incomplete map')
      const m = { layout, digests: part.digests }
      this.memo.set(digest, m)
      return m
    } catch {
      await rm(this.path(digest), { force: true })
      return undefined
    }
  }

  /** Remembered in memory only (no disk read): for the map server's synchronous answers. */
  peek (digest: string): ConfirmedMap | undefined {
    return this.memo.get(digest)
  }

  async save (layout: PieceLayout, digests: Buffer[]): Promise<void> {
    if (!this.made) { await mkdir(this.dir, { recursive: true }); this.made = true }
    const path = this.path(layout.digest)
    const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`
    await writeFile(tmp, encodeMap({ size: layout.size, pieceBytes: layout.pieceBytes, first: 0, digests }))
    await rename(tmp, path)
    this.memo.set(layout.digest, { layout, digests })
  }

  async remove (digest: string): Promise<void> {
    this.memo.delete(digest)
    await rm(this.path(digest), { force: true })
  }

  /** Digests of every stored map (to announce them at start). */
  async list (): Promise<string[]> {
    let names: string[]
    try { names = await readdir(this.dir) } catch { return [] }
    return names.flatMap(n => { const m = FILE.exec(n); return m === null ? [] : [`sha256:${m[1]!}`] })
  }
}
