/**
 * Header-level rules of a RAFS v6 bootstrap (superblock, RAFS extension, device table, blob table; spec §2-§7).
 * One pass collects every problem: the reader refuses on the first `hard` one (reading would be unsafe or
 * meaningless), the checker reports all of them, hard or "nydus requires" alike.
 */
import {
  BLOB_ENTRY_SIZE, BLOB_FEATURES_REJECTED, BLOCK_BITS, BLOCK_SIZE, BlobFeatures, CHUNK_INFO_SIZE, COMPAT_RAFS_V6,
  DEVICE_SLOT_SIZE, DEVICE_TABLE_OFFSET, DEVT_SLOT_OFFSET, EROFS_MAGIC, MAX_BLOBS, MAX_CHUNKS_PER_BLOB,
  MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, RAFS_FLAGS_KNOWN, RAFS_V6_INCOMPAT, RafsFlags, SB_EXT_OFFSET, SB_EXT_SIZE,
  SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, RafsFormatError, decodeBlobEntry, decodeDeviceSlot, decodeSuperBlock,
  decodeSuperBlockExt
} from './layout.js'
import type { BlobEntry, Compressor, DeviceSlot, Digester, SuperBlock, SuperBlockExt } from './layout.js'
import { compressorOfCode, digesterOfCode } from './codec.js'

export interface HeaderProblem {
  /** true: the reader cannot proceed safely; false: a rule nydus (or the kernel) enforces that reading survives */
  hard: boolean
  message: string
}

export interface DecodedHeader {
  sb: SuperBlock
  ext: SuperBlockExt
  devices: DeviceSlot[]
  blobEntries: BlobEntry[]
  compressor?: Compressor
  digester?: Digester
  /** nids of the prefetch table, up to the first 0 */
  prefetchNids: number[]
}

const HEX64 = /^[0-9a-f]{64}$/
const COMPRESSION_FLAGS: Array<[number, Compressor]> = [
  [RafsFlags.COMPRESSION_NONE, 'none'], [RafsFlags.COMPRESSION_LZ4, 'lz4_block'],
  [RafsFlags.COMPRESSION_GZIP, 'gzip'], [RafsFlags.COMPRESSION_ZSTD, 'zstd']
]
const HASH_FLAGS: Array<[number, Digester]> = [[RafsFlags.HASH_BLAKE3, 'blake3'], [RafsFlags.HASH_SHA256, 'sha256']]

const hex = (n: number): string => '0x' + n.toString(16)
const isPow2 = (n: number): boolean => n > 0 && (n & (n - 1)) === 0

/** Decodes and checks the bootstrap headers. Never throws for bad input: whatever cannot be decoded is a problem. */
export function inspectHeader (buf: Buffer): { header?: DecodedHeader, problems: HeaderProblem[] } {
  const problems: HeaderProblem[] = []
  const hard = (message: string): void => { problems.push({ hard: true, message }) }
  const soft = (message: string): void => { problems.push({ hard: false, message }) }
  const size = buf.length
  if (size < BLOCK_SIZE) {
    hard(`bootstrap is ${size} bytes, smaller than one ${BLOCK_SIZE}-byte block`)
    return { problems }
  }
  if (size % BLOCK_SIZE !== 0) hard(`bootstrap size ${size} is not a multiple of ${BLOCK_SIZE}`)
  let sb: SuperBlock
  let ext: SuperBlockExt
  try {
    sb = decodeSuperBlock(buf.subarray(SUPERBLOCK_OFFSET, SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE))
    ext = decodeSuperBlockExt(buf.subarray(SB_EXT_OFFSET, SB_EXT_OFFSET + SB_EXT_SIZE))
  } catch (err) {
    hard(`superblock at offset ${SUPERBLOCK_OFFSET}: ${(err as Error).message}`)
    return { problems }
  }
  if (sb.magic !== EROFS_MAGIC) {
    hard(`superblock magic at offset ${SUPERBLOCK_OFFSET} is ${hex(sb.magic)}, expected ${hex(EROFS_MAGIC)}`)
    return { problems }
  }
  if (sb.blkszbits !== BLOCK_BITS) hard(`superblock blkszbits is ${sb.blkszbits}, expected ${BLOCK_BITS}`)
  if (sb.devtSlotoff !== DEVT_SLOT_OFFSET) hard(`superblock devt_slotoff is ${sb.devtSlotoff}, expected ${DEVT_SLOT_OFFSET}`)
  if ((sb.featureIncompat & ~RAFS_V6_INCOMPAT) !== 0) {
    hard(`superblock feature_incompat ${hex(sb.featureIncompat)} has unsupported bits ${hex((sb.featureIncompat & ~RAFS_V6_INCOMPAT) >>> 0)}`)
  } else if (sb.featureIncompat !== RAFS_V6_INCOMPAT) {
    soft(`superblock feature_incompat is ${hex(sb.featureIncompat)}, nydus requires exactly ${hex(RAFS_V6_INCOMPAT)}`)
  }
  if ((sb.featureCompat & COMPAT_RAFS_V6) === 0) soft(`superblock feature_compat ${hex(sb.featureCompat)} lacks RAFS_V6 (${hex(COMPAT_RAFS_V6)})`)
  if (sb.checksum !== 0) soft(`superblock checksum is ${hex(sb.checksum)}, nydus requires 0`)
  if (sb.xattrBlkaddr !== 0) soft(`superblock xattr_blkaddr is ${sb.xattrBlkaddr}, nydus requires 0 (no shared xattrs)`)
  if (sb.sbExtslots !== 0) soft(`superblock sb_extslots is ${sb.sbExtslots}, nydus requires 0`)
  if (sb.u1 !== 0) soft(`superblock u1 (compression algs) is ${sb.u1}, nydus requires 0`)
  if (sb.dirblkbits !== 0) soft(`superblock dirblkbits is ${sb.dirblkbits}, the kernel requires 0`)
  if (sb.inos === 0) soft('superblock inos is 0, nydus requires the inode count')

  // §4 flags: compression and digest algorithm
  let compressor: Compressor | undefined
  let digester: Digester | undefined
  const flags = ext.flags
  if (flags > 0xffffffff || ((flags & ~RAFS_FLAGS_KNOWN) >>> 0) !== 0) soft(`RAFS flags ${hex(flags)} have unknown bits`)
  const comps = COMPRESSION_FLAGS.filter(([bit]) => (flags & bit) !== 0)
  const hashes = HASH_FLAGS.filter(([bit]) => (flags & bit) !== 0)
  if (comps.length === 1) compressor = comps[0]![1]
  else hard(`RAFS flags ${hex(flags)} have ${comps.length} compression bits, expected exactly one`)
  if (hashes.length === 1) digester = hashes[0]![1]
  else hard(`RAFS flags ${hex(flags)} have ${hashes.length} hash bits, expected exactly one`)
  if (!isPow2(ext.chunkSize) || ext.chunkSize < MIN_CHUNK_SIZE || ext.chunkSize > MAX_CHUNK_SIZE) {
    hard(`RAFS chunk_size ${hex(ext.chunkSize)} is not a power of two in [${hex(MIN_CHUNK_SIZE)}, ${hex(MAX_CHUNK_SIZE)}]`)
  }

  // §2 table placement
  const ranges: Array<[string, number, number]> = []
  const tableInFile = (what: string, off: number, len: number): boolean => {
    if (off + len > size) { hard(`${what} at offset ${off} (+${len}) runs past the end of the ${size}-byte bootstrap`); return false }
    for (const [other, o, l] of ranges) {
      if (len > 0 && l > 0 && off < o + l && o < off + len) hard(`${what} at offset ${off} (+${len}) overlaps the ${other} at ${o} (+${l})`)
    }
    ranges.push([what, off, len])
    return true
  }
  let blobsOk = true
  if (ext.blobTableOffset % BLOCK_SIZE !== 0 || ext.blobTableOffset < BLOCK_SIZE) {
    hard(`blob table offset ${ext.blobTableOffset} is not ${BLOCK_SIZE}-aligned and >= ${BLOCK_SIZE}`); blobsOk = false
  }
  if (ext.blobTableSize % BLOB_ENTRY_SIZE !== 0) { hard(`blob table size ${ext.blobTableSize} is not a multiple of ${BLOB_ENTRY_SIZE}`); blobsOk = false }
  const nBlobs = Math.floor(ext.blobTableSize / BLOB_ENTRY_SIZE)
  if (nBlobs > MAX_BLOBS) { hard(`blob table holds ${nBlobs} entries, more than ${MAX_BLOBS}`); blobsOk = false }
  if (blobsOk) blobsOk = tableInFile('blob table', ext.blobTableOffset, ext.blobTableSize)
  const devEnd = DEVICE_TABLE_OFFSET + DEVICE_SLOT_SIZE * sb.extraDevices
  let devsOk = sb.devtSlotoff === DEVT_SLOT_OFFSET
  if (devsOk && blobsOk && ext.blobTableSize > 0 && devEnd > ext.blobTableOffset) {
    hard(`device table (${sb.extraDevices} slots from offset ${DEVICE_TABLE_OFFSET}) runs into the blob table at ${ext.blobTableOffset}`); devsOk = false
  }
  if (devsOk && devEnd > size) { hard(`device table (${sb.extraDevices} slots) runs past the end of the bootstrap`); devsOk = false }
  if (sb.extraDevices !== nBlobs) soft(`superblock extra_devices is ${sb.extraDevices} but the blob table holds ${nBlobs} blobs`)
  if (ext.chunkTableSize > 0 || ext.chunkTableOffset > 0) {
    if (ext.chunkTableOffset % BLOCK_SIZE !== 0 || ext.chunkTableOffset < BLOCK_SIZE) hard(`chunk table offset ${ext.chunkTableOffset} is not ${BLOCK_SIZE}-aligned and >= ${BLOCK_SIZE}`)
    else if (ext.chunkTableSize % CHUNK_INFO_SIZE !== 0) hard(`chunk table size ${ext.chunkTableSize} is not a multiple of ${CHUNK_INFO_SIZE}`)
    else tableInFile('chunk table', ext.chunkTableOffset, ext.chunkTableSize)
  }
  const prefetchNids: number[] = []
  if (ext.prefetchTableSize > 0) {
    if (ext.prefetchTableOffset < BLOCK_SIZE) hard(`prefetch table offset ${ext.prefetchTableOffset} is below ${BLOCK_SIZE}`)
    else if (ext.prefetchTableSize % 4 !== 0) hard(`prefetch table size ${ext.prefetchTableSize} is not a multiple of 4`)
    else if (tableInFile('prefetch table', ext.prefetchTableOffset, ext.prefetchTableSize)) {
      for (let off = ext.prefetchTableOffset; off < ext.prefetchTableOffset + ext.prefetchTableSize; off += 4) {
        const nid = buf.readUInt32LE(off)
        if (nid === 0) break
        prefetchNids.push(nid)
      }
    }
  }
  const metaStart = sb.metaBlkaddr * BLOCK_SIZE
  if (metaStart >= size) hard(`meta_blkaddr ${sb.metaBlkaddr} (offset ${metaStart}) is not inside the ${size}-byte bootstrap`)
  else if (metaStart + sb.rootNid * 32 + 32 > size) hard(`root nid ${sb.rootNid} (offset ${metaStart + sb.rootNid * 32}) is past the end of the bootstrap`)
  if (sb.rootNid === 0) soft('root nid is 0: glibc readdir hides inode 0')

  // §5 device slots
  const devices: DeviceSlot[] = []
  if (devsOk) {
    for (let i = 0; i < sb.extraDevices; i++) {
      devices.push(decodeDeviceSlot(buf.subarray(DEVICE_TABLE_OFFSET + i * DEVICE_SLOT_SIZE, DEVICE_TABLE_OFFSET + (i + 1) * DEVICE_SLOT_SIZE)))
    }
  }

  // §6 blob entries
  const blobEntries: BlobEntry[] = []
  if (blobsOk) {
    for (let i = 0; i < nBlobs; i++) {
      const off = ext.blobTableOffset + i * BLOB_ENTRY_SIZE
      const where = `blob table entry ${i} (offset ${off})`
      let e: BlobEntry
      try {
        e = decodeBlobEntry(buf.subarray(off, off + BLOB_ENTRY_SIZE))
      } catch (err) { hard(`${where}: ${(err as Error).message}`); continue }
      blobEntries.push(e)
      if (!HEX64.test(e.blobId)) hard(`${where}: blob id ${JSON.stringify(e.blobId)} is not 64 lowercase hex characters`)
      if (e.blobIndex !== i) hard(`${where}: blob_index is ${e.blobIndex}, expected ${i}`)
      if (e.chunkSize !== ext.chunkSize) hard(`${where}: chunk_size ${hex(e.chunkSize)} differs from the image chunk size ${hex(ext.chunkSize)}`)
      if (compressorOfCode(e.compressionAlgo) === undefined) hard(`${where}: unknown compression_algo ${e.compressionAlgo}`)
      if (digesterOfCode(e.digestAlgo) === undefined) hard(`${where}: unknown digest_algo ${e.digestAlgo}`)
      if (compressorOfCode(e.ciCompressor) === undefined) hard(`${where}: unknown ci_compressor ${e.ciCompressor}`)
      if (e.chunkCount > MAX_CHUNKS_PER_BLOB + 1) hard(`${where}: chunk_count ${e.chunkCount} exceeds 2^24`)
      if (e.chunkCount === 0) soft(`${where}: chunk_count is 0, nydus requires > 0`)
      if ((e.features & BLOB_FEATURES_REJECTED) !== 0) soft(`${where}: features ${hex(e.features)} include rejected bits ${hex((e.features & BLOB_FEATURES_REJECTED) >>> 0)}`)
      if ((e.features & BlobFeatures.ALIGNED) === 0 && (e.features & BlobFeatures.TARFS) === 0) soft(`${where}: features ${hex(e.features)} lack ALIGNED`)
      const v2 = (e.features & BlobFeatures.CHUNK_INFO_V2) !== 0
      if (!v2 && e.ciUncompressedSize !== 16 * e.chunkCount) soft(`${where}: ci_uncompressed_size ${e.ciUncompressedSize} != 16 * chunk_count ${e.chunkCount}`)
      if (v2 && e.ciUncompressedSize < 24 * e.chunkCount) soft(`${where}: ci_uncompressed_size ${e.ciUncompressedSize} < 24 * chunk_count ${e.chunkCount}`)
      if (e.ciCompressedSize > e.ciUncompressedSize) soft(`${where}: ci_compressed_size ${e.ciCompressedSize} > ci_uncompressed_size ${e.ciUncompressedSize}`)
      if (e.uncompressedSize % BLOCK_SIZE !== 0) soft(`${where}: uncompressed_size ${e.uncompressedSize} is not a multiple of ${BLOCK_SIZE}`)
      if (e.compressedSize > 2 ** 40) soft(`${where}: compressed_size ${e.compressedSize} exceeds 2^40`)
      if (e.uncompressedSize > 2 ** 44) soft(`${where}: uncompressed_size ${e.uncompressedSize} exceeds 2^44`)
      if (compressor !== undefined && compressorOfCode(e.compressionAlgo) !== compressor) soft(`${where}: compression ${compressorOfCode(e.compressionAlgo) ?? e.compressionAlgo} differs from the image's ${compressor}`)
      if (digester !== undefined && digesterOfCode(e.digestAlgo) !== digester) soft(`${where}: digest ${digesterOfCode(e.digestAlgo) ?? e.digestAlgo} differs from the image's ${digester}`)
    }
  }
  // device slots name the blobs, in order
  const seen = new Set<string>()
  devices.forEach((d, i) => {
    const where = `device slot ${i} (offset ${DEVICE_TABLE_OFFSET + i * DEVICE_SLOT_SIZE})`
    if (seen.has(d.tag)) soft(`${where}: duplicate tag ${d.tag}`)
    seen.add(d.tag)
    const e = blobEntries[i]
    if (e !== undefined && d.tag !== e.blobId) soft(`${where}: tag ${JSON.stringify(d.tag)} differs from blob id ${e.blobId}`)
    if (d.blocks === 0) soft(`${where}: blocks is 0, nydus requires uncompressed_size/4096`)
    else if (e !== undefined && d.blocks * BLOCK_SIZE !== e.uncompressedSize) soft(`${where}: blocks ${d.blocks} != uncompressed_size ${e.uncompressedSize} / ${BLOCK_SIZE}`)
  })
  const blobBlocks = devices.reduce((s, d) => s + d.blocks, 0)
  if (sb.extraDevices === 0 && sb.blocks !== 0 && sb.blocks !== BLOCK_SIZE) soft(`superblock blocks is ${sb.blocks}; nydus requires 0 or 4096 without extra devices`)
  else if (sb.extraDevices > 0 && sb.blocks !== blobBlocks) soft(`superblock blocks is ${sb.blocks}, expected the device total ${blobBlocks}`)
  const header: DecodedHeader = { sb, ext, devices, blobEntries, prefetchNids }
  if (compressor !== undefined) header.compressor = compressor
  if (digester !== undefined) header.digester = digester
  return { header, problems }
}

/** The decoded header, or a RafsFormatError naming the first hard problem (and how many more there are). */
export function decodeHeaderStrict (buf: Buffer, name: string): DecodedHeader {
  const { header, problems } = inspectHeader(buf)
  const hardOnes = problems.filter(p => p.hard)
  if (header === undefined || hardOnes.length > 0) {
    const more = hardOnes.length > 1 ? ` (and ${hardOnes.length - 1} more problems)` : ''
    throw new RafsFormatError(`${name}: ${hardOnes[0]?.message ?? 'unreadable header'}${more}`)
  }
  return header
}
