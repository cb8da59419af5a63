/**
 * The in-memory image model shared by every producer and consumer of RAFS metadata:
 * sources (directory walk, tar stream) and the reader produce it; the bootstrap writer, merge and unpack consume it.
 *
 * Hard links are one `RafsInode` object reached under several names; `nlink` is derived by the writer from that.
 * Names are raw bytes (Linux names need not be UTF-8): directory maps are keyed by the latin1 string of the
 * bytes, so JS string order (`<`) is exactly the byte order the on-disk dirents need.
 */
import type { Compressor, Digester } from './layout.js'

export type FileType = 'file' | 'dir' | 'symlink' | 'chr' | 'blk' | 'fifo' | 'sock'

/** One distinct chunk of a data blob. Deduplicated chunks are the same object in several files' lists. */
export interface ChunkInfo {
  /** blake3 or sha256 of the uncompressed bytes (32 B) */
  digest: Buffer
  /** position of the blob in the image's blob table */
  blobIndex: number
  /** index in that blob's ci array */
  index: number
  compressedOffset: number
  compressedSize: number
  /** 4096-aligned offset in the blob's uncompressed view */
  uncompressedOffset: number
  uncompressedSize: number
  /** true when the stored bytes are compressed (stored size differs from the plain size) */
  compressed: boolean
  /** offset in the first file that produced the chunk (informational) */
  fileOffset: number
  /** CRC-32C of the uncompressed bytes, when known */
  crc32?: number
}

export interface RafsInode {
  type: FileType
  /** full st_mode: type bits and permission bits (incl. setuid/setgid/sticky) */
  mode: number
  uid: number
  gid: number
  mtime: number
  mtimeNsec: number
  /** regular files: byte length. Directories and symlinks: set by the writer/reader from the layout. */
  size: number
  /** chr/blk only */
  rdevMajor: number
  rdevMinor: number
  /** full names ("user.foo", "trusted.overlay.opaque", "system.posix_acl_access") → value */
  xattrs: Map<string, Buffer>
  /** symlink target bytes (no NUL) */
  target?: Buffer
  /** regular files: ceil(size / chunkSize) entries, in file order */
  chunks?: ChunkInfo[]
  /** directories: latin1(name bytes) → child. Never contains "." or "..". */
  children?: Map<string, RafsInode>
  /** the nid, once written or when read from a bootstrap */
  nid?: number
  /**
   * Directories of a layer read from a tar: true when the layer has no entry of its own for it (it holds entries
   * below it, or it is a root without `./`). Its attributes are placeholders, so a merge keeps the lower layer's,
   * as `tar -x` of the layer over the lower ones would. Never written to a bootstrap.
   */
  implicit?: boolean
}

/** A data blob of the image: everything the blob table needs (§6). */
export interface RafsBlobInfo {
  /** lowercase hex sha256 of the blob file */
  blobId: string
  compressor: Compressor
  digester: Digester
  chunkSize: number
  chunkCount: number
  /** blob file size */
  compressedSize: number
  /** size of the uncompressed view (4096 multiple) */
  uncompressedSize: number
  features: number
  ciCompressor: Compressor
  ciOffset: number
  ciCompressedSize: number
  ciUncompressedSize: number
  blobTocSize: number
  /** sha256 of ToC entries + ToC tar header, 32 B (zeros: not verified) */
  blobTocDigest: Buffer
}

export interface RafsImage {
  root: RafsInode
  /** blob table, in order; ChunkInfo.blobIndex points here */
  blobs: RafsBlobInfo[]
  chunkSize: number
  compressor: Compressor
  digester: Digester
  /** inodes to prefetch, written to the bootstrap's prefetch table */
  prefetch?: RafsInode[]
}

export function newInode (type: FileType, init: Partial<RafsInode> = {}): RafsInode {
  const typeBits: Record<FileType, number> = {
    file: 0o100000, dir: 0o040000, symlink: 0o120000, chr: 0o020000, blk: 0o060000, fifo: 0o010000, sock: 0o140000
  }
  const inode: RafsInode = {
    type,
    mode: typeBits[type] | (type === 'dir' ? 0o755 : type === 'symlink' ? 0o777 : 0o644),
    uid: 0,
    gid: 0,
    mtime: 0,
    mtimeNsec: 0,
    size: 0,
    rdevMajor: 0,
    rdevMinor: 0,
    xattrs: new Map(),
    ...init
  }
  if (type === 'dir' && inode.children === undefined) inode.children = new Map()
  if (type === 'file' && inode.chunks === undefined) inode.chunks = []
  return inode
}

/** st_mode type bits → FileType, or undefined for an unknown type. */
export function fileTypeOfMode (mode: number): FileType | undefined {
  switch (mode & 0o170000) {
    case 0o100000: return 'file'
    case 0o040000: return 'dir'
    case 0o120000: return 'symlink'
    case 0o020000: return 'chr'
    case 0o060000: return 'blk'
    case 0o010000: return 'fifo'
    case 0o140000: return 'sock'
    default: return undefined
  }
}

export const nameKey = (name: Buffer | string): string =>
  typeof name === 'string' ? Buffer.from(name, 'utf8').toString('latin1') : name.toString('latin1')
export const nameBytes = (key: string): Buffer => Buffer.from(key, 'latin1')
/** A display form of a name key (UTF-8 decoded; invalid bytes shown as U+FFFD). */
export const displayName = (key: string): string => nameBytes(key).toString('utf8')

/** Depth-first walk: parents before children, children in byte order. Hard links are visited once per name. */
export function * walk (root: RafsInode, prefix = ''): Generator<[path: string, inode: RafsInode, parent: RafsInode | undefined]> {
  const stack: Array<[string, RafsInode, RafsInode | undefined]> = [[prefix === '' ? '/' : prefix, root, undefined]]
  while (stack.length > 0) {
    const [path, inode, parent] = stack.pop()!
    yield [path, inode, parent]
    if (inode.children !== undefined) {
      const keys = [...inode.children.keys()].sort()
      for (let i = keys.length - 1; i >= 0; i--) {
        const k = keys[i]!
        stack.push([(path === '/' ? '' : path) + '/' + displayName(k), inode.children.get(k)!, inode])
      }
    }
  }
}
