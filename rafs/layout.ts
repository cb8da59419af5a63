/**
 * RAFS v6 byte layouts, declared once. The bootstrap writer, the reader, the checker and the blob tools all
 * encode and decode through this file, so an offset can only be wrong in one place.
 *
 * Reference: docs/FORMAT.md (section numbers in the comments below). All integers little-endian.
 */

import { RafspeerError } from '../base/index.js'

export const BLOCK_SIZE = 4096
export const BLOCK_BITS = 12

// §2 bootstrap layout
export const SUPERBLOCK_OFFSET = 1024
export const SUPERBLOCK_SIZE = 128
export const SB_EXT_OFFSET = 1152
export const SB_EXT_SIZE = 256
export const DEVT_SLOT_OFFSET = 11 // device table at 11 * 128 = 1408
export const DEVICE_TABLE_OFFSET = DEVT_SLOT_OFFSET * 128
export const DEVICE_SLOT_SIZE = 128
export const BLOB_ENTRY_SIZE = 256
export const CHUNK_INFO_SIZE = 80
export const INODE_SLOT_SIZE = 32
export const COMPACT_INODE_SIZE = 32
export const EXTENDED_INODE_SIZE = 64
export const DIRENT_SIZE = 12
export const CHUNK_INDEX_SIZE = 8
export const XATTR_IBODY_HEADER_SIZE = 12
export const XATTR_ENTRY_HEADER_SIZE = 4
/** nid of the root inode in Nydus-built images: root sits one block past meta_blkaddr. */
export const NYDUS_ROOT_NID = 128
/** nydus-image aligns each blob's flattened view at 512 KiB (`mapped_blkaddr`). */
export const MAPPED_BLKADDR_ALIGN = 512 * 1024
export const MAX_BLOBS = 254
export const MAX_CHUNKS_PER_BLOB = 0xffffff
export const MIN_CHUNK_SIZE = 0x1000
export const MAX_CHUNK_SIZE = 0x1000000
export const DEFAULT_CHUNK_SIZE = 0x100000
export const MAX_SYMLINK_SIZE = 4095
export const MAX_NAME_LEN = 255
export const NULL_ADDR = 0xffffffff

// §3 superblock
export const EROFS_MAGIC = 0xe0f5e1e2
export const COMPAT_RAFS_V6 = 0x40000000
export const COMPAT_SB_CHKSUM = 0x1
export const INCOMPAT_CHUNKED_FILE = 0x4
export const INCOMPAT_DEVICE_TABLE = 0x8
export const RAFS_V6_INCOMPAT = INCOMPAT_CHUNKED_FILE | INCOMPAT_DEVICE_TABLE

// §4 RAFS superblock extension flags
export const RafsFlags = {
  COMPRESSION_NONE: 0x1,
  COMPRESSION_LZ4: 0x2,
  HASH_BLAKE3: 0x4,
  HASH_SHA256: 0x8,
  EXPLICIT_UID_GID: 0x10,
  HAS_XATTR: 0x20,
  COMPRESSION_GZIP: 0x40,
  COMPRESSION_ZSTD: 0x80,
  INLINED_CHUNK_DIGEST: 0x100,
  TARTFS_MODE: 0x200,
  ENCRYPTION_NONE: 0x0100_0000,
  ENCRYPTION_AES_128_XTS: 0x0200_0000
} as const
/** Every bit Nydus's `RafsSuperFlags::from_bits` accepts (incl. reserved-compat 0x04000000..0x80000000). */
export const RAFS_FLAGS_KNOWN = 0x3ff + 0x0300_0000 + 0xfc00_0000 // sum, not `|`: JS bit ops would make it negative

// §6 blob features
export const BlobFeatures = {
  ALIGNED: 0x1,
  INLINED_FS_META: 0x2,
  CHUNK_INFO_V2: 0x4,
  ZRAN: 0x8,
  SEPARATE: 0x10,
  INLINED_CHUNK_DIGEST: 0x20,
  TARFS: 0x40,
  BATCH: 0x80,
  ENCRYPTED: 0x100,
  IS_CHUNKDICT_GENERATED: 0x200,
  IS_SEPARATED_WITH_PREFETCH_FILES: 0x400,
  EXTERNAL: 0x800,
  HAS_TAR_HEADER: 0x1000_0000,
  HAS_TOC: 0x2000_0000,
  CAP_TAR_TOC: 0x4000_0000
} as const
export const BLOB_FEATURES_REJECTED = 0x0000_f000 | 0x8000_0000
/** What our builder writes for a plain v6 blob with ToC (identical to nydus-image). */
export const DEFAULT_BLOB_FEATURES = 0x7000_0021

// §8 inodes
export const InodeLayout = {
  FLAT_PLAIN: 0,
  COMPRESSED_FULL: 1,
  FLAT_INLINE: 2,
  COMPRESSED_COMPACT: 3,
  CHUNK_BASED: 4
} as const
export const CHUNK_FORMAT_INDEXES = 0x20
export const CHUNK_FORMAT_BLKBITS_MASK = 0x1f

// §11 dirent file types
export const FileTypeCode = { unknown: 0, file: 1, dir: 2, chr: 3, blk: 4, fifo: 5, sock: 6, symlink: 7 } as const

// §12.3 chunk-info flags
export const ChunkFlags = { COMPRESSED: 0x1, ENCRYPTED: 0x4, BATCH: 0x8, HAS_CRC32: 0x10 } as const

// §13 blob tail
export const BLOB_META_MAGIC = 0xb10bb10b
export const BLOB_META_HEADER_SIZE = 4096
export const CI_V1_SIZE = 16
export const CI_V2_SIZE = 24
export const TAR_HEADER_SIZE = 512
export const TOC_ENTRY_SIZE = 128
export const TocFlags = { COMPRESSION_NONE: 0x1, COMPRESSION_ZSTD: 0x2, COMPRESSION_LZ4_BLOCK: 0x4 } as const
export const TarName = {
  BLOB_DATA: 'image.blob',
  BLOB_META: 'blob.meta',
  BLOB_META_HEADER: 'blob.meta.header',
  BLOB_DIGEST: 'blob.digest',
  BOOTSTRAP: 'image.boot',
  TOC: 'rafs.blob.toc'
} as const

/** Compression algorithm codes of the blob table (§6). */
export const CompressorCode = { none: 0, lz4_block: 1, gzip: 2, zstd: 3 } as const
export type Compressor = keyof typeof CompressorCode
/** Digest algorithm codes of the blob table (§6). */
export const DigesterCode = { blake3: 0, sha256: 1 } as const
export type Digester = keyof typeof DigesterCode

export function roundUp (x: number, a: number): number {
  return Math.ceil(x / a) * a
}

/** Thrown for any bootstrap or blob that breaks a layout rule. `code` is stable; `message` names the fault. */
export class RafsFormatError extends RafspeerError.coded('RAFSPEER_ERR_BAD_FORMAT') {}

/** Read a u64 as a JS number, refusing values past 2^53 (no honest image has them). */
export function readU64 (buf: Buffer, off: number, what: string): number {
  // two 32-bit halves, no BigInt: a mount decodes three of these per chunk-table entry while a container waits
  const lo = buf.readUInt32LE(off)
  const hi = buf.readUInt32LE(off + 4)
  if (hi > 0x1f_ffff) throw new RafsFormatError(`${what} is absurdly large (${buf.readBigUInt64LE(off)})`)
  return hi * 0x1_0000_0000 + lo
}

function writeU64 (buf: Buffer, v: number, off: number): void {
  buf.writeBigUInt64LE(BigInt(v), off)
}

/** Reads `len` bytes at `off` of `buf`, or fails naming the structure that runs past the end. */
export function slice (buf: Buffer, off: number, len: number, what: string): Buffer {
  if (off < 0 || len < 0 || off + len > buf.length) {
    throw new RafsFormatError(`${what} at offset ${off} (+${len}) runs past the end of the ${buf.length}-byte file`)
  }
  return buf.subarray(off, off + len)
}

// ---------------------------------------------------------------------------------------------------------------
// §3 EROFS superblock

export interface SuperBlock {
  magic: number
  checksum: number
  featureCompat: number
  blkszbits: number
  sbExtslots: number
  rootNid: number
  inos: number
  buildTime: number
  buildTimeNsec: number
  blocks: number
  metaBlkaddr: number
  xattrBlkaddr: number
  featureIncompat: number
  u1: number
  extraDevices: number
  devtSlotoff: number
  dirblkbits: number
}

export function encodeSuperBlock (sb: Omit<SuperBlock, 'magic' | 'checksum' | 'u1' | 'dirblkbits' | 'sbExtslots' | 'xattrBlkaddr'>): Buffer {
  const b = Buffer.alloc(SUPERBLOCK_SIZE)
  b.writeUInt32LE(EROFS_MAGIC, 0x00)
  b.writeUInt32LE(0, 0x04)
  b.writeUInt32LE(sb.featureCompat, 0x08)
  b.writeUInt8(sb.blkszbits, 0x0c)
  b.writeUInt8(0, 0x0d)
  b.writeUInt16LE(sb.rootNid, 0x0e)
  writeU64(b, sb.inos, 0x10)
  writeU64(b, sb.buildTime, 0x18)
  b.writeUInt32LE(sb.buildTimeNsec, 0x20)
  b.writeUInt32LE(sb.blocks, 0x24)
  b.writeUInt32LE(sb.metaBlkaddr, 0x28)
  b.writeUInt32LE(0, 0x2c)
  b.writeUInt32LE(sb.featureIncompat, 0x50)
  b.writeUInt16LE(0, 0x54)
  b.writeUInt16LE(sb.extraDevices, 0x56)
  b.writeUInt16LE(sb.devtSlotoff, 0x58)
  return b
}

export function decodeSuperBlock (b: Buffer): SuperBlock {
  // the magic first: garbage should be reported as "not EROFS", not by whichever field happens to look absurd
  const magic = b.readUInt32LE(0x00)
  if (magic !== EROFS_MAGIC) throw new RafsFormatError(`bad superblock magic 0x${magic.toString(16)} (expected 0x${EROFS_MAGIC.toString(16)}): not an EROFS/RAFS v6 bootstrap`)
  return {
    magic: b.readUInt32LE(0x00),
    checksum: b.readUInt32LE(0x04),
    featureCompat: b.readUInt32LE(0x08),
    blkszbits: b.readUInt8(0x0c),
    sbExtslots: b.readUInt8(0x0d),
    rootNid: b.readUInt16LE(0x0e),
    inos: readU64(b, 0x10, 'superblock inos'),
    buildTime: readU64(b, 0x18, 'superblock build_time'),
    buildTimeNsec: b.readUInt32LE(0x20),
    blocks: b.readUInt32LE(0x24),
    metaBlkaddr: b.readUInt32LE(0x28),
    xattrBlkaddr: b.readUInt32LE(0x2c),
    featureIncompat: b.readUInt32LE(0x50),
    u1: b.readUInt16LE(0x54),
    extraDevices: b.readUInt16LE(0x56),
    devtSlotoff: b.readUInt16LE(0x58),
    dirblkbits: b.readUInt8(0x5a)
  }
}

// ---------------------------------------------------------------------------------------------------------------
// §4 RafsV6SuperBlockExt

export interface SuperBlockExt {
  flags: number
  blobTableOffset: number
  blobTableSize: number
  chunkSize: number
  chunkTableOffset: number
  chunkTableSize: number
  prefetchTableOffset: number
  prefetchTableSize: number
}

export function encodeSuperBlockExt (e: SuperBlockExt): Buffer {
  const b = Buffer.alloc(SB_EXT_SIZE)
  writeU64(b, e.flags, 0x00)
  writeU64(b, e.blobTableOffset, 0x08)
  b.writeUInt32LE(e.blobTableSize, 0x10)
  b.writeUInt32LE(e.chunkSize, 0x14)
  writeU64(b, e.chunkTableOffset, 0x18)
  writeU64(b, e.chunkTableSize, 0x20)
  writeU64(b, e.prefetchTableOffset, 0x28)
  b.writeUInt32LE(e.prefetchTableSize, 0x30)
  return b
}

export function decodeSuperBlockExt (b: Buffer): SuperBlockExt {
  return {
    flags: readU64(b, 0x00, 'RAFS flags'),
    blobTableOffset: readU64(b, 0x08, 'blob table offset'),
    blobTableSize: b.readUInt32LE(0x10),
    chunkSize: b.readUInt32LE(0x14),
    chunkTableOffset: readU64(b, 0x18, 'chunk table offset'),
    chunkTableSize: readU64(b, 0x20, 'chunk table size'),
    prefetchTableOffset: readU64(b, 0x28, 'prefetch table offset'),
    prefetchTableSize: b.readUInt32LE(0x30)
  }
}

// ---------------------------------------------------------------------------------------------------------------
// §5 device slot

export interface DeviceSlot {
  tag: string
  blocks: number
  mappedBlkaddr: number
}

export function encodeDeviceSlot (d: DeviceSlot): Buffer {
  const b = Buffer.alloc(DEVICE_SLOT_SIZE)
  b.write(d.tag, 0, 64, 'latin1')
  b.writeUInt32LE(d.blocks, 64)
  b.writeUInt32LE(d.mappedBlkaddr, 68)
  return b
}

export function decodeDeviceSlot (b: Buffer): DeviceSlot {
  return { tag: fixedString(b.subarray(0, 64)), blocks: b.readUInt32LE(64), mappedBlkaddr: b.readUInt32LE(68) }
}

/** A NUL-padded fixed-width string field. */
export function fixedString (b: Buffer): string {
  const end = b.indexOf(0)
  return b.subarray(0, end < 0 ? b.length : end).toString('latin1')
}

// ---------------------------------------------------------------------------------------------------------------
// §6 blob table entry (RafsV6Blob)

export interface BlobEntry {
  blobId: string
  blobIndex: number
  chunkSize: number
  chunkCount: number
  compressionAlgo: number
  digestAlgo: number
  features: number
  compressedSize: number
  uncompressedSize: number
  blobTocSize: number
  ciCompressor: number
  ciOffset: number
  ciCompressedSize: number
  ciUncompressedSize: number
  blobTocDigest: Buffer
  blobMetaDigest: Buffer
  blobMetaSize: number
  cipherIv: number
  cipherAlgo: number
}

export function encodeBlobEntry (e: BlobEntry): Buffer {
  const b = Buffer.alloc(BLOB_ENTRY_SIZE)
  b.write(e.blobId, 0, 64, 'latin1')
  b.writeUInt32LE(e.blobIndex, 64)
  b.writeUInt32LE(e.chunkSize, 68)
  b.writeUInt32LE(e.chunkCount, 72)
  b.writeUInt32LE(e.compressionAlgo, 76)
  b.writeUInt32LE(e.digestAlgo, 80)
  b.writeUInt32LE(e.features, 84)
  writeU64(b, e.compressedSize, 88)
  writeU64(b, e.uncompressedSize, 96)
  b.writeUInt32LE(e.blobTocSize, 104)
  b.writeUInt32LE(e.ciCompressor, 108)
  writeU64(b, e.ciOffset, 112)
  writeU64(b, e.ciCompressedSize, 120)
  writeU64(b, e.ciUncompressedSize, 128)
  e.blobTocDigest.copy(b, 136, 0, 32)
  e.blobMetaDigest.copy(b, 168, 0, 32)
  writeU64(b, e.blobMetaSize, 200)
  writeU64(b, e.cipherIv, 208)
  b.writeUInt32LE(e.cipherAlgo, 216)
  return b
}

export function decodeBlobEntry (b: Buffer): BlobEntry {
  return {
    blobId: fixedString(b.subarray(0, 64)),
    blobIndex: b.readUInt32LE(64),
    chunkSize: b.readUInt32LE(68),
    chunkCount: b.readUInt32LE(72),
    compressionAlgo: b.readUInt32LE(76),
    digestAlgo: b.readUInt32LE(80),
    features: b.readUInt32LE(84),
    compressedSize: readU64(b, 88, 'blob compressed_size'),
    uncompressedSize: readU64(b, 96, 'blob uncompressed_size'),
    blobTocSize: b.readUInt32LE(104),
    ciCompressor: b.readUInt32LE(108),
    ciOffset: readU64(b, 112, 'blob ci_offset'),
    ciCompressedSize: readU64(b, 120, 'blob ci_compressed_size'),
    ciUncompressedSize: readU64(b, 128, 'blob ci_uncompressed_size'),
    blobTocDigest: Buffer.from(b.subarray(136, 168)),
    blobMetaDigest: Buffer.from(b.subarray(168, 200)),
    blobMetaSize: readU64(b, 200, 'blob meta size'),
    cipherIv: readU64(b, 208, 'blob cipher iv'),
    cipherAlgo: b.readUInt32LE(216)
  }
}

// ---------------------------------------------------------------------------------------------------------------
// §8 inodes. We always write extended inodes (mtime and rdev survive); we read both kinds.

export interface OnDiskInode {
  format: number
  /** 0 compact (32 B), 1 extended (64 B) */
  version: number
  layout: number
  xattrIcount: number
  mode: number
  nlink: number
  size: number
  /** i_u: chunk format, raw_blkaddr or rdev depending on the file type */
  u: number
  ino: number
  uid: number
  gid: number
  mtime: number
  mtimeNsec: number
  /** 32 or 64 */
  inodeSize: number
}

export function encodeExtendedInode (i: { layout: number, xattrIcount: number, mode: number, size: number, u: number, ino: number, uid: number, gid: number, mtime: number, mtimeNsec: number, nlink: number }): Buffer {
  const b = Buffer.alloc(EXTENDED_INODE_SIZE)
  b.writeUInt16LE(1 | (i.layout << 1), 0)
  b.writeUInt16LE(i.xattrIcount, 2)
  b.writeUInt16LE(i.mode, 4)
  writeU64(b, i.size, 8)
  b.writeUInt32LE(i.u >>> 0, 16)
  b.writeUInt32LE(i.ino >>> 0, 20)
  b.writeUInt32LE(i.uid >>> 0, 24)
  b.writeUInt32LE(i.gid >>> 0, 28)
  b.writeBigInt64LE(BigInt(i.mtime), 32)
  b.writeUInt32LE(i.mtimeNsec, 40)
  b.writeUInt32LE(i.nlink, 44)
  return b
}

/** Decodes the inode at `off` of `buf` (compact or extended, per its format bit). */
export function decodeInode (buf: Buffer, off: number): OnDiskInode {
  const head = slice(buf, off, COMPACT_INODE_SIZE, 'inode')
  const format = head.readUInt16LE(0)
  const version = format & 1
  const layout = (format >> 1) & 0x7
  if (version === 0) {
    return {
      format,
      version,
      layout,
      xattrIcount: head.readUInt16LE(2),
      mode: head.readUInt16LE(4),
      nlink: head.readUInt16LE(6),
      size: head.readUInt32LE(8),
      u: head.readUInt32LE(16),
      ino: head.readUInt32LE(20),
      uid: head.readUInt16LE(24),
      gid: head.readUInt16LE(26),
      mtime: 0,
      mtimeNsec: 0,
      inodeSize: COMPACT_INODE_SIZE
    }
  }
  const b = slice(buf, off, EXTENDED_INODE_SIZE, 'extended inode')
  return {
    format,
    version,
    layout,
    xattrIcount: b.readUInt16LE(2),
    mode: b.readUInt16LE(4),
    size: readU64(b, 8, 'inode size'),
    u: b.readUInt32LE(16),
    ino: b.readUInt32LE(20),
    uid: b.readUInt32LE(24),
    gid: b.readUInt32LE(28),
    mtime: Number(b.readBigInt64LE(32)),
    mtimeNsec: b.readUInt32LE(40),
    nlink: b.readUInt32LE(44),
    inodeSize: EXTENDED_INODE_SIZE
  }
}

/** Size in bytes of the inline xattr body for an `i_xattr_icount` (§9). */
export function xattrIbodySize (icount: number): number {
  return icount === 0 ? 0 : XATTR_IBODY_HEADER_SIZE + 4 * (icount - 1)
}

/** Linux "new" dev_t encoding used in i_u (§8.5). */
export function encodeRdev (major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0
}

export function decodeRdev (u: number): { major: number, minor: number } {
  return { major: (u >>> 8) & 0xfff, minor: (u & 0xff) | ((u >>> 12) & 0xfff00) }
}

// ---------------------------------------------------------------------------------------------------------------
// §9 xattrs

/** Name index → prefix. Index 2/3 are whole names (empty suffix). */
export const XATTR_PREFIXES: ReadonlyArray<[number, string]> = [
  [1, 'user.'],
  [2, 'system.posix_acl_access'],
  [3, 'system.posix_acl_default'],
  [4, 'trusted.'],
  [6, 'security.']
]

/** Splits a full xattr name into (index, suffix), or undefined when RAFS cannot store it. */
export function splitXattrName (name: string): { index: number, suffix: Buffer } | undefined {
  if (name === 'system.posix_acl_access') return { index: 2, suffix: Buffer.alloc(0) }
  if (name === 'system.posix_acl_default') return { index: 3, suffix: Buffer.alloc(0) }
  for (const [index, prefix] of XATTR_PREFIXES) {
    if (index === 2 || index === 3) continue
    if (name.startsWith(prefix) && name.length > prefix.length) {
      return { index, suffix: Buffer.from(name.slice(prefix.length), 'utf8') }
    }
  }
  return undefined
}

export function joinXattrName (index: number, suffix: Buffer): string | undefined {
  const p = XATTR_PREFIXES.find(([i]) => i === index)
  if (p === undefined) return undefined
  return p[1] + suffix.toString('utf8')
}

// ---------------------------------------------------------------------------------------------------------------
// §11 dirents

export interface Dirent {
  nid: number
  nameoff: number
  fileType: number
}

export function encodeDirent (d: Dirent, out: Buffer, off: number): void {
  writeU64(out, d.nid, off)
  out.writeUInt16LE(d.nameoff, off + 8)
  out.writeUInt8(d.fileType, off + 10)
  out.writeUInt8(0, off + 11)
}

export function decodeDirent (b: Buffer, off: number): Dirent {
  return { nid: readU64(b, off, 'dirent nid'), nameoff: b.readUInt16LE(off + 8), fileType: b.readUInt8(off + 10) }
}

// ---------------------------------------------------------------------------------------------------------------
// §12.1 chunk index slot (8 B): Nydus's view (blob index + ci index) and the kernel's (device id + blkaddr) at once

export interface ChunkIndex {
  blobIndex: number
  ciIndex: number
  /** uncompressed_offset / 4096 */
  blkaddr: number
}

export function encodeChunkIndex (c: ChunkIndex, out: Buffer, off: number): void {
  out.writeUInt16LE(c.ciIndex & 0xffff, off)
  out.writeUInt16LE((((c.ciIndex >>> 16) & 0xff) << 8) | ((c.blobIndex + 1) & 0xff), off + 2)
  out.writeUInt32LE(c.blkaddr >>> 0, off + 4)
}

export function decodeChunkIndex (b: Buffer, off: number): ChunkIndex & { deviceId: number } {
  const lo = b.readUInt16LE(off)
  const hi = b.readUInt16LE(off + 2)
  return { ciIndex: lo | ((hi >>> 8) << 16), blobIndex: (hi & 0xff) - 1, deviceId: hi & 0xff, blkaddr: b.readUInt32LE(off + 4) }
}

// ---------------------------------------------------------------------------------------------------------------
// §12.3 chunk-info table entry (80 B)

export interface ChunkInfoEntry {
  digest: Buffer
  blobIndex: number
  flags: number
  compressedSize: number
  uncompressedSize: number
  compressedOffset: number
  uncompressedOffset: number
  fileOffset: number
  index: number
  crc32: number
}

export function encodeChunkInfo (c: ChunkInfoEntry, out: Buffer, off: number): void {
  c.digest.copy(out, off, 0, 32)
  out.writeUInt32LE(c.blobIndex, off + 32)
  out.writeUInt32LE(c.flags, off + 36)
  out.writeUInt32LE(c.compressedSize, off + 40)
  out.writeUInt32LE(c.uncompressedSize, off + 44)
  writeU64(out, c.compressedOffset, off + 48)
  writeU64(out, c.uncompressedOffset, off + 56)
  writeU64(out, c.fileOffset, off + 64)
  out.writeUInt32LE(c.index, off + 72)
  out.writeUInt32LE(c.crc32 >>> 0, off + 76)
}

export function decodeChunkInfo (b: Buffer, off: number): ChunkInfoEntry {
  return {
    digest: Buffer.from(b.subarray(off, off + 32)),
    blobIndex: b.readUInt32LE(off + 32),
    flags: b.readUInt32LE(off + 36),
    compressedSize: b.readUInt32LE(off + 40),
    uncompressedSize: b.readUInt32LE(off + 44),
    compressedOffset: readU64(b, off + 48, 'chunk compressed_offset'),
    uncompressedOffset: readU64(b, off + 56, 'chunk uncompressed_offset'),
    fileOffset: readU64(b, off + 64, 'chunk file_offset'),
    index: b.readUInt32LE(off + 72),
    crc32: b.readUInt32LE(off + 76)
  }
}

// ---------------------------------------------------------------------------------------------------------------
// §13.2 compression-info (ci) array entries

export interface CiEntry {
  uncompressedOffset: number
  uncompressedSize: number
  compressedOffset: number
  compressedSize: number
  compressed: boolean
}

const U20 = 0xfffff

export function encodeCiV1 (c: CiEntry, out: Buffer, off: number): void {
  const u = c.uncompressedSize - 1
  const cs = c.compressedSize - 1
  // uncomp_info: bits 8..11 = U[20..23], bits 12..43 = offset[12..43], bits 44..63 = U[0..19]
  const uncomp = (BigInt((u >>> 20) & 0xf) << 8n) |
    (BigInt(c.uncompressedOffset) & 0xfff_ffff_f000n) |
    (BigInt(u & U20) << 44n)
  // comp_info: bits 0..39 = offset, 40..43 = C[20..23], 44..63 = C[0..19]
  const comp = (BigInt(c.compressedOffset) & 0xff_ffff_ffffn) |
    (BigInt((cs >>> 20) & 0xf) << 40n) |
    (BigInt(cs & U20) << 44n)
  out.writeBigUInt64LE(uncomp, off)
  out.writeBigUInt64LE(comp, off + 8)
}

export function decodeCiV1 (b: Buffer, off: number): CiEntry {
  const uncomp = b.readBigUInt64LE(off)
  const comp = b.readBigUInt64LE(off + 8)
  const u = Number(((uncomp >> 8n) & 0xfn) << 20n | ((uncomp >> 44n) & 0xfffffn)) + 1
  const cs = Number(((comp >> 40n) & 0xfn) << 20n | ((comp >> 44n) & 0xfffffn)) + 1
  return {
    uncompressedOffset: Number(uncomp & 0xfff_ffff_f000n),
    uncompressedSize: u,
    compressedOffset: Number(comp & 0xff_ffff_ffffn),
    compressedSize: cs,
    compressed: u !== cs
  }
}

export function decodeCiV2 (b: Buffer, off: number): CiEntry & { flags: number, data: bigint } {
  const uncomp = b.readBigUInt64LE(off)
  const comp = b.readBigUInt64LE(off + 8)
  const flags = Number((uncomp >> 56n) & 0xffn)
  return {
    uncompressedOffset: Number(uncomp & 0xffff_ffffn) * BLOCK_SIZE,
    uncompressedSize: Number((uncomp >> 32n) & 0xff_ffffn) + 1,
    compressedOffset: Number(comp & 0xff_ffff_ffffn),
    compressedSize: Number((comp >> 40n) & 0xff_ffffn),
    compressed: (flags & 0x1) !== 0,
    flags,
    data: b.readBigUInt64LE(off + 16)
  }
}

// ---------------------------------------------------------------------------------------------------------------
// §13.3 BlobCompressionContextHeader (4096 B)

export interface BlobMetaHeader {
  magic: number
  features: number
  ciCompressor: number
  ciEntries: number
  ciOffset: number
  ciCompressedSize: number
  ciUncompressedSize: number
  magic2: number
}

export function encodeBlobMetaHeader (h: Omit<BlobMetaHeader, 'magic' | 'magic2'>): Buffer {
  const b = Buffer.alloc(BLOB_META_HEADER_SIZE)
  b.writeUInt32LE(BLOB_META_MAGIC, 0)
  b.writeUInt32LE(h.features >>> 0, 4)
  b.writeUInt32LE(h.ciCompressor, 8)
  b.writeUInt32LE(h.ciEntries, 12)
  writeU64(b, h.ciOffset, 16)
  writeU64(b, h.ciCompressedSize, 24)
  writeU64(b, h.ciUncompressedSize, 32)
  b.writeUInt32LE(BLOB_META_MAGIC, 4092)
  return b
}

export function decodeBlobMetaHeader (b: Buffer): BlobMetaHeader {
  return {
    magic: b.readUInt32LE(0),
    features: b.readUInt32LE(4),
    ciCompressor: b.readUInt32LE(8),
    ciEntries: b.readUInt32LE(12),
    ciOffset: readU64(b, 16, 'blob.meta ci_offset'),
    ciCompressedSize: readU64(b, 24, 'blob.meta ci_compressed_size'),
    ciUncompressedSize: readU64(b, 32, 'blob.meta ci_uncompressed_size'),
    magic2: b.readUInt32LE(4092)
  }
}

// ---------------------------------------------------------------------------------------------------------------
// §13.4 the 512 B GNU tar header that follows each blob section ("reverse tar")

export function encodeTarHeader (name: string, size: number): Buffer {
  const b = Buffer.alloc(TAR_HEADER_SIZE)
  b.write(name, 0, 100, 'latin1')
  b.write(size.toString(8).padStart(11, '0') + '\0', 124, 12, 'latin1')
  b.write('00000000000\0', 136, 12, 'latin1')
  b.write('0', 156, 1, 'latin1')
  b.write('ustar ', 257, 6, 'latin1')
  b.write(' \0', 263, 2, 'latin1')
  b.fill(0x20, 148, 156)
  let sum = 0
  for (const byte of b) sum += byte
  // the Rust tar crate's layout, byte-identical to the Nydus fixtures: 7 octal digits + NUL
  b.write(sum.toString(8).padStart(7, '0') + '\0', 148, 8, 'latin1')
  return b
}

export function decodeTarHeader (b: Buffer): { name: string, size: number, checksumOk: boolean } {
  const name = fixedString(b.subarray(0, 100))
  // strict octal: parseInt would accept trailing garbage ("12x" → 10)
  const octal = (s: string): number => /^[0-7]+$/.test(s) ? parseInt(s, 8) : NaN
  const sizeField = fixedString(b.subarray(124, 136)).trim()
  const size = sizeField === '' ? 0 : octal(sizeField)
  const stored = octal(fixedString(b.subarray(148, 156)).trim())
  let sum = 0
  for (let i = 0; i < TAR_HEADER_SIZE; i++) sum += (i >= 148 && i < 156) ? 0x20 : b[i]!
  return { name, size: Number.isFinite(size) ? size : -1, checksumOk: stored === sum }
}

// ---------------------------------------------------------------------------------------------------------------
// §13.5 ToC entry (128 B)

export interface TocEntry {
  flags: number
  name: string
  digest: Buffer
  compressedOffset: number
  compressedSize: number
  uncompressedSize: number
}

export function encodeTocEntry (t: TocEntry): Buffer {
  const b = Buffer.alloc(TOC_ENTRY_SIZE)
  b.writeUInt32LE(t.flags, 0)
  b.write(t.name, 8, 16, 'latin1')
  t.digest.copy(b, 24, 0, 32)
  writeU64(b, t.compressedOffset, 56)
  writeU64(b, t.compressedSize, 64)
  writeU64(b, t.uncompressedSize, 72)
  return b
}

export function decodeTocEntry (b: Buffer, off: number): TocEntry {
  return {
    flags: b.readUInt32LE(off),
    name: fixedString(b.subarray(off + 8, off + 24)),
    digest: Buffer.from(b.subarray(off + 24, off + 56)),
    compressedOffset: readU64(b, off + 56, 'ToC compressed_offset'),
    compressedSize: readU64(b, off + 64, 'ToC compressed_size'),
    uncompressedSize: readU64(b, off + 72, 'ToC uncompressed_size')
  }
}
