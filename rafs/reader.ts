/**
 * Reads a RAFS v6 bootstrap (spec §2-§12) from memory. Headers are validated on open; inodes, directories and
 * chunk slots are decoded lazily and cached by nid, each checked against the file bounds so hostile images end in
 * a RafsFormatError, never a crash or a hang.
 *
 * @example
 * const r = await RafsReader.open('image.boot')
 * const nid = r.lookup('/etc/os-release')
 * for (const piece of r.mapRange(nid, 0, 4096)) console.log(piece.chunk.digest.toString('hex'))
 */
import { open as openFile } from 'node:fs/promises'
import {
  BLOCK_SIZE, CHUNK_FORMAT_INDEXES, CHUNK_INDEX_SIZE, CHUNK_INFO_SIZE, ChunkFlags, FileTypeCode, InodeLayout,
  INODE_SLOT_SIZE, RafsFormatError, XATTR_ENTRY_HEADER_SIZE, XATTR_IBODY_HEADER_SIZE, decodeChunkIndex,
  decodeChunkInfo, decodeInode, decodeRdev, joinXattrName, roundUp, xattrIbodySize
} from './layout.js'
import type { BlobEntry, Compressor, DeviceSlot, Digester, OnDiskInode, SuperBlock, SuperBlockExt } from './layout.js'
import { fileTypeOfMode } from './model.js'
import type { ChunkInfo, FileType, RafsBlobInfo, RafsImage } from './model.js'
import { compressorOfCode, digesterOfCode } from './codec.js'
import { decodeHeaderStrict } from './reader-header.js'
import { dirBlockLength, isDot, isDotDot, parseDirBlock } from './reader-dir.js'
import type { RawDirent } from './reader-dir.js'
import { buildImage } from './reader-image.js'
import { RafspeerError } from '../base/index.js'

/** Bootstraps are metadata; anything bigger is not one we should hold in memory. */
export const MAX_BOOTSTRAP_SIZE = 1024 * 1024 * 1024

export interface ReaderInode {
  nid: number
  type: FileType
  mode: number
  uid: number
  gid: number
  size: number
  mtime: number
  mtimeNsec: number
  nlink: number
  rdevMajor: number
  rdevMinor: number
  layout: number
  xattrIcount: number
  inodeSize: number
  compact: boolean
  /** byte offset of the inode in the bootstrap */
  offset: number
  /** raw i_format and i_u */
  format: number
  u: number
  ino: number
}

export interface ChunkSlot { blobIndex: number, ciIndex: number, blkaddr: number }
export interface MappedPiece { chunk: ChunkInfo, chunkOffset: number, length: number, fileOffset: number }

/** A path lookup that found nothing (ENOENT) or walked through a non-directory (ENOTDIR). */
/** A path that does not resolve in the image (the code is the errno a file system would answer). */
export class RafsLookupError extends RafspeerError<'ENOENT' | 'ENOTDIR'> {
  constructor (code: 'ENOENT' | 'ENOTDIR', path: string) {
    super(code, `${code}: ${path}`)
  }
}

const DIRENT_TYPES: Record<FileType, number> = {
  file: FileTypeCode.file, dir: FileTypeCode.dir, chr: FileTypeCode.chr, blk: FileTypeCode.blk, fifo: FileTypeCode.fifo, sock: FileTypeCode.sock, symlink: FileTypeCode.symlink
}
export const direntTypeOf = (t: FileType): number => DIRENT_TYPES[t]

export class RafsReader {
  readonly superblock: SuperBlock
  readonly ext: SuperBlockExt
  readonly devices: DeviceSlot[]
  readonly blobEntries: BlobEntry[]
  readonly blobs: RafsBlobInfo[]
  readonly rootNid: number
  readonly chunkSize: number
  readonly compressor: Compressor
  readonly digester: Digester
  readonly flags: number
  readonly prefetchNids: number[]
  private readonly metaStart: number
  private readonly inodes = new Map<number, ReaderInode>()
  /** chunk-table entries by (blob, ci index), the first of each; see chunkInfo */
  private chunkTable?: { first: Map<number, ChunkInfo>, otherSlots: Map<string, ChunkInfo> }

  private constructor (readonly buf: Buffer, readonly name: string) {
    const h = decodeHeaderStrict(buf, name)
    this.superblock = h.sb
    this.ext = h.ext
    this.devices = h.devices
    this.blobEntries = h.blobEntries
    this.blobs = h.blobEntries.map(blobInfoOf)
    this.rootNid = h.sb.rootNid
    this.chunkSize = h.ext.chunkSize
    this.compressor = h.compressor!
    this.digester = h.digester!
    this.flags = h.ext.flags
    this.prefetchNids = h.prefetchNids
    this.metaStart = h.sb.metaBlkaddr * BLOCK_SIZE
    const root = this.inode(this.rootNid)
    if (root.type !== 'dir') throw new RafsFormatError(`${name}: root nid ${this.rootNid} is a ${root.type}, not a directory`)
  }

  static async open (path: string): Promise<RafsReader> {
    const fh = await openFile(path, 'r')
    try {
      const { size } = await fh.stat()
      if (size > MAX_BOOTSTRAP_SIZE) throw new RafsFormatError(`${path}: ${size} bytes is too large for a bootstrap (limit ${MAX_BOOTSTRAP_SIZE})`)
      const buf = Buffer.alloc(size)
      let got = 0
      while (got < size) {
        const { bytesRead } = await fh.read(buf, got, size - got, got)
        if (bytesRead === 0) break
        got += bytesRead
      }
      if (got !== size) throw new RafsFormatError(`${path}: short read (${got} of ${size} bytes)`)
      return new RafsReader(buf, path)
    } finally {
      await fh.close()
    }
  }

  static fromBuffer (buf: Buffer, name = 'bootstrap'): RafsReader {
    if (buf.length > MAX_BOOTSTRAP_SIZE) throw new RafsFormatError(`${name}: ${buf.length} bytes is too large for a bootstrap`)
    return new RafsReader(buf, name)
  }

  /** Decodes (once) and validates the inode at `nid`. */
  inode (nid: number): ReaderInode {
    const cached = this.inodes.get(nid)
    if (cached !== undefined) return cached
    const where = `inode nid ${nid}`
    if (!Number.isSafeInteger(nid) || nid < 0) throw new RafsFormatError(`${where}: not a valid nid`)
    const offset = this.metaStart + nid * INODE_SLOT_SIZE
    if (offset + INODE_SLOT_SIZE > this.buf.length) throw new RafsFormatError(`${where}: offset ${offset} is past the end of the ${this.buf.length}-byte bootstrap`)
    let d: OnDiskInode
    try {
      d = decodeInode(this.buf, offset)
    } catch (err) {
      throw new RafsFormatError(`${where} (offset ${offset}): ${(err as Error).message}`, { cause: err })
    }
    const at = `${where} (offset ${offset})`
    if ((d.format & ~0xf) !== 0) throw new RafsFormatError(`${at}: i_format 0x${d.format.toString(16)} has unsupported bits`)
    const type = fileTypeOfMode(d.mode)
    if (type === undefined) throw new RafsFormatError(`${at}: mode 0${d.mode.toString(8)} has an unknown file type`)
    const ibody = xattrIbodySize(d.xattrIcount)
    const bodyEnd = offset + d.inodeSize + ibody
    if (bodyEnd > this.buf.length) throw new RafsFormatError(`${at}: xattr body (${ibody} bytes) runs past the end of the bootstrap`)
    if (type === 'file') {
      if (d.layout !== InodeLayout.CHUNK_BASED) throw new RafsFormatError(`${at}: regular file has data layout ${d.layout}, expected CHUNK_BASED (${InodeLayout.CHUNK_BASED})`)
      const fmt = d.u & 0xffff
      if ((fmt & CHUNK_FORMAT_INDEXES) === 0 || (fmt & ~0x3f) !== 0) throw new RafsFormatError(`${at}: chunk format 0x${fmt.toString(16)} is not an 8-byte INDEXES format`)
      const slots = Math.ceil(d.size / this.chunkSize)
      const base = roundUp(bodyEnd, 8)
      if (base + slots * CHUNK_INDEX_SIZE > this.buf.length) throw new RafsFormatError(`${at}: ${slots} chunk slots for size ${d.size} run past the end of the bootstrap`)
    } else if (type === 'dir' || type === 'symlink') {
      if (d.layout !== InodeLayout.FLAT_PLAIN && d.layout !== InodeLayout.FLAT_INLINE) throw new RafsFormatError(`${at}: ${type} has data layout ${d.layout}, expected FLAT_PLAIN or FLAT_INLINE`)
      const { full, tail } = splitData(d.layout, d.size)
      if (tail > 0 && (offset % BLOCK_SIZE) + d.inodeSize + ibody + tail > BLOCK_SIZE) throw new RafsFormatError(`${at}: inline data (${tail} bytes) crosses a block boundary`)
      if (full > 0 && (d.u + full) * BLOCK_SIZE > this.buf.length) throw new RafsFormatError(`${at}: ${full} data blocks from block ${d.u} run past the end of the bootstrap`)
    } else if (d.layout === InodeLayout.CHUNK_BASED || d.layout === InodeLayout.COMPRESSED_FULL || d.layout === InodeLayout.COMPRESSED_COMPACT || d.layout > 4) {
      throw new RafsFormatError(`${at}: ${type} has data layout ${d.layout}, expected FLAT_PLAIN`)
    }
    const rdev = type === 'chr' || type === 'blk' ? decodeRdev(d.u) : { major: 0, minor: 0 }
    const inode: ReaderInode = {
      nid, type, mode: d.mode, uid: d.uid, gid: d.gid, size: d.size, mtime: d.mtime, mtimeNsec: d.mtimeNsec,
      nlink: d.nlink, rdevMajor: rdev.major, rdevMinor: rdev.minor, layout: d.layout, xattrIcount: d.xattrIcount,
      inodeSize: d.inodeSize, compact: d.version === 0, offset, format: d.format, u: d.u, ino: d.ino
    }
    this.inodes.set(nid, inode)
    return inode
  }

  /** The data blocks of a FLAT_PLAIN / FLAT_INLINE inode (directories, symlinks), bounds already checked. */
  dataBlocks (inode: ReaderInode): Buffer[] {
    const { full, tail } = splitData(inode.layout, inode.size)
    const out: Buffer[] = []
    for (let k = 0; k < full; k++) {
      const start = (inode.u + k) * BLOCK_SIZE
      out.push(this.buf.subarray(start, start + dirBlockLength(inode.size, k)))
    }
    if (tail > 0) {
      const start = inode.offset + inode.inodeSize + xattrIbodySize(inode.xattrIcount)
      out.push(this.buf.subarray(start, start + tail))
    }
    return out
  }

  /** Every dirent of a directory, block by block, '.' and '..' included (the checker needs them). */
  rawDirents (nid: number): RawDirent[][] {
    const dir = this.inode(nid)
    if (dir.type !== 'dir') throw new RafsFormatError(`inode nid ${nid} is a ${dir.type}, not a directory`)
    return this.dataBlocks(dir).map((b, k) => parseDirBlock(b, `directory nid ${nid} block ${k}`))
  }

  /** Children of a directory, without '.' and '..'; each dirent's file type is checked against the child's mode. */
  readdir (nid: number): Array<{ name: Buffer, nid: number, fileType: number }> {
    const out: Array<{ name: Buffer, nid: number, fileType: number }> = []
    for (const block of this.rawDirents(nid)) {
      for (const d of block) {
        if (isDot(d.name) || isDotDot(d.name)) continue
        const child = this.inode(d.nid)
        if (d.fileType !== direntTypeOf(child.type)) {
          throw new RafsFormatError(`directory nid ${nid}: entry ${JSON.stringify(d.name.toString('latin1'))} has file type ${d.fileType} but nid ${d.nid} is a ${child.type}`)
        }
        out.push({ name: d.name, nid: d.nid, fileType: d.fileType })
      }
    }
    return out
  }

  /** Looks up one name like the kernel: binary search over blocks by their first name, then inside the block. */
  lookupChild (dirNid: number, name: Buffer): number | undefined {
    const dir = this.inode(dirNid)
    if (dir.type !== 'dir') return undefined
    const blocks = this.dataBlocks(dir)
    let lo = 0
    let hi = blocks.length - 1
    let target = -1
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1
      const ents = parseDirBlock(blocks[mid]!, `directory nid ${dirNid} block ${mid}`)
      if (Buffer.compare(ents[0]!.name, name) <= 0) { target = mid; lo = mid + 1 } else hi = mid - 1
    }
    if (target < 0) return undefined
    const ents = parseDirBlock(blocks[target]!, `directory nid ${dirNid} block ${target}`)
    lo = 0
    hi = ents.length - 1
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1
      const c = Buffer.compare(ents[mid]!.name, name)
      if (c === 0) return ents[mid]!.nid
      if (c < 0) lo = mid + 1; else hi = mid - 1
    }
    return undefined
  }

  /** nid of a '/'-separated path from the root; throws RafsLookupError (ENOENT / ENOTDIR). */
  lookup (path: string): number {
    let nid = this.rootNid
    const parts = path.split('/').filter(p => p !== '' && p !== '.')
    for (let i = 0; i < parts.length; i++) {
      if (this.inode(nid).type !== 'dir') throw new RafsLookupError('ENOTDIR', '/' + parts.slice(0, i).join('/'))
      const next = this.lookupChild(nid, Buffer.from(parts[i]!, 'utf8'))
      if (next === undefined) throw new RafsLookupError('ENOENT', '/' + parts.slice(0, i + 1).join('/'))
      nid = next
    }
    return nid
  }

  readlink (nid: number): Buffer {
    const inode = this.inode(nid)
    if (inode.type !== 'symlink') throw new RafsFormatError(`inode nid ${nid} is a ${inode.type}, not a symlink`)
    return Buffer.concat(this.dataBlocks(inode))
  }

  /** Inline xattrs (§9). Shared xattr ids are skipped: nydus images have none (xattr_blkaddr 0). */
  xattrs (nid: number): Map<string, Buffer> {
    const inode = this.inode(nid)
    const out = new Map<string, Buffer>()
    if (inode.xattrIcount === 0) return out
    const start = inode.offset + inode.inodeSize
    const end = start + xattrIbodySize(inode.xattrIcount)
    const where = `xattrs of nid ${nid} (offset ${start})`
    let pos = start + XATTR_IBODY_HEADER_SIZE + 4 * this.buf.readUInt8(start + 4)
    while (pos < end) {
      if (pos + XATTR_ENTRY_HEADER_SIZE > end) throw new RafsFormatError(`${where}: entry header at ${pos} runs past the xattr body`)
      const nameLen = this.buf.readUInt8(pos)
      const index = this.buf.readUInt8(pos + 1)
      const valueSize = this.buf.readUInt16LE(pos + 2)
      const next = pos + roundUp(XATTR_ENTRY_HEADER_SIZE + nameLen + valueSize, 4)
      if (next > end) throw new RafsFormatError(`${where}: entry at ${pos} (${nameLen}+${valueSize} bytes) runs past the xattr body`)
      const suffix = this.buf.subarray(pos + 4, pos + 4 + nameLen)
      const key = joinXattrName(index, suffix)
      if (key === undefined) throw new RafsFormatError(`${where}: entry at ${pos} has unknown name index ${index}`)
      out.set(key, Buffer.from(this.buf.subarray(pos + 4 + nameLen, pos + 4 + nameLen + valueSize)))
      pos = next
    }
    return out
  }

  /** The ceil(size/chunkSize) chunk slots of a regular file (§12.1). */
  chunkIndexes (nid: number): ChunkSlot[] {
    const inode = this.inode(nid)
    if (inode.type !== 'file') throw new RafsFormatError(`inode nid ${nid} is a ${inode.type}, not a regular file`)
    const base = roundUp(inode.offset + inode.inodeSize + xattrIbodySize(inode.xattrIcount), 8)
    const n = Math.ceil(inode.size / this.chunkSize)
    const out: ChunkSlot[] = []
    for (let k = 0; k < n; k++) {
      const s = decodeChunkIndex(this.buf, base + k * CHUNK_INDEX_SIZE)
      const blob = this.blobEntries[s.blobIndex]
      if (blob === undefined) throw new RafsFormatError(`inode nid ${nid} chunk slot ${k} (offset ${base + k * CHUNK_INDEX_SIZE}): device id ${s.deviceId} names no blob (${this.blobEntries.length} blobs)`)
      if (s.ciIndex >= blob.chunkCount) throw new RafsFormatError(`inode nid ${nid} chunk slot ${k}: ci index ${s.ciIndex} >= blob ${s.blobIndex} chunk_count ${blob.chunkCount}`)
      out.push({ blobIndex: s.blobIndex, ciIndex: s.ciIndex, blkaddr: s.blkaddr })
    }
    return out
  }

  /** Raw chunk-table entries with their offsets, for the checker. */
  * chunkTableEntries (): Generator<{ offset: number, info: ChunkInfo, flags: number }> {
    const { chunkTableOffset: off, chunkTableSize: size } = this.ext
    for (let p = off; p + CHUNK_INFO_SIZE <= off + size; p += CHUNK_INFO_SIZE) {
      let e
      try { e = decodeChunkInfo(this.buf, p) } catch (err) { throw new RafsFormatError(`chunk table entry at offset ${p}: ${(err as Error).message}`) }
      const info: ChunkInfo = {
        digest: e.digest, blobIndex: e.blobIndex, index: e.index, compressedOffset: e.compressedOffset, compressedSize: e.compressedSize,
        uncompressedOffset: e.uncompressedOffset, uncompressedSize: e.uncompressedSize, compressed: (e.flags & ChunkFlags.COMPRESSED) !== 0, fileOffset: e.fileOffset
      }
      if ((e.flags & ChunkFlags.HAS_CRC32) !== 0) info.crc32 = e.crc32
      yield { offset: p, info, flags: e.flags }
    }
  }

  /**
   * The chunk-table entry for (blob, ci index), and when `blkaddr` is given, for that exact slot as nydus keys it.
   * One object per entry, so deduplicated chunks are shared.
   */
  chunkInfo (blobIndex: number, ciIndex: number, blkaddr?: number): ChunkInfo {
    const table = this.chunkTableByKey()
    let info = table.first.get(chunkKey(blobIndex, ciIndex))
    if (info !== undefined && blkaddr !== undefined && info.uncompressedOffset / BLOCK_SIZE !== blkaddr) {
      info = table.otherSlots.get(`${blobIndex}/${ciIndex}/${blkaddr}`)
    }
    if (info === undefined) throw new RafsFormatError(`failed to get chunk info for chunk ${blobIndex}/${ciIndex}${blkaddr === undefined ? '' : '/' + blkaddr} in the chunk table`)
    const blob = this.blobEntries[blobIndex]
    if (blob === undefined || info.uncompressedSize === 0 || info.uncompressedSize > this.chunkSize || info.uncompressedOffset % BLOCK_SIZE !== 0) {
      throw new RafsFormatError(`chunk ${blobIndex}/${ciIndex}: chunk-table entry is invalid (uncompressed ${info.uncompressedSize} bytes at ${info.uncompressedOffset})`)
    }
    return info
  }

  /**
   * Every distinct (blob, ci index) of the chunk table once, as `chunkInfo` answers it (a deduplicated chunk
   * appears once): what a mount walks to know the chunks its files reference, without decoding the table again.
   */
  * chunkInfos (): Generator<ChunkInfo> {
    for (const info of this.chunkTableByKey().first.values()) yield this.chunkInfo(info.blobIndex, info.index)
  }

  /**
   * The chunk table by (blob, ci index), decoded once: a mount builds it for every chunk of the image while a
   * container waits, so numeric keys; the rare entry whose (blob, ci index) repeats at another slot is kept by
   * its exact key.
   */
  private chunkTableByKey (): { first: Map<number, ChunkInfo>, otherSlots: Map<string, ChunkInfo> } {
    if (this.chunkTable !== undefined) return this.chunkTable
    const first = new Map<number, ChunkInfo>()
    const otherSlots = new Map<string, ChunkInfo>()
    for (const { info } of this.chunkTableEntries()) {
      const k = chunkKey(info.blobIndex, info.index)
      const had = first.get(k)
      if (had === undefined) first.set(k, info)
      else if (had.uncompressedOffset !== info.uncompressedOffset) {
        const exact = `${info.blobIndex}/${info.index}/${info.uncompressedOffset / BLOCK_SIZE}`
        if (!otherSlots.has(exact)) otherSlots.set(exact, info)
      }
    }
    return (this.chunkTable = { first, otherSlots })
  }

  /** The chunks of file `nid` behind [offset, offset+length), clamped at EOF. */
  mapRange (nid: number, offset: number, length: number): MappedPiece[] {
    const inode = this.inode(nid)
    if (inode.type !== 'file') throw new RafsFormatError(`inode nid ${nid} is a ${inode.type}, not a regular file`)
    const end = Math.min(inode.size, offset + length)
    if (offset < 0 || length < 0 || offset >= end) return []
    const slots = this.chunkIndexes(nid)
    const cs = this.chunkSize
    const out: MappedPiece[] = []
    for (let k = Math.floor(offset / cs); k * cs < end; k++) {
      const s = slots[k]!
      const chunk = this.chunkInfo(s.blobIndex, s.ciIndex, s.blkaddr)
      const from = Math.max(offset, k * cs)
      const to = Math.min(end, (k + 1) * cs)
      const chunkOffset = from - k * cs
      if (chunkOffset + (to - from) > chunk.uncompressedSize) {
        throw new RafsFormatError(`inode nid ${nid} chunk ${k}: chunk ${s.blobIndex}/${s.ciIndex} holds ${chunk.uncompressedSize} bytes, the file needs ${chunkOffset + to - from}`)
      }
      out.push({ chunk, chunkOffset, length: to - from, fileOffset: from })
    }
    return out
  }

  /** The whole tree in model form (hard links share one object; loops are a RafsFormatError). */
  toImage (): RafsImage {
    return buildImage(this)
  }
}

/** Full blocks and inline tail bytes of a FLAT_PLAIN / FLAT_INLINE inode. */
function splitData (layout: number, size: number): { full: number, tail: number } {
  const nblocks = Math.ceil(size / BLOCK_SIZE)
  if (layout !== InodeLayout.FLAT_INLINE || nblocks === 0) return { full: nblocks, tail: 0 }
  return { full: nblocks - 1, tail: size - (nblocks - 1) * BLOCK_SIZE }
}

/** Blob-table entry → model form (header validation already guaranteed known algorithm codes). */
export function blobInfoOf (e: BlobEntry): RafsBlobInfo {
  return {
    blobId: e.blobId,
    compressor: compressorOfCode(e.compressionAlgo) ?? 'none',
    digester: digesterOfCode(e.digestAlgo) ?? 'blake3',
    chunkSize: e.chunkSize,
    chunkCount: e.chunkCount,
    compressedSize: e.compressedSize,
    uncompressedSize: e.uncompressedSize,
    features: e.features,
    ciCompressor: compressorOfCode(e.ciCompressor) ?? 'none',
    ciOffset: e.ciOffset,
    ciCompressedSize: e.ciCompressedSize,
    ciUncompressedSize: e.ciUncompressedSize,
    blobTocSize: e.blobTocSize,
    blobTocDigest: e.blobTocDigest
  }
}

const chunkKey = (blobIndex: number, ci: number): number => blobIndex * 0x1_0000_0000 + ci
