/**
 * The inline xattr body of an inode (§9) for the bootstrap writer. Shared xattrs are never used: Nydus ignores them.
 */
import { XATTR_ENTRY_HEADER_SIZE, XATTR_IBODY_HEADER_SIZE, roundUp, splitXattrName } from './layout.js'
import type { RafsInode } from './model.js'

/**
 * 12 B header, then entries sorted by (name index, suffix bytes) so equal inputs give equal bytes, each padded
 * to 4 B. Empty when the inode has no xattrs. Throws for a name RAFS cannot store, naming `path`.
 */
export function encodeXattrs (inode: RafsInode, path: string): Buffer {
  if (inode.xattrs.size === 0) return Buffer.alloc(0)
  const entries = [...inode.xattrs].map(([name, value]) => {
    const split = splitXattrName(name)
    if (split === undefined) {
      throw new Error(`${path}: xattr "${name}" cannot be stored in RAFS (only user.*, trusted.*, security.* and system.posix_acl_*)`)
    }
    if (split.suffix.length > 255) throw new Error(`${path}: xattr name "${name}" is too long`)
    if (value.length > 0xffff) throw new Error(`${path}: xattr "${name}" value of ${value.length} bytes (max 65535)`)
    return { ...split, value }
  }).sort((a, b) => a.index - b.index || Buffer.compare(a.suffix, b.suffix))
  let size = XATTR_IBODY_HEADER_SIZE
  for (const e of entries) size += roundUp(XATTR_ENTRY_HEADER_SIZE + e.suffix.length + e.value.length, 4)
  if ((size - XATTR_IBODY_HEADER_SIZE) / 4 + 1 > 0xffff) throw new Error(`${path}: xattrs too large (${size} bytes)`)
  const out = Buffer.alloc(size)
  let off = XATTR_IBODY_HEADER_SIZE
  for (const e of entries) {
    out.writeUInt8(e.suffix.length, off)
    out.writeUInt8(e.index, off + 1)
    out.writeUInt16LE(e.value.length, off + 2)
    e.suffix.copy(out, off + XATTR_ENTRY_HEADER_SIZE)
    e.value.copy(out, off + XATTR_ENTRY_HEADER_SIZE + e.suffix.length)
    off += roundUp(XATTR_ENTRY_HEADER_SIZE + e.suffix.length + e.value.length, 4)
  }
  return out
}
