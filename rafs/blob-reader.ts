/**
 * The data-blob side (§13): the reverse-tar tail (ToC, blob.meta, blob.digest, inline image.boot) and chunk reads,
 * from the blob file (compressed offsets) or from a `.blob.data` uncompressed view. Every read goes through a
 * `BlobByteSource`, so a registry Range reader can stand in for the file later.
 *
 * @example
 * const src = await fileByteSource(path)
 * try { const tail = await readBlobTail(src, image.blobs[0]) } finally { await src.close() }
 */
import { createHash } from 'node:crypto'
import { open as openFile } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import {
  BLOB_META_HEADER_SIZE, BLOB_META_MAGIC, BLOCK_SIZE, BlobFeatures, CI_V1_SIZE, CI_V2_SIZE, MAX_CHUNK_SIZE,
  RafsFormatError, TAR_HEADER_SIZE, TOC_ENTRY_SIZE, TarName, TocFlags, decodeBlobMetaHeader, decodeCiV1, decodeCiV2,
  decodeTarHeader, decodeTocEntry, roundUp
} from './layout.js'
import type { BlobMetaHeader, CiEntry, Compressor, TocEntry } from './layout.js'
import type { ChunkInfo, RafsBlobInfo } from './model.js'
import { compressorOfCode, decompressChunk, digestChunk } from './codec.js'

export interface BlobByteSource {
  size: number
  read: (offset: number, length: number) => Promise<Buffer>
}

export interface BlobTail {
  toc: TocEntry[]
  tocSize: number
  /** sha256 of ToC entries + ToC tar header */
  tocDigest: Buffer
  metaHeader: BlobMetaHeader
  /** the decompressed ci array, v1 or v2 per the header features */
  ci: CiEntry[]
  /** blob.digest: one 32 B digest per ci entry */
  digests?: Buffer[]
  /** inline image.boot, decompressed */
  bootstrap?: Buffer
}

/** Largest ci array / inline bootstrap we will decompress into memory. */
const MAX_TAIL_SECTION = 1024 * 1024 * 1024
const HASH_PIECE = 4 * 1024 * 1024

/** A BlobByteSource over a local file. */
export async function fileByteSource (path: string): Promise<BlobByteSource & { close: () => Promise<void> }> {
  const fh: FileHandle = await openFile(path, 'r')
  const { size } = await fh.stat()
  return {
    size,
    async read (offset, length) {
      if (offset < 0 || length < 0 || offset + length > size) throw new RafsFormatError(`${path}: read at ${offset} (+${length}) is past the end of the ${size}-byte file`)
      const buf = Buffer.alloc(length)
      let got = 0
      while (got < length) {
        const { bytesRead } = await fh.read(buf, got, length - got, offset + got)
        if (bytesRead === 0) throw new RafsFormatError(`${path}: short read at ${offset + got}`)
        got += bytesRead
      }
      return buf
    },
    close: async () => { await fh.close() }
  }
}

async function readAt (src: BlobByteSource, off: number, len: number, what: string): Promise<Buffer> {
  if (!Number.isSafeInteger(off) || !Number.isSafeInteger(len) || off < 0 || len < 0 || off + len > src.size) {
    throw new RafsFormatError(`${what} at offset ${off} (+${len}) runs past the end of the ${src.size}-byte blob`)
  }
  const b = await src.read(off, len)
  if (b.length !== len) throw new RafsFormatError(`${what}: short read at ${off} (${b.length} of ${len} bytes)`)
  return b
}

const sha256 = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest()

function tocCompressor (flags: number, what: string): Compressor {
  if (flags === TocFlags.COMPRESSION_NONE) return 'none'
  if (flags === TocFlags.COMPRESSION_ZSTD) return 'zstd'
  if (flags === TocFlags.COMPRESSION_LZ4_BLOCK) return 'lz4_block'
  throw new RafsFormatError(`${what}: ToC flags 0x${flags.toString(16)} name no single compression`)
}

/** Locates the ToC: at `blobTocSize` from the end when known, else from the final tar header of the last 4 KiB. */
async function readToc (src: BlobByteSource, tocSizeHint: number): Promise<{ entries: Buffer, header: Buffer }> {
  let tocSize = tocSizeHint
  let raw: Buffer
  if (tocSize > 0) {
    if (tocSize < TAR_HEADER_SIZE + TOC_ENTRY_SIZE || tocSize % TOC_ENTRY_SIZE !== 0 || tocSize > src.size) {
      throw new RafsFormatError(`blob_toc_size ${tocSize} is not 512 + n*128 within the ${src.size}-byte blob`)
    }
    raw = await readAt(src, src.size - tocSize, tocSize, 'ToC')
  } else {
    const tailLen = Math.min(BLOCK_SIZE, Math.floor(src.size / TOC_ENTRY_SIZE) * TOC_ENTRY_SIZE)
    if (tailLen < TAR_HEADER_SIZE + TOC_ENTRY_SIZE) throw new RafsFormatError(`blob of ${src.size} bytes is too small to hold a ToC`)
    const tail = await readAt(src, src.size - tailLen, tailLen, 'blob tail')
    const h = decodeTarHeader(tail.subarray(tailLen - TAR_HEADER_SIZE))
    if (h.size <= 0 || h.size % TOC_ENTRY_SIZE !== 0 || h.size > tailLen - TAR_HEADER_SIZE) {
      throw new RafsFormatError(`ToC tar header at offset ${src.size - TAR_HEADER_SIZE} gives entry size ${h.size}, not n*128 within the last ${tailLen} bytes`)
    }
    tocSize = h.size + TAR_HEADER_SIZE
    raw = tail.subarray(tailLen - tocSize)
  }
  const header = raw.subarray(tocSize - TAR_HEADER_SIZE)
  const h = decodeTarHeader(header)
  const at = `ToC tar header at offset ${src.size - TAR_HEADER_SIZE}`
  if (!h.checksumOk) throw new RafsFormatError(`${at}: bad checksum`)
  if (h.name !== TarName.TOC) throw new RafsFormatError(`${at}: name ${JSON.stringify(h.name)}, expected ${TarName.TOC}`)
  if (h.size !== tocSize - TAR_HEADER_SIZE) throw new RafsFormatError(`${at}: size ${h.size} != ${tocSize - TAR_HEADER_SIZE} ToC entry bytes`)
  return { entries: raw.subarray(0, tocSize - TAR_HEADER_SIZE), header }
}

async function checkTarHeader (src: BlobByteSource, off: number, name: string, size: number): Promise<void> {
  const h = decodeTarHeader(await readAt(src, off, TAR_HEADER_SIZE, `tar header of ${name}`))
  const at = `tar header of ${name} at offset ${off}`
  if (!h.checksumOk) throw new RafsFormatError(`${at}: bad checksum`)
  if (h.name !== name) throw new RafsFormatError(`${at}: name ${JSON.stringify(h.name)}, expected ${name}`)
  if (h.size !== size) throw new RafsFormatError(`${at}: size ${h.size}, expected ${size}`)
}

function expectDigest (what: string, expected: Buffer, data: Uint8Array): void {
  const actual = sha256(data)
  if (!actual.equals(expected)) throw new RafsFormatError(`${what}: sha256 ${actual.toString('hex')} differs from the ToC digest ${expected.toString('hex')}`)
}

/**
 * Parses and verifies the tail of a data blob. With `blob` (its blob-table entry) the ToC digest, the meta header
 * and the sizes are checked against it. `verifyImageBlob` also hashes the chunk data section (a full read).
 */
export async function readBlobTail (src: BlobByteSource, blob?: RafsBlobInfo, opts: { verifyImageBlob?: boolean } = {}): Promise<BlobTail> {
  if (blob !== undefined && blob.compressedSize !== src.size) throw new RafsFormatError(`blob ${blob.blobId}: file is ${src.size} bytes, blob table says compressed_size ${blob.compressedSize}`)
  const { entries, header } = await readToc(src, blob?.blobTocSize ?? 0)
  const tocSize = entries.length + TAR_HEADER_SIZE
  const tocDigest = createHash('sha256').update(entries).update(header).digest()
  if (blob !== undefined && blob.blobTocDigest.some(b => b !== 0) && !tocDigest.equals(blob.blobTocDigest)) {
    throw new RafsFormatError(`blob ${blob.blobId}: ToC sha256 ${tocDigest.toString('hex')} differs from blob_toc_digest ${blob.blobTocDigest.toString('hex')}`)
  }
  const tocStart = src.size - tocSize
  const toc: TocEntry[] = []
  for (let off = 0; off < entries.length; off += TOC_ENTRY_SIZE) {
    const e = decodeTocEntry(entries, off)
    const what = `ToC entry ${off / TOC_ENTRY_SIZE} (${JSON.stringify(e.name)})`
    if (toc.some(t => t.name === e.name)) throw new RafsFormatError(`${what}: duplicate name`)
    // image.blob: 2.2-era builders store the end of the data as its offset, newer ones 0; the data starts at 0
    const start = e.name === TarName.BLOB_DATA ? 0 : e.compressedOffset
    if (e.name === TarName.BLOB_DATA && e.compressedOffset !== 0 && e.compressedOffset !== e.compressedSize) {
      throw new RafsFormatError(`${what}: offset ${e.compressedOffset} is neither 0 nor the data size ${e.compressedSize}`)
    }
    if (start + e.compressedSize > tocStart) throw new RafsFormatError(`${what}: section at ${start} (+${e.compressedSize}) runs into the ToC at ${tocStart}`)
    toc.push(e)
  }
  const byName = (n: string): TocEntry | undefined => toc.find(t => t.name === n)

  // blob.meta header: where the ToC says, else where the blob table says
  const hdrEntry = byName(TarName.BLOB_META_HEADER)
  const hdrOff = hdrEntry?.compressedOffset ?? (blob !== undefined ? blob.ciOffset + blob.ciCompressedSize : undefined)
  if (hdrOff === undefined) throw new RafsFormatError('blob has no blob.meta.header ToC entry and no blob-table entry to locate it')
  if (hdrEntry !== undefined && (hdrEntry.compressedSize !== BLOB_META_HEADER_SIZE || hdrEntry.flags !== TocFlags.COMPRESSION_NONE)) {
    throw new RafsFormatError(`ToC entry blob.meta.header: size ${hdrEntry.compressedSize} / flags ${hdrEntry.flags}, expected ${BLOB_META_HEADER_SIZE} raw bytes`)
  }
  const hdrRaw = await readAt(src, hdrOff, BLOB_META_HEADER_SIZE, 'blob.meta header')
  if (hdrEntry !== undefined) expectDigest('blob.meta.header', hdrEntry.digest, hdrRaw)
  const mh = decodeBlobMetaHeader(hdrRaw)
  const at = `blob.meta header at offset ${hdrOff}`
  if (mh.magic !== BLOB_META_MAGIC || mh.magic2 !== BLOB_META_MAGIC) throw new RafsFormatError(`${at}: magic 0x${mh.magic.toString(16)}/0x${mh.magic2.toString(16)}, expected 0x${BLOB_META_MAGIC.toString(16)}`)
  if (mh.ciOffset + mh.ciCompressedSize !== hdrOff) throw new RafsFormatError(`${at}: ci array ${mh.ciOffset} (+${mh.ciCompressedSize}) does not end where the header starts`)
  if (blob !== undefined) {
    const want: Array<[string, number, number]> = [
      ['features', mh.features, blob.features], ['ci_entries', mh.ciEntries, blob.chunkCount], ['ci_offset', mh.ciOffset, blob.ciOffset],
      ['ci_compressed_size', mh.ciCompressedSize, blob.ciCompressedSize], ['ci_uncompressed_size', mh.ciUncompressedSize, blob.ciUncompressedSize],
      ['ci_compressor', mh.ciCompressor, ['none', 'lz4_block', 'gzip', 'zstd'].indexOf(blob.ciCompressor)]
    ]
    for (const [f, got, exp] of want) if (got !== exp) throw new RafsFormatError(`${at}: ${f} ${got} differs from the blob table's ${exp} (blob ${blob.blobId})`)
  }
  const v2 = (mh.features & BlobFeatures.CHUNK_INFO_V2) !== 0
  const ciSize = v2 ? CI_V2_SIZE : CI_V1_SIZE
  if (v2 ? mh.ciUncompressedSize < ciSize * mh.ciEntries : mh.ciUncompressedSize !== ciSize * mh.ciEntries) {
    throw new RafsFormatError(`${at}: ci_uncompressed_size ${mh.ciUncompressedSize} does not fit ${mh.ciEntries} ${v2 ? 'v2' : 'v1'} entries`)
  }
  if (mh.ciUncompressedSize > MAX_TAIL_SECTION) throw new RafsFormatError(`${at}: ci_uncompressed_size ${mh.ciUncompressedSize} is absurd`)
  const ciComp = compressorOfCode(mh.ciCompressor)
  if (ciComp === undefined) throw new RafsFormatError(`${at}: unknown ci_compressor ${mh.ciCompressor}`)
  const metaEntry = byName(TarName.BLOB_META)
  if (metaEntry !== undefined && (metaEntry.compressedOffset !== mh.ciOffset || metaEntry.compressedSize !== mh.ciCompressedSize || metaEntry.uncompressedSize !== mh.ciUncompressedSize)) {
    throw new RafsFormatError(`ToC entry blob.meta (${metaEntry.compressedOffset} +${metaEntry.compressedSize}/${metaEntry.uncompressedSize}) disagrees with the ${at}`)
  }
  const ciStored = await readAt(src, mh.ciOffset, mh.ciCompressedSize, 'ci array')
  let ciRaw: Buffer
  if (ciComp === 'none') {
    if (mh.ciCompressedSize !== mh.ciUncompressedSize) throw new RafsFormatError(`${at}: raw ci array has compressed size ${mh.ciCompressedSize} != ${mh.ciUncompressedSize}`)
    ciRaw = ciStored
  } else {
    ciRaw = decompressChunk(ciComp, ciStored, mh.ciUncompressedSize, 'ci array')
  }
  if (metaEntry !== undefined) expectDigest('blob.meta', metaEntry.digest, ciRaw)
  if (metaEntry !== undefined && hdrEntry !== undefined) await checkTarHeader(src, hdrOff + BLOB_META_HEADER_SIZE, TarName.BLOB_META, mh.ciCompressedSize + BLOB_META_HEADER_SIZE)
  const ci = decodeCi(ciRaw, mh, blob, byName(TarName.BLOB_DATA)?.uncompressedSize)

  const tail: BlobTail = { toc, tocSize, tocDigest, metaHeader: mh, ci }
  const digEntry = byName(TarName.BLOB_DIGEST)
  if (digEntry !== undefined) {
    if (digEntry.flags !== TocFlags.COMPRESSION_NONE || digEntry.compressedSize !== 32 * mh.ciEntries) throw new RafsFormatError(`ToC entry blob.digest: ${digEntry.compressedSize} bytes (flags ${digEntry.flags}), expected ${32 * mh.ciEntries} raw bytes`)
    const raw = await readAt(src, digEntry.compressedOffset, digEntry.compressedSize, 'blob.digest')
    expectDigest('blob.digest', digEntry.digest, raw)
    await checkTarHeader(src, digEntry.compressedOffset + digEntry.compressedSize, TarName.BLOB_DIGEST, digEntry.compressedSize)
    tail.digests = Array.from({ length: mh.ciEntries }, (_, i) => Buffer.from(raw.subarray(32 * i, 32 * i + 32)))
  }
  const bootEntry = byName(TarName.BOOTSTRAP)
  if (bootEntry !== undefined) {
    if (bootEntry.uncompressedSize > MAX_TAIL_SECTION) throw new RafsFormatError(`ToC entry image.boot: uncompressed size ${bootEntry.uncompressedSize} is absurd`)
    const comp = tocCompressor(bootEntry.flags, 'ToC entry image.boot')
    const stored = await readAt(src, bootEntry.compressedOffset, bootEntry.compressedSize, 'image.boot')
    const boot = comp === 'none' ? stored : decompressChunk(comp, stored, bootEntry.uncompressedSize, 'image.boot')
    if (boot.length !== bootEntry.uncompressedSize) throw new RafsFormatError(`image.boot: ${boot.length} bytes, ToC says ${bootEntry.uncompressedSize}`)
    expectDigest('image.boot', bootEntry.digest, boot)
    await checkTarHeader(src, bootEntry.compressedOffset + bootEntry.compressedSize, TarName.BOOTSTRAP, bootEntry.compressedSize)
    tail.bootstrap = boot
  }
  const dataEntry = byName(TarName.BLOB_DATA)
  if (dataEntry !== undefined) {
    await checkTarHeader(src, dataEntry.compressedSize, TarName.BLOB_DATA, dataEntry.compressedSize)
    if (opts.verifyImageBlob === true) {
      // the quirk nydus-image has: the digest covers the chunk data and its tar header
      const h = createHash('sha256')
      const end = dataEntry.compressedSize + TAR_HEADER_SIZE
      for (let off = 0; off < end; off += HASH_PIECE) h.update(await readAt(src, off, Math.min(HASH_PIECE, end - off), 'image.blob'))
      const actual = h.digest()
      if (!actual.equals(dataEntry.digest)) throw new RafsFormatError(`image.blob: sha256 ${actual.toString('hex')} differs from the ToC digest ${dataEntry.digest.toString('hex')}`)
    }
  }
  return tail
}

/** Decodes the ci array and applies nydusd's load-time rules (§13.3). */
function decodeCi (raw: Buffer, mh: BlobMetaHeader, blob: RafsBlobInfo | undefined, tocUncompressed: number | undefined): CiEntry[] {
  const v2 = (mh.features & BlobFeatures.CHUNK_INFO_V2) !== 0
  const loose = (mh.features & (BlobFeatures.ZRAN | BlobFeatures.BATCH)) !== 0
  const withTar = (mh.features & BlobFeatures.HAS_TAR_HEADER) !== 0 && (mh.features & BlobFeatures.CAP_TAR_TOC) !== 0
  const dataEnd = withTar ? mh.ciOffset - TAR_HEADER_SIZE : mh.ciOffset
  const uSize = blob?.uncompressedSize ?? tocUncompressed
  const out: CiEntry[] = []
  for (let i = 0; i < mh.ciEntries; i++) {
    const e = v2 ? decodeCiV2(raw, i * CI_V2_SIZE) : decodeCiV1(raw, i * CI_V1_SIZE)
    const what = `ci entry ${i}`
    if (e.uncompressedSize <= 0 || e.uncompressedSize > (blob?.chunkSize ?? MAX_CHUNK_SIZE)) throw new RafsFormatError(`${what}: uncompressed size ${e.uncompressedSize} out of range`)
    if (e.compressedSize <= 0) throw new RafsFormatError(`${what}: compressed size is 0`)
    if (e.uncompressedOffset % BLOCK_SIZE !== 0) throw new RafsFormatError(`${what}: uncompressed offset ${e.uncompressedOffset} is not ${BLOCK_SIZE}-aligned`)
    if (e.compressedOffset + e.compressedSize > dataEnd) throw new RafsFormatError(`${what}: compressed ${e.compressedOffset} (+${e.compressedSize}) is past the chunk data end ${dataEnd}`)
    if (uSize !== undefined && e.uncompressedOffset + e.uncompressedSize > roundUp(uSize, BLOCK_SIZE)) throw new RafsFormatError(`${what}: uncompressed ${e.uncompressedOffset} (+${e.uncompressedSize}) is past the blob's uncompressed size ${uSize}`)
    const prev = out[i - 1]
    if (prev !== undefined) {
      const ok = loose
        ? e.compressedOffset >= prev.compressedOffset && e.uncompressedOffset >= prev.uncompressedOffset
        : e.compressedOffset >= prev.compressedOffset + prev.compressedSize && e.uncompressedOffset >= prev.uncompressedOffset + prev.uncompressedSize
      if (!ok) throw new RafsFormatError(`${what}: not sorted after entry ${i - 1} (offsets ${e.compressedOffset}/${e.uncompressedOffset} after ${prev.compressedOffset}/${prev.uncompressedOffset})`)
    }
    out.push({ uncompressedOffset: e.uncompressedOffset, uncompressedSize: e.uncompressedSize, compressedOffset: e.compressedOffset, compressedSize: e.compressedSize, compressed: e.compressed })
  }
  return out
}

/** Reads chunk plaintext from a blob file (decompressing) or from its uncompressed `.blob.data` view. */
export class BlobDataReader {
  private constructor (readonly blob: RafsBlobInfo, readonly source: 'blob' | 'view', private readonly src: BlobByteSource & { close: () => Promise<void> }) {}

  static async open (opts: { blobPath?: string, viewPath?: string, blob: RafsBlobInfo }): Promise<BlobDataReader> {
    if (opts.blobPath !== undefined) return new BlobDataReader(opts.blob, 'blob', await fileByteSource(opts.blobPath))
    if (opts.viewPath !== undefined) return new BlobDataReader(opts.blob, 'view', await fileByteSource(opts.viewPath))
    throw new TypeError('BlobDataReader.open needs blobPath or viewPath')
  }

  async readChunk (chunk: ChunkInfo, opts: { verify?: boolean } = {}): Promise<Buffer> {
    const what = `chunk ${chunk.index} of blob ${this.blob.blobId}`
    if (chunk.uncompressedSize <= 0 || chunk.uncompressedSize > MAX_CHUNK_SIZE) throw new RafsFormatError(`${what}: uncompressed size ${chunk.uncompressedSize} out of range`)
    let data: Buffer
    if (this.source === 'blob') {
      const stored = await readAt(this.src, chunk.compressedOffset, chunk.compressedSize, what)
      if (chunk.compressed) data = decompressChunk(this.blob.compressor, stored, chunk.uncompressedSize, what)
      else if (stored.length !== chunk.uncompressedSize) throw new RafsFormatError(`${what}: stored raw with ${stored.length} bytes, expected ${chunk.uncompressedSize}`)
      else data = stored
    } else {
      data = await readAt(this.src, chunk.uncompressedOffset, chunk.uncompressedSize, `${what} (view)`)
    }
    if (opts.verify !== false) {
      const actual = digestChunk(this.blob.digester, data)
      if (!actual.equals(chunk.digest)) {
        throw new RafsFormatError(`chunk digest mismatch: blob ${this.blob.blobId} ci index ${chunk.index}: expected ${chunk.digest.toString('hex')}, actual ${actual.toString('hex')} (${this.source})`)
      }
    }
    return data
  }

  async close (): Promise<void> { await this.src.close() }
}
