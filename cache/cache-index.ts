/**
 * The persistent index of the blob cache, as an interface with two implementations (LevelDB and in-memory) that
 * run one conformance suite (`index-conformance.test.ts`).
 *
 * Presence is one record per chunk (`chunk!<blob-id>!<ci index, 8 hex digits>`), not a bitmap in slices:
 * - the record carries what crash recovery and cross-blob copies need: the chunk's digest, its offset and size in
 *   the uncompressed view, and the generation (session) in which it was marked;
 * - marking a chunk is a blind put of one small key: no read-modify-write of a shared slice, so concurrent puts
 *   and group-committed batches cannot lose each other's bits;
 * - keys of one blob share a long prefix that LevelDB prefix-compresses; 100k chunks are ~5 MB on disk and are
 *   loaded by one range scan at open. The hot path never reads the index: `BlobCache` keeps a bitmap in memory.
 * A second record per chunk (`dig!<digest hex>!<blob-id>!<ci>`) answers "who holds this digest" without memory.
 */
import type { Digester } from '../rafs/index.js'

/** One present chunk. `generation` is the cache session (see `meta!generation`) that marked it. */
export interface ChunkRecord {
  index: number
  digest: Buffer
  uncompressedOffset: number
  uncompressedSize: number
  generation: number
}

export interface BlobRecord {
  blobId: string
  uncompressedSize: number
  chunkCount: number
  digester: Digester
  /** every chunk present (the data file is a valid EROFS device) */
  complete: boolean
  /** plaintext bytes present, as of the last time the record was written (recomputed from chunk records at open) */
  bytesPresent: number
  /** ms since the epoch */
  lastAccess: number
}

export interface ImageRecord {
  /** the reference the image was asked for by (`host/repo:tag`, `host/repo@sha256:…`, or a local path) */
  ref: string
  manifestDigest: string
  bootstrapPath: string
  bootstrapDigest: string
  /** blob ids in blob-table order */
  blobIds: string[]
  lastAccess: number
}

export interface ChunkMark { blobId: string, chunk: ChunkRecord }
export interface ChunkUnmark { blobId: string, index: number }
export interface DigestHolder { blobId: string, index: number }

export interface ChunkQuery {
  /** only chunks with generation > this */
  afterGeneration?: number
  /** ci index range, inclusive */
  from?: number
  to?: number
}

/** Meta keys the cache uses; values are strings. */
export const MetaKey = {
  VERSION: 'version',
  GENERATION: 'generation',
  CLEAN: 'clean',
  CHECKPOINT: 'checkpoint'
} as const

export interface CacheIndex {
  open: () => Promise<void>
  close: () => Promise<void>
  /** true when the index holds no record at all (a fresh directory) */
  isEmpty: () => Promise<boolean>

  getMeta: (key: string) => Promise<string | undefined>
  /** atomic; an `undefined` value deletes the key. `sync` asks for a durable write (checkpoints). */
  putMeta: (entries: Record<string, string | undefined>, opts?: { sync?: boolean }) => Promise<void>

  getBlob: (blobId: string) => Promise<BlobRecord | undefined>
  listBlobs: () => Promise<BlobRecord[]>
  putBlobs: (records: BlobRecord[], opts?: { sync?: boolean }) => Promise<void>
  /** the blob record, its chunk records and their digest records */
  removeBlob: (blobId: string) => Promise<void>

  /** atomic: chunk records, their digest records, and the given blob records */
  markChunks: (marks: ChunkMark[], blobs?: BlobRecord[]) => Promise<void>
  /** atomic; unknown chunks are ignored */
  unmarkChunks: (unmarks: ChunkUnmark[], blobs?: BlobRecord[]) => Promise<void>
  getChunk: (blobId: string, index: number) => Promise<ChunkRecord | undefined>
  /** chunk records of a blob in ci order */
  chunks: (blobId: string, query?: ChunkQuery) => AsyncIterable<ChunkRecord>
  /** every marked chunk with this digest, across blobs */
  findByDigest: (digest: Buffer) => Promise<DigestHolder[]>

  putImage: (record: ImageRecord) => Promise<void>
  getImage: (ref: string) => Promise<ImageRecord | undefined>
  listImages: () => Promise<ImageRecord[]>
  removeImage: (ref: string) => Promise<boolean>
}

const cloneChunk = (c: ChunkRecord): ChunkRecord => ({ ...c, digest: Buffer.from(c.digest) })
const cloneImage = (r: ImageRecord): ImageRecord => ({ ...r, blobIds: [...r.blobIds] })

/** ci index as a fixed-width key part, so that key order is ci order */
export const ciKey = (index: number): string => index.toString(16).padStart(8, '0')

/** The in-memory index: for tests and for caches that need no persistence of presence. */
export class MemoryCacheIndex implements CacheIndex {
  readonly #meta = new Map<string, string>()
  readonly #blobs = new Map<string, BlobRecord>()
  /** blob id → ci index → record */
  readonly #chunks = new Map<string, Map<number, ChunkRecord>>()
  /** digest hex → set of `${blobId}!${ciKey(index)}` */
  readonly #digests = new Map<string, Set<string>>()
  readonly #images = new Map<string, ImageRecord>()

  async open (): Promise<void> {}
  async close (): Promise<void> {}

  async isEmpty (): Promise<boolean> {
    return this.#meta.size === 0 && this.#blobs.size === 0 && this.#chunks.size === 0 && this.#images.size === 0
  }

  async getMeta (key: string): Promise<string | undefined> { return this.#meta.get(key) }

  async putMeta (entries: Record<string, string | undefined>): Promise<void> {
    for (const [k, v] of Object.entries(entries)) {
      if (v === undefined) this.#meta.delete(k)
      else this.#meta.set(k, v)
    }
  }

  async getBlob (blobId: string): Promise<BlobRecord | undefined> {
    const r = this.#blobs.get(blobId)
    return r === undefined ? undefined : { ...r }
  }

  async listBlobs (): Promise<BlobRecord[]> {
    return [...this.#blobs.keys()].sort().map(k => ({ ...this.#blobs.get(k)! }))
  }

  async putBlobs (records: BlobRecord[]): Promise<void> {
    for (const r of records) this.#blobs.set(r.blobId, { ...r })
  }

  async removeBlob (blobId: string): Promise<void> {
    const chunks = this.#chunks.get(blobId)
    if (chunks !== undefined) this.#unmarkNow([...chunks.keys()].map(index => ({ blobId, index })))
    this.#chunks.delete(blobId)
    this.#blobs.delete(blobId)
  }

  async markChunks (marks: ChunkMark[], blobs: BlobRecord[] = []): Promise<void> {
    for (const { blobId, chunk } of marks) {
      let m = this.#chunks.get(blobId)
      if (m === undefined) this.#chunks.set(blobId, (m = new Map()))
      const old = m.get(chunk.index)
      if (old !== undefined) this.#digests.get(old.digest.toString('hex'))?.delete(`${blobId}!${ciKey(chunk.index)}`)
      m.set(chunk.index, cloneChunk(chunk))
      const hex = chunk.digest.toString('hex')
      let s = this.#digests.get(hex)
      if (s === undefined) this.#digests.set(hex, (s = new Set()))
      s.add(`${blobId}!${ciKey(chunk.index)}`)
    }
    await this.putBlobs(blobs)
  }

  async unmarkChunks (unmarks: ChunkUnmark[], blobs: BlobRecord[] = []): Promise<void> {
    this.#unmarkNow(unmarks)
    await this.putBlobs(blobs)
  }

  #unmarkNow (unmarks: ChunkUnmark[]): void {
    for (const { blobId, index } of unmarks) {
      const m = this.#chunks.get(blobId)
      const old = m?.get(index)
      if (old === undefined) continue
      m!.delete(index)
      const hex = old.digest.toString('hex')
      const s = this.#digests.get(hex)
      s?.delete(`${blobId}!${ciKey(index)}`)
      if (s?.size === 0) this.#digests.delete(hex)
    }
  }

  async getChunk (blobId: string, index: number): Promise<ChunkRecord | undefined> {
    const c = this.#chunks.get(blobId)?.get(index)
    return c === undefined ? undefined : cloneChunk(c)
  }

  async * chunks (blobId: string, query: ChunkQuery = {}): AsyncIterable<ChunkRecord> {
    const m = this.#chunks.get(blobId)
    if (m === undefined) return
    const from = query.from ?? 0
    const to = query.to ?? Infinity
    const after = query.afterGeneration ?? -Infinity
    for (const i of [...m.keys()].sort((a, b) => a - b)) {
      const c = m.get(i)
      if (c === undefined || i < from || i > to || c.generation <= after) continue
      yield cloneChunk(c)
    }
  }

  async findByDigest (digest: Buffer): Promise<DigestHolder[]> {
    const s = this.#digests.get(digest.toString('hex'))
    if (s === undefined) return []
    return [...s].sort().map(k => {
      const [blobId, index] = k.split('!') as [string, string]
      return { blobId, index: parseInt(index, 16) }
    })
  }

  async putImage (record: ImageRecord): Promise<void> { this.#images.set(record.ref, cloneImage(record)) }

  async getImage (ref: string): Promise<ImageRecord | undefined> {
    const r = this.#images.get(ref)
    return r === undefined ? undefined : cloneImage(r)
  }

  async listImages (): Promise<ImageRecord[]> {
    return [...this.#images.keys()].sort().map(k => cloneImage(this.#images.get(k)!))
  }

  async removeImage (ref: string): Promise<boolean> { return this.#images.delete(ref) }
}
