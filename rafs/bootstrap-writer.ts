/**
 * Writes a RafsImage as a RAFS v6 bootstrap (docs/FORMAT.md §2–§12, §18), laid out as nydus-image
 * does: SB, ext, device slots, blob table, optional prefetch table, inodes from nid 128 on (root first,
 * breadth-first), full dir/symlink data blocks, then the chunk-info table.
 *
 * Layout runs before encoding because the file size feeds the device slots' `mapped_blkaddr`.
 *
 * @example
 * const buf = encodeBootstrap(image)          // assigns inode.nid everywhere
 * await writeBootstrap(image, 'image.boot')   // same bytes, atomically replaced
 */
import { randomBytes } from 'node:crypto'
import { rename, unlink, writeFile } from 'node:fs/promises'
import {
  BLOB_ENTRY_SIZE, BLOCK_BITS, BLOCK_SIZE, BlobFeatures, CHUNK_FORMAT_INDEXES, CHUNK_INDEX_SIZE, CHUNK_INFO_SIZE,
  COMPAT_RAFS_V6, ChunkFlags, CompressorCode, DEVICE_SLOT_SIZE, DEVICE_TABLE_OFFSET, DEVT_SLOT_OFFSET, DigesterCode,
  EXTENDED_INODE_SIZE, INODE_SLOT_SIZE, InodeLayout, MAPPED_BLKADDR_ALIGN, MAX_BLOBS, MAX_CHUNKS_PER_BLOB,
  MAX_CHUNK_SIZE, MAX_NAME_LEN, MAX_SYMLINK_SIZE, MIN_CHUNK_SIZE, NYDUS_ROOT_NID, RAFS_V6_INCOMPAT, RafsFlags,
  SB_EXT_OFFSET, SUPERBLOCK_OFFSET, XATTR_IBODY_HEADER_SIZE,
  encodeBlobEntry, encodeChunkIndex, encodeChunkInfo, encodeDeviceSlot, encodeExtendedInode, encodeRdev,
  encodeSuperBlock, encodeSuperBlockExt, roundUp
} from './layout.js'
import type { Compressor, Digester } from './layout.js'
import { displayName, fileTypeOfMode } from './model.js'
import type { ChunkInfo, RafsBlobInfo, RafsImage, RafsInode } from './model.js'
import { encodeDirBlocks, packDirectory } from './dir-layout.js'
import { encodeXattrs } from './xattr-body.js'
import type { DirEntry, PackedDir } from './dir-layout.js'

const COMPRESSION_FLAG: Record<Compressor, number> = {
  none: RafsFlags.COMPRESSION_NONE,
  lz4_block: RafsFlags.COMPRESSION_LZ4,
  gzip: RafsFlags.COMPRESSION_GZIP,
  zstd: RafsFlags.COMPRESSION_ZSTD
}
const HASH_FLAG: Record<Digester, number> = { blake3: RafsFlags.HASH_BLAKE3, sha256: RafsFlags.HASH_SHA256 }

/** One distinct inode and everything the layout decided about it. */
interface Slot {
  inode: RafsInode
  /** first path it was reached by, for error messages */
  path: string
  parent: RafsInode
  nlink: number
  children?: DirEntry[]
  xattrs: Buffer
  dir?: PackedDir
  /** dir/symlink i_size */
  dataSize: number
  layout: number
  offset: number
  /** dir/symlink: blocks stored outside the inode area, starting at block `firstBlock` */
  fullBlocks: number
  firstBlock: number
}

export async function writeBootstrap (image: RafsImage, path: string): Promise<void> {
  const buf = encodeBootstrap(image)
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`
  try {
    await writeFile(tmp, buf)
    await rename(tmp, path)
  } catch (err) {
    await unlink(tmp).catch(() => {})
    throw err
  }
}

export function encodeBootstrap (image: RafsImage): Buffer {
  const chunkBits = checkChunkSize(image.chunkSize)
  checkBlobs(image)
  const slots = collectInodes(image.root)
  const bySlot = new Map<RafsInode, Slot>()
  for (const s of slots) bySlot.set(s.inode, s)

  const nBlobs = image.blobs.length
  const prefetch = image.prefetch ?? []
  const blobTableOffset = roundUp(DEVICE_TABLE_OFFSET + DEVICE_SLOT_SIZE * nBlobs, BLOCK_SIZE)
  const prefetchOffset = blobTableOffset + BLOB_ENTRY_SIZE * nBlobs
  const metaStart = roundUp(prefetchOffset + 4 * prefetch.length, BLOCK_SIZE)
  const rootOffset = metaStart + NYDUS_ROOT_NID * INODE_SLOT_SIZE

  // inode area: each inode + xattrs + (chunk slots | inline tail), 32 B aligned
  let cursor = rootOffset
  const chunks = new ChunkSet(image)
  for (const s of slots) {
    const fixed = EXTENDED_INODE_SIZE + s.xattrs.length
    let off = roundUp(cursor, INODE_SLOT_SIZE)
    let end: number
    if (s.inode.type === 'file') {
      chunks.addFile(s, image.chunkSize)
      end = roundUp(off + fixed, CHUNK_INDEX_SIZE) + CHUNK_INDEX_SIZE * (s.inode.chunks ?? []).length
    } else if (s.inode.type === 'dir' || s.inode.type === 'symlink') {
      const tail = s.dataSize % BLOCK_SIZE
      const nblocks = Math.ceil(s.dataSize / BLOCK_SIZE)
      // the kernel refuses inline data that crosses a block, so an inode with a tail may move to a fresh block
      if (tail !== 0 && fixed + tail <= BLOCK_SIZE) {
        if ((off % BLOCK_SIZE) + fixed + tail > BLOCK_SIZE) off = roundUp(off, BLOCK_SIZE)
        s.layout = InodeLayout.FLAT_INLINE
        s.fullBlocks = nblocks - 1
        end = off + fixed + tail
      } else {
        s.layout = InodeLayout.FLAT_PLAIN
        s.fullBlocks = nblocks
        end = off + fixed
      }
    } else {
      end = off + fixed
    }
    s.offset = off
    s.inode.nid = (off - metaStart) / INODE_SLOT_SIZE
    cursor = end
  }
  if (slots[0]!.inode.nid !== NYDUS_ROOT_NID) throw new Error('internal: root inode did not land on nid 128')

  // full dir/symlink blocks, then the chunk table, each 4096-aligned
  let nextBlock = roundUp(cursor, BLOCK_SIZE) / BLOCK_SIZE
  for (const s of slots) {
    if (s.fullBlocks > 0) {
      s.firstBlock = nextBlock
      nextBlock += s.fullBlocks
    }
  }
  const chunkTableOffset = nextBlock * BLOCK_SIZE
  const chunkList = chunks.sorted()
  const chunkTableSize = CHUNK_INFO_SIZE * chunkList.length
  const fileSize = roundUp(chunkTableOffset + chunkTableSize, BLOCK_SIZE)

  const out = Buffer.alloc(fileSize)
  for (const s of slots) encodeSlot(s, out, chunkBits)
  chunkList.forEach((c, i) => encodeChunkInfo({
    digest: c.digest,
    blobIndex: c.blobIndex,
    flags: (c.compressed ? ChunkFlags.COMPRESSED : 0) | (c.crc32 !== undefined ? ChunkFlags.HAS_CRC32 : 0),
    compressedSize: c.compressedSize,
    uncompressedSize: c.uncompressedSize,
    compressedOffset: c.compressedOffset,
    uncompressedOffset: c.uncompressedOffset,
    fileOffset: c.fileOffset,
    index: c.index,
    crc32: c.crc32 ?? 0
  }, out, chunkTableOffset + CHUNK_INFO_SIZE * i))

  // headers last: the device slots need the final file size
  let pos = fileSize
  let totalBlocks = 0
  image.blobs.forEach((b, i) => {
    const mapped = roundUp(pos, MAPPED_BLKADDR_ALIGN) / BLOCK_SIZE
    pos = mapped * BLOCK_SIZE + b.uncompressedSize
    totalBlocks += b.uncompressedSize / BLOCK_SIZE
    encodeDeviceSlot({ tag: b.blobId, blocks: b.uncompressedSize / BLOCK_SIZE, mappedBlkaddr: mapped })
      .copy(out, DEVICE_TABLE_OFFSET + DEVICE_SLOT_SIZE * i)
    encodeBlobInfo(b, i).copy(out, blobTableOffset + BLOB_ENTRY_SIZE * i)
  })
  if (totalBlocks > 0xffffffff) throw new Error(`blobs hold ${totalBlocks} blocks in all, more than a u32 superblock field`)
  prefetch.forEach((inode, i) => {
    const s = bySlot.get(inode)
    if (s === undefined) throw new Error('a prefetch inode is not part of the image tree')
    out.writeUInt32LE(s.inode.nid!, prefetchOffset + 4 * i)
  })

  encodeSuperBlock({
    featureCompat: COMPAT_RAFS_V6,
    blkszbits: BLOCK_BITS,
    rootNid: NYDUS_ROOT_NID,
    inos: slots.length,
    buildTime: 0,
    buildTimeNsec: 0,
    blocks: totalBlocks,
    metaBlkaddr: metaStart / BLOCK_SIZE,
    featureIncompat: RAFS_V6_INCOMPAT,
    extraDevices: nBlobs,
    devtSlotoff: DEVT_SLOT_OFFSET
  }).copy(out, SUPERBLOCK_OFFSET)
  encodeSuperBlockExt({
    flags: rafsFlags(image, slots),
    blobTableOffset,
    blobTableSize: BLOB_ENTRY_SIZE * nBlobs,
    chunkSize: image.chunkSize,
    chunkTableOffset,
    chunkTableSize,
    prefetchTableOffset: prefetch.length > 0 ? prefetchOffset : 0,
    prefetchTableSize: 4 * prefetch.length
  }).copy(out, SB_EXT_OFFSET)
  return out
}

function rafsFlags (image: RafsImage, slots: Slot[]): number {
  let flags = COMPRESSION_FLAG[image.compressor] | HASH_FLAG[image.digester] | RafsFlags.EXPLICIT_UID_GID |
    RafsFlags.ENCRYPTION_NONE
  if (slots.some(s => s.xattrs.length > 0)) flags |= RafsFlags.HAS_XATTR
  // nydusd takes chunk info from the blob meta only when every blob carries its digests
  if (image.blobs.length > 0 && image.blobs.every(b => (b.features & BlobFeatures.INLINED_CHUNK_DIGEST) !== 0)) {
    flags |= RafsFlags.INLINED_CHUNK_DIGEST
  }
  return flags
}

function encodeBlobInfo (b: RafsBlobInfo, index: number): Buffer {
  return encodeBlobEntry({
    blobId: b.blobId,
    blobIndex: index,
    chunkSize: b.chunkSize,
    chunkCount: b.chunkCount,
    compressionAlgo: CompressorCode[b.compressor],
    digestAlgo: DigesterCode[b.digester],
    features: b.features,
    compressedSize: b.compressedSize,
    uncompressedSize: b.uncompressedSize,
    blobTocSize: b.blobTocSize,
    ciCompressor: CompressorCode[b.ciCompressor],
    ciOffset: b.ciOffset,
    ciCompressedSize: b.ciCompressedSize,
    ciUncompressedSize: b.ciUncompressedSize,
    blobTocDigest: b.blobTocDigest,
    blobMetaDigest: Buffer.alloc(32),
    blobMetaSize: 0,
    cipherIv: 0,
    cipherAlgo: 0
  })
}

function encodeSlot (s: Slot, out: Buffer, chunkBits: number): void {
  const inode = s.inode
  const bodyEnd = s.offset + EXTENDED_INODE_SIZE + s.xattrs.length
  let u = 0
  let size = s.dataSize
  if (inode.type === 'file') {
    u = CHUNK_FORMAT_INDEXES | (chunkBits - BLOCK_BITS)
    size = inode.size
    const base = roundUp(bodyEnd, CHUNK_INDEX_SIZE)
    for (const [k, c] of (inode.chunks ?? []).entries()) {
      encodeChunkIndex({
        blobIndex: c.blobIndex, ciIndex: c.index, blkaddr: c.uncompressedOffset / BLOCK_SIZE
      }, out, base + CHUNK_INDEX_SIZE * k)
    }
  } else if (inode.type === 'chr' || inode.type === 'blk') {
    u = encodeRdev(inode.rdevMajor, inode.rdevMinor)
  } else if (inode.type === 'dir' || inode.type === 'symlink') {
    u = s.fullBlocks > 0 ? s.firstBlock : 0
    // block k < fullBlocks lives in the data area; the last one, when inline, right after the xattrs
    const blockOffset = (k: number): number => k < s.fullBlocks ? (s.firstBlock + k) * BLOCK_SIZE : bodyEnd
    if (s.dir !== undefined) encodeDirBlocks(s.dir, out, blockOffset)
    else {
      const target = inode.target!
      for (let k = 0; k * BLOCK_SIZE < target.length; k++) {
        target.copy(out, blockOffset(k), k * BLOCK_SIZE, Math.min(target.length, (k + 1) * BLOCK_SIZE))
      }
    }
    inode.size = size
  }
  encodeExtendedInode({
    layout: s.layout,
    xattrIcount: s.xattrs.length === 0 ? 0 : (s.xattrs.length - XATTR_IBODY_HEADER_SIZE) / 4 + 1,
    mode: inode.mode & 0xffff,
    size,
    u,
    ino: inode.nid!,
    uid: inode.uid,
    gid: inode.gid,
    mtime: inode.mtime,
    mtimeNsec: inode.mtimeNsec,
    nlink: s.nlink
  }).copy(out, s.offset)
  s.xattrs.copy(out, s.offset + EXTENDED_INODE_SIZE)
}

/** Breadth-first from the root, children in byte order; hard links collapse onto their first slot. */
function collectInodes (root: RafsInode): Slot[] {
  if (root.type !== 'dir') throw new Error(`the image root must be a directory, not a ${root.type}`)
  const slots: Slot[] = []
  const seen = new Map<RafsInode, Slot>()
  const add = (inode: RafsInode, path: string, parent: RafsInode): Slot => {
    const s: Slot = {
      inode, path, parent, nlink: 1, xattrs: encodeXattrs(inode, path), dataSize: 0,
      layout: inode.type === 'file' ? InodeLayout.CHUNK_BASED : InodeLayout.FLAT_PLAIN,
      offset: 0, fullBlocks: 0, firstBlock: 0
    }
    checkInode(inode, path)
    if (inode.type === 'symlink') s.dataSize = inode.target!.length
    seen.set(inode, s)
    slots.push(s)
    return s
  }
  add(root, '/', root)
  for (let q = 0; q < slots.length; q++) {
    const s = slots[q]!
    if (s.inode.type !== 'dir') continue
    const keys = [...s.inode.children!.keys()].sort()
    const children: DirEntry[] = []
    let subdirs = 0
    for (const key of keys) {
      const child = s.inode.children!.get(key)!
      const path = (s.path === '/' ? '' : s.path) + '/' + displayName(key)
      checkName(key, path)
      const prev = seen.get(child)
      if (prev === undefined) add(child, path, s.inode)
      else if (child.type === 'dir') throw new Error(`directory ${prev.path} is also reachable as ${path}; directories cannot be hard-linked`)
      else prev.nlink++
      if (child.type === 'dir') subdirs++
      children.push({ key, inode: child })
    }
    s.nlink = 2 + subdirs
    s.dir = packDirectory(s.inode, s.parent, children)
    s.dataSize = s.dir.size
  }
  return slots
}

function checkName (key: string, path: string): void {
  if (key.length === 0) throw new Error(`empty file name under ${path}`)
  if (key.length > MAX_NAME_LEN) throw new Error(`file name of ${key.length} bytes (max ${MAX_NAME_LEN}): ${path}`)
  if (key.includes('/') || key.includes('\0')) throw new Error(`file name contains '/' or NUL: ${JSON.stringify(path)}`)
  if (key === '.' || key === '..') throw new Error(`"${key}" cannot be a directory entry name: ${path}`)
}

function checkInode (inode: RafsInode, path: string): void {
  if (fileTypeOfMode(inode.mode) !== inode.type) {
    throw new Error(`${path}: mode 0${inode.mode.toString(8)} does not describe a ${inode.type}`)
  }
  if (inode.type === 'symlink') {
    if (inode.target === undefined) throw new Error(`${path}: symlink without a target`)
    if (inode.target.length > MAX_SYMLINK_SIZE) {
      throw new Error(`${path}: symlink target of ${inode.target.length} bytes (max ${MAX_SYMLINK_SIZE})`)
    }
  }
  if (inode.type === 'file' && (!Number.isSafeInteger(inode.size) || inode.size < 0)) {
    throw new Error(`${path}: bad file size ${inode.size}`)
  }
}

function checkChunkSize (chunkSize: number): number {
  const bits = Math.log2(chunkSize)
  if (!Number.isInteger(bits) || chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE) {
    throw new Error(`chunk size ${chunkSize} is not a power of two in [${MIN_CHUNK_SIZE}, ${MAX_CHUNK_SIZE}]`)
  }
  return bits
}

function checkBlobs (image: RafsImage): void {
  if (image.blobs.length > MAX_BLOBS) throw new Error(`${image.blobs.length} blobs; RAFS v6 holds at most ${MAX_BLOBS}`)
  const ids = new Set<string>()
  image.blobs.forEach((b, i) => {
    if (!/^[0-9a-f]{64}$/.test(b.blobId)) throw new Error(`blob ${i}: id ${JSON.stringify(b.blobId)} is not 64 lowercase hex chars`)
    if (ids.has(b.blobId)) throw new Error(`blob ${i}: id ${b.blobId} appears twice in the blob table`)
    ids.add(b.blobId)
    if (b.chunkSize !== image.chunkSize) throw new Error(`blob ${i}: chunk size ${b.chunkSize} differs from the image's ${image.chunkSize}`)
    if (b.uncompressedSize <= 0 || b.uncompressedSize % BLOCK_SIZE !== 0) {
      throw new Error(`blob ${i}: uncompressed size ${b.uncompressedSize} is not a positive multiple of ${BLOCK_SIZE}`)
    }
  })
}

/** The distinct chunks referenced by the files, keyed by (blob, ci index), checked against the blob table. */
class ChunkSet {
  private readonly byKey = new Map<number, ChunkInfo>()
  constructor (private readonly image: RafsImage) {}

  addFile (s: Slot, chunkSize: number): void {
    const list = s.inode.chunks ?? []
    const want = Math.ceil(s.inode.size / chunkSize)
    if (list.length !== want) {
      throw new Error(`${s.path}: ${list.length} chunks for ${s.inode.size} bytes; chunk size ${chunkSize} needs ${want}`)
    }
    list.forEach((c, k) => {
      const blob = this.image.blobs[c.blobIndex]
      const where = `${s.path} chunk ${k}`
      if (!Number.isInteger(c.blobIndex) || blob === undefined) {
        throw new Error(`${where}: blob index ${c.blobIndex} is outside the blob table (${this.image.blobs.length} blobs)`)
      }
      if (!Number.isInteger(c.index) || c.index < 0 || c.index > MAX_CHUNKS_PER_BLOB) throw new Error(`${where}: bad ci index ${c.index}`)
      const expect = Math.min(chunkSize, s.inode.size - k * chunkSize)
      if (c.uncompressedSize !== expect) throw new Error(`${where}: holds ${c.uncompressedSize} bytes, the file needs ${expect} there`)
      if (c.uncompressedOffset % BLOCK_SIZE !== 0 || c.uncompressedOffset + c.uncompressedSize > blob.uncompressedSize) {
        throw new Error(`${where}: uncompressed offset ${c.uncompressedOffset} is unaligned or past the end of blob ${c.blobIndex}`)
      }
      if (c.digest.length !== 32) throw new Error(`${where}: digest is ${c.digest.length} bytes, not 32`)
      const key = c.blobIndex * (MAX_CHUNKS_PER_BLOB + 1) + c.index
      const prev = this.byKey.get(key)
      if (prev === undefined) this.byKey.set(key, c)
      else if (prev !== c && (prev.uncompressedOffset !== c.uncompressedOffset || !prev.digest.equals(c.digest))) {
        throw new Error(`${where}: blob ${c.blobIndex} ci ${c.index} is claimed by two different chunks`)
      }
    })
  }

  /** nydus-image's order: digest, then blob, then ci index. */
  sorted (): ChunkInfo[] {
    return [...this.byKey.values()].sort((a, b) =>
      Buffer.compare(a.digest, b.digest) || a.blobIndex - b.blobIndex || a.index - b.index)
  }
}
