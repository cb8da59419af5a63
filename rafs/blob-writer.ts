/**
 * Writes one RAFS v6 data blob (§13): chunk data, then the reverse-tar tail (ci array + meta header, chunk
 * digests, ToC), named by the SHA-256 of the whole file. Optionally also writes the uncompressed view that
 * nydusd keeps as `<blob_id>.blob.data` and the kernel mounts as an extra device (§1, §14).
 *
 * @example
 * ```ts
 * const writer = new BlobWriter({ blobDir: '/out/blobs', blobCacheDir: '/out/cache' })
 * const chunks = await writer.addFile(fs.createReadStream('big.bin'))
 * const blob = await writer.finish() // undefined when no file had any bytes
 * ```
 */
import { createHash, randomBytes } from 'node:crypto'
import { mkdir, open, rename, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { BufferedFile } from './buffered-file.js'
import { ChunkFeed, type ProcessedChunk } from './chunk-feed.js'
import { compressChunk } from './codec.js'
import {
  BLOCK_SIZE, BLOB_META_HEADER_SIZE, CI_V1_SIZE, CompressorCode, DEFAULT_BLOB_FEATURES, DEFAULT_CHUNK_SIZE,
  MAX_CHUNK_SIZE, MAX_CHUNKS_PER_BLOB, MIN_CHUNK_SIZE, TAR_HEADER_SIZE, TarName, TocFlags, encodeBlobMetaHeader, encodeCiV1,
  encodeTarHeader, encodeTocEntry, roundUp, type Compressor, type Digester
} from './layout.js'
import type { ChunkInfo, RafsBlobInfo } from './model.js'
import type { ChunkSink } from './source.js'
import { RafspeerError } from '../base/index.js'

/** Largest compressed offset a v1 ci entry can hold (40 bits). */
const MAX_COMPRESSED_OFFSET = 2 ** 40
/** Largest uncompressed offset a v1 ci entry can hold (44 bits). */
const MAX_UNCOMPRESSED_OFFSET = 2 ** 44

export class BlobWriteError extends RafspeerError.coded('RAFSPEER_ERR_BLOB_WRITE') {}

export interface BlobWriterInit {
  blobDir: string
  compressor?: Compressor
  digester?: Digester
  chunkSize?: number
  blobIndex?: number
  /** when set, the uncompressed view `<blob_id>.blob.data` is written here too */
  blobCacheDir?: string
}

/** Files that `finish()` put in place; `created` lists those that did not exist before (safe to remove). */
export interface BlobOutputs {
  blobPath: string
  viewPath?: string
  created: string[]
}

const tocFlags = (c: Compressor): number =>
  c === 'zstd' ? TocFlags.COMPRESSION_ZSTD : c === 'lz4_block' ? TocFlags.COMPRESSION_LZ4_BLOCK : TocFlags.COMPRESSION_NONE

const sha256 = (...parts: Uint8Array[]): Buffer => {
  const h = createHash('sha256')
  for (const p of parts) h.update(p)
  return h.digest()
}

export class BlobWriter implements ChunkSink {
  readonly blobDir: string
  readonly blobCacheDir: string | undefined
  readonly compressor: Compressor
  readonly digester: Digester
  readonly chunkSize: number
  readonly blobIndex: number
  /** set once `finish()` has put the blob (and view) in place */
  outputs: BlobOutputs | undefined

  #state: 'open' | 'finishing' | 'finished' | 'aborted' = 'open'
  #failure: unknown
  #finishing: Promise<unknown> | undefined
  readonly #feed: ChunkFeed
  #blob: BufferedFile | undefined
  #view: BufferedFile | undefined
  #blobTmp: string | undefined
  #viewTmp: string | undefined
  readonly #chunks: ChunkInfo[] = []
  readonly #byDigest = new Map<string, ChunkInfo>()
  #compressedOffset = 0
  #uncompressedOffset = 0

  constructor (init: BlobWriterInit) {
    this.blobDir = init.blobDir
    this.blobCacheDir = init.blobCacheDir
    this.compressor = init.compressor ?? 'zstd'
    this.digester = init.digester ?? 'blake3'
    this.chunkSize = init.chunkSize ?? DEFAULT_CHUNK_SIZE
    this.blobIndex = init.blobIndex ?? 0
    if (!(this.compressor in CompressorCode) || this.compressor === 'gzip') {
      throw new BlobWriteError(`compressor ${String(this.compressor)} is not supported for writing blobs`)
    }
    if (!Number.isInteger(this.chunkSize) || this.chunkSize < MIN_CHUNK_SIZE || this.chunkSize > MAX_CHUNK_SIZE ||
        (this.chunkSize & (this.chunkSize - 1)) !== 0) {
      throw new BlobWriteError(`chunk size ${this.chunkSize} must be a power of two in [4096, 16 MiB]`)
    }
    this.#feed = new ChunkFeed(this.compressor, this.digester, this.chunkSize, async (c) => await this.#storeChunk(c),
      (cause) => new BlobWriteError('blob writer failed earlier; the blob is unusable', { cause }))
  }

  /** Number of distinct chunks stored so far. */
  get chunkCount (): number { return this.#chunks.length }

  /**
   * Chunks are stored in call order (so the blob's bytes depend on the order of calls only). A Uint8Array is the
   * caller's again once this returns: the writer has copied it.
   */
  addFile (data: AsyncIterable<Uint8Array> | Uint8Array): Promise<ChunkInfo[]> {
    try {
      this.#checkUsable()
    } catch (err) {
      return Promise.reject(err)
    }
    return this.#feed.add(data)
  }

  finish (): Promise<RafsBlobInfo | undefined> {
    try {
      this.#checkUsable()
    } catch (err) {
      return Promise.reject(err)
    }
    this.#state = 'finishing'
    const run = (async () => {
      try {
        await this.#feed.drain()
        return await this.#finishNow()
      } catch (err) {
        this.#failure ??= err
        await this.#cleanup()
        throw err
      }
    })()
    this.#finishing = run.catch(() => {})
    return run
  }

  /** Drops everything written so far. Safe to call at any time, also after a failure. */
  async abort (): Promise<void> {
    if (this.#state === 'finished') return
    this.#state = 'aborted'
    this.#feed.stop(new BlobWriteError('blob writer was aborted'))
    await this.#feed.quiet()
    await this.#finishing
    await this.#cleanup()
  }

  #checkUsable (): void {
    if (this.#state === 'aborted') throw new BlobWriteError('blob writer was aborted')
    if (this.#state !== 'open') throw new BlobWriteError('blob writer is already finished')
    const failure = this.#failure ?? this.#feed.failure
    if (failure !== undefined) {
      throw new BlobWriteError('blob writer failed earlier; the blob is unusable', { cause: failure })
    }
  }

  async #storeChunk (c: ProcessedChunk): Promise<ChunkInfo> {
    const key = Buffer.from(c.digest.buffer, c.digest.byteOffset, c.digest.byteLength).toString('latin1')
    const seen = this.#byDigest.get(key)
    if (seen !== undefined) return seen
    if (this.#chunks.length >= MAX_CHUNKS_PER_BLOB) {
      throw new BlobWriteError(`blob would exceed ${MAX_CHUNKS_PER_BLOB} chunks, the RAFS limit per blob; use a larger chunk size`)
    }
    const stored = c.packed ?? c.raw
    const alignedSize = roundUp(c.raw.length, BLOCK_SIZE)
    if (this.#compressedOffset + stored.length > MAX_COMPRESSED_OFFSET ||
        this.#uncompressedOffset + alignedSize > MAX_UNCOMPRESSED_OFFSET) {
      throw new BlobWriteError('blob would exceed the RAFS v1 ci offset limits (1 TiB stored, 16 TiB uncompressed)')
    }
    try {
      await this.#open()
      await this.#blob!.write(stored)
      if (this.#view !== undefined) {
        await this.#view.write(c.raw)
        await this.#view.zeros(alignedSize - c.raw.length)
      }
    } catch (err) {
      throw new BlobWriteError(`writing blob chunk ${this.#chunks.length} failed: ${(err as Error).message}`, { cause: err })
    }
    const info: ChunkInfo = {
      digest: Buffer.from(c.digest),
      blobIndex: this.blobIndex,
      index: this.#chunks.length,
      compressedOffset: this.#compressedOffset,
      compressedSize: stored.length,
      uncompressedOffset: this.#uncompressedOffset,
      uncompressedSize: c.raw.length,
      compressed: c.packed !== undefined,
      fileOffset: c.fileOffset
    }
    this.#compressedOffset += stored.length
    this.#uncompressedOffset += alignedSize
    this.#chunks.push(info)
    this.#byDigest.set(key, info)
    return info
  }

  async #open (): Promise<void> {
    if (this.#blob !== undefined) return
    const tmpName = (): string => `.${randomBytes(8).toString('hex')}.tmp`
    await mkdir(this.blobDir, { recursive: true })
    this.#blobTmp = join(this.blobDir, tmpName())
    this.#blob = new BufferedFile(await open(this.#blobTmp, 'wx'), createHash('sha256'))
    if (this.blobCacheDir !== undefined) {
      await mkdir(this.blobCacheDir, { recursive: true })
      this.#viewTmp = join(this.blobCacheDir, tmpName())
      this.#view = new BufferedFile(await open(this.#viewTmp, 'wx'))
    }
  }

  async #finishNow (): Promise<RafsBlobInfo | undefined> {
    const n = this.#chunks.length
    if (n === 0) {
      // a blob without chunks is invalid in RAFS (§6): the image simply has no data blob
      await this.#cleanup()
      this.#state = 'finished'
      return undefined
    }
    const blob = this.#blob!
    const hash = blob.hash!
    const dataSize = this.#compressedOffset

    await blob.write(encodeTarHeader(TarName.BLOB_DATA, dataSize))
    // nydus digests the chunk data together with its tar header (§13.5)
    const blobDataDigest = hash.copy().digest()

    const ciOffset = blob.position
    const ci = Buffer.alloc(n * CI_V1_SIZE)
    this.#chunks.forEach((c, i) => encodeCiV1(c, ci, i * CI_V1_SIZE))
    // like nydus-image: the ci array uses the blob compressor when that shrinks it (§13.2)
    const ciPacked = compressChunk(this.compressor, ci)
    const ciCompressor: Compressor = ciPacked !== undefined ? this.compressor : 'none'
    const ciStored = ciPacked ?? ci
    const features = DEFAULT_BLOB_FEATURES
    const metaHeader = encodeBlobMetaHeader({
      features,
      ciCompressor: CompressorCode[ciCompressor],
      ciEntries: n,
      ciOffset,
      ciCompressedSize: ciStored.length,
      ciUncompressedSize: ci.length
    })
    await blob.write(ciStored)
    await blob.write(metaHeader)
    await blob.write(encodeTarHeader(TarName.BLOB_META, ciStored.length + BLOB_META_HEADER_SIZE))

    const digestOffset = blob.position
    const digests = Buffer.alloc(n * 32)
    this.#chunks.forEach((c, i) => c.digest.copy(digests, i * 32))
    await blob.write(digests)
    await blob.write(encodeTarHeader(TarName.BLOB_DIGEST, digests.length))

    const uncompressedSize = this.#uncompressedOffset
    const toc = Buffer.concat([
      // nydus flags image.blob NONE whatever the chunk compressor: the section is not one stream (fixture agrees)
      encodeTocEntry({ flags: TocFlags.COMPRESSION_NONE, name: TarName.BLOB_DATA, digest: blobDataDigest, compressedOffset: 0, compressedSize: dataSize, uncompressedSize }),
      encodeTocEntry({ flags: tocFlags(ciCompressor), name: TarName.BLOB_META, digest: sha256(ci), compressedOffset: ciOffset, compressedSize: ciStored.length, uncompressedSize: ci.length }),
      encodeTocEntry({ flags: TocFlags.COMPRESSION_NONE, name: TarName.BLOB_META_HEADER, digest: sha256(metaHeader), compressedOffset: ciOffset + ciStored.length, compressedSize: BLOB_META_HEADER_SIZE, uncompressedSize: BLOB_META_HEADER_SIZE }),
      encodeTocEntry({ flags: TocFlags.COMPRESSION_NONE, name: TarName.BLOB_DIGEST, digest: sha256(digests), compressedOffset: digestOffset, compressedSize: digests.length, uncompressedSize: digests.length })
    ])
    const tocHeader = encodeTarHeader(TarName.TOC, toc.length)
    await blob.write(toc)
    await blob.write(tocHeader)
    await blob.flush()
    const compressedSize = blob.position
    const blobId = hash.digest('hex')

    await blob.close()
    this.#blob = undefined
    if (this.#view !== undefined) {
      await this.#view.flush()
      await this.#view.close()
      this.#view = undefined
    }

    const created: string[] = []
    const place = async (tmp: string, dest: string): Promise<void> => {
      const existed = await open(dest, 'r').then(async fh => { await fh.close(); return true }, () => false)
      await rename(tmp, dest)
      if (!existed) created.push(dest)
    }
    const blobPath = join(this.blobDir, blobId)
    await place(this.#blobTmp!, blobPath)
    this.#blobTmp = undefined
    let viewPath: string | undefined
    if (this.#viewTmp !== undefined) {
      viewPath = join(this.blobCacheDir!, `${blobId}.blob.data`)
      await place(this.#viewTmp, viewPath)
      this.#viewTmp = undefined
    }
    this.outputs = { blobPath, viewPath, created }
    this.#state = 'finished'

    return {
      blobId,
      compressor: this.compressor,
      digester: this.digester,
      chunkSize: this.chunkSize,
      chunkCount: n,
      compressedSize,
      uncompressedSize,
      features,
      ciCompressor,
      ciOffset,
      ciCompressedSize: ciStored.length,
      ciUncompressedSize: ci.length,
      blobTocSize: toc.length + TAR_HEADER_SIZE,
      blobTocDigest: sha256(toc, tocHeader)
    }
  }

  async #cleanup (): Promise<void> {
    for (const f of [this.#blob, this.#view]) await f?.close().catch(() => {})
    this.#blob = this.#view = undefined
    for (const p of [this.#blobTmp, this.#viewTmp]) if (p !== undefined) await rm(p, { force: true })
    this.#blobTmp = this.#viewTmp = undefined
  }
}
