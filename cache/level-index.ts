/**
 * The LevelDB implementation of `CacheIndex` (`level`, classic-level underneath). Namespaces are sublevels:
 * `meta!`, `blob!`, `chunk!`, `dig!`, `image!`. Multi-record changes are single batches, so a chunk record and
 * its digest record appear and disappear together.
 */
import { Level } from 'level'
import { CacheError } from './errors.js'
import {
  ciKey, type BlobRecord, type CacheIndex, type ChunkMark, type ChunkQuery, type ChunkRecord, type ChunkUnmark,
  type DigestHolder, type ImageRecord
} from './cache-index.js'

/** Value of a `chunk!` record: the byte layout, declared once for the encoder and the decoder. */
export const ChunkRecordLayout = {
  DIGEST: 0,
  DIGEST_SIZE: 32,
  /** u64 BE as two u32 (offsets reach 2^44) */
  UOFF_HI: 32,
  UOFF_LO: 36,
  USIZE: 40,
  GENERATION: 44,
  SIZE: 48
} as const

const L = ChunkRecordLayout

export function encodeChunkRecord (c: ChunkRecord): Buffer {
  if (c.digest.length !== L.DIGEST_SIZE) throw new TypeError(`chunk digest must be ${L.DIGEST_SIZE} bytes, got ${c.digest.length}`)
  const b = Buffer.alloc(L.SIZE)
  c.digest.copy(b, L.DIGEST)
  b.writeUInt32BE(Math.floor(c.uncompressedOffset / 2 ** 32), L.UOFF_HI)
  b.writeUInt32BE(c.uncompressedOffset >>> 0, L.UOFF_LO)
  b.writeUInt32BE(c.uncompressedSize, L.USIZE)
  b.writeUInt32BE(c.generation, L.GENERATION)
  return b
}

export function decodeChunkRecord (index: number, b: Uint8Array): ChunkRecord {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength)
  if (buf.length !== L.SIZE) throw new CacheError('RAFSPEER_ERR_CACHE_IO', `chunk record ${index}: ${buf.length} bytes, expected ${L.SIZE}`)
  return {
    index,
    digest: Buffer.from(buf.subarray(L.DIGEST, L.DIGEST + L.DIGEST_SIZE)),
    uncompressedOffset: buf.readUInt32BE(L.UOFF_HI) * 2 ** 32 + buf.readUInt32BE(L.UOFF_LO),
    uncompressedSize: buf.readUInt32BE(L.USIZE),
    generation: buf.readUInt32BE(L.GENERATION)
  }
}

const chunkKey = (blobId: string, index: number): string => `${blobId}!${ciKey(index)}`
const digestKey = (digest: Buffer, blobId: string, index: number): string => `${digest.toString('hex')}!${blobId}!${ciKey(index)}`
/** '"' sorts right after '!', so `[p + '!', p + '"')` is exactly the keys under prefix p */
const upper = (prefix: string): string => prefix + '"'
const REMOVE_BATCH = 10_000

export class LevelCacheIndex implements CacheIndex {
  readonly location: string
  readonly #db: Level<string, string>
  readonly #meta
  readonly #blob
  readonly #chunk
  readonly #dig
  readonly #image

  constructor (location: string) {
    this.location = location
    this.#db = new Level<string, string>(location, { valueEncoding: 'utf8' })
    this.#meta = this.#db.sublevel<string, string>('meta', { valueEncoding: 'utf8' })
    this.#blob = this.#db.sublevel<string, BlobRecord>('blob', { valueEncoding: 'json' })
    this.#chunk = this.#db.sublevel<string, Uint8Array>('chunk', { valueEncoding: 'view' })
    this.#dig = this.#db.sublevel<string, string>('dig', { valueEncoding: 'utf8' })
    this.#image = this.#db.sublevel<string, ImageRecord>('image', { valueEncoding: 'json' })
  }

  async open (): Promise<void> {
    try {
      await this.#db.open()
    } catch (err) {
      const locked = (err as { cause?: { code?: string } }).cause?.code === 'LEVEL_LOCKED'
      throw new CacheError(locked ? 'RAFSPEER_ERR_CACHE_LOCKED' : 'RAFSPEER_ERR_CACHE_IO',
        locked ? `cache index ${this.location} is in use by another process` : `cannot open cache index ${this.location}: ${(err as Error).message}`,
        { cause: err })
    }
  }

  async close (): Promise<void> { await this.#db.close() }

  async isEmpty (): Promise<boolean> {
    for await (const _ of this.#db.keys({ limit: 1 })) return false
    return true
  }

  async getMeta (key: string): Promise<string | undefined> { return await this.#meta.get(key) }

  async putMeta (entries: Record<string, string | undefined>, opts: { sync?: boolean } = {}): Promise<void> {
    const ops = Object.entries(entries).map(([key, value]) =>
      value === undefined ? { type: 'del' as const, key } : { type: 'put' as const, key, value })
    await this.#meta.batch(ops, { sync: opts.sync === true } as object)
  }

  async getBlob (blobId: string): Promise<BlobRecord | undefined> { return await this.#blob.get(blobId) }

  async listBlobs (): Promise<BlobRecord[]> { return await this.#blob.values().all() }

  async putBlobs (records: BlobRecord[], opts: { sync?: boolean } = {}): Promise<void> {
    if (records.length === 0) return
    await this.#blob.batch(records.map(r => ({ type: 'put' as const, key: r.blobId, value: r })), { sync: opts.sync === true } as object)
  }

  async removeBlob (blobId: string): Promise<void> {
    let ops: unknown[] = []
    for await (const [key, value] of this.#chunk.iterator({ gt: `${blobId}!`, lt: upper(blobId) })) {
      const index = parseInt(key.slice(blobId.length + 1), 16)
      const rec = decodeChunkRecord(index, value)
      ops.push({ type: 'del', key, sublevel: this.#chunk }, { type: 'del', key: digestKey(rec.digest, blobId, index), sublevel: this.#dig })
      if (ops.length >= REMOVE_BATCH) {
        await this.#db.batch(ops as never)
        ops = []
      }
    }
    await this.#db.batch([...ops, { type: 'del', key: blobId, sublevel: this.#blob }] as never)
  }

  async markChunks (marks: ChunkMark[], blobs: BlobRecord[] = []): Promise<void> {
    const ops: unknown[] = []
    const old = await this.#chunk.getMany(marks.map(m => chunkKey(m.blobId, m.chunk.index)))
    marks.forEach(({ blobId, chunk }, i) => {
      const prev = old[i]
      if (prev !== undefined) ops.push({ type: 'del', key: digestKey(decodeChunkRecord(chunk.index, prev).digest, blobId, chunk.index), sublevel: this.#dig })
      ops.push({ type: 'put', key: chunkKey(blobId, chunk.index), value: encodeChunkRecord(chunk), sublevel: this.#chunk })
      ops.push({ type: 'put', key: digestKey(chunk.digest, blobId, chunk.index), value: '', sublevel: this.#dig })
    })
    for (const r of blobs) ops.push({ type: 'put', key: r.blobId, value: r, sublevel: this.#blob })
    await this.#db.batch(ops as never)
  }

  async unmarkChunks (unmarks: ChunkUnmark[], blobs: BlobRecord[] = []): Promise<void> {
    const ops: unknown[] = []
    const keys = unmarks.map(u => chunkKey(u.blobId, u.index))
    const old = await this.#chunk.getMany(keys)
    unmarks.forEach(({ blobId, index }, i) => {
      const prev = old[i]
      if (prev === undefined) return
      ops.push({ type: 'del', key: keys[i], sublevel: this.#chunk })
      ops.push({ type: 'del', key: digestKey(decodeChunkRecord(index, prev).digest, blobId, index), sublevel: this.#dig })
    })
    for (const r of blobs) ops.push({ type: 'put', key: r.blobId, value: r, sublevel: this.#blob })
    if (ops.length > 0) await this.#db.batch(ops as never)
  }

  async getChunk (blobId: string, index: number): Promise<ChunkRecord | undefined> {
    const v = await this.#chunk.get(chunkKey(blobId, index))
    return v === undefined ? undefined : decodeChunkRecord(index, v)
  }

  async * chunks (blobId: string, query: ChunkQuery = {}): AsyncIterable<ChunkRecord> {
    const range = {
      gte: query.from !== undefined ? chunkKey(blobId, query.from) : `${blobId}!`,
      ...(query.to !== undefined ? { lte: chunkKey(blobId, query.to) } : { lt: upper(blobId) })
    }
    const after = query.afterGeneration ?? -1
    for await (const [key, value] of this.#chunk.iterator(range)) {
      const rec = decodeChunkRecord(parseInt(key.slice(blobId.length + 1), 16), value)
      if (rec.generation > after) yield rec
    }
  }

  async findByDigest (digest: Buffer): Promise<DigestHolder[]> {
    const prefix = digest.toString('hex')
    const out: DigestHolder[] = []
    for await (const key of this.#dig.keys({ gt: `${prefix}!`, lt: upper(prefix) })) {
      const rest = key.slice(prefix.length + 1)
      const cut = rest.lastIndexOf('!')
      out.push({ blobId: rest.slice(0, cut), index: parseInt(rest.slice(cut + 1), 16) })
    }
    return out
  }

  async putImage (record: ImageRecord): Promise<void> { await this.#image.put(record.ref, record) }
  async getImage (ref: string): Promise<ImageRecord | undefined> { return await this.#image.get(ref) }
  async listImages (): Promise<ImageRecord[]> { return await this.#image.values().all() }

  async removeImage (ref: string): Promise<boolean> {
    if (await this.#image.get(ref) === undefined) return false
    await this.#image.del(ref)
    return true
  }
}
