/**
 * Directory data for the bootstrap writer (§11): sorts a directory's entries, `.` and `..` included, by raw name
 * bytes and packs them into self-contained 4096 B dirent blocks.
 *
 * Packing happens before nids are known (a dirent's size does not depend on its nid), so the writer can size
 * every directory, place the inodes, and only then fill the nids in with `encodeDirBlocks`.
 */
import { BLOCK_SIZE, DIRENT_SIZE, FileTypeCode, encodeDirent } from './layout.js'
import type { RafsInode } from './model.js'

export interface DirEntry {
  /** latin1 string of the name bytes; JS `<` on these is memcmp order */
  key: string
  inode: RafsInode
}

export interface PackedDir {
  /** entries in on-disk order, split into blocks */
  blocks: DirEntry[][]
  /** bytes used in the last block (the others count as full 4096 B) */
  lastUsed: number
  /** i_size */
  size: number
}

/** Sorts `.`/`..` in among the children and packs them per block. `children` must already be sorted by key. */
export function packDirectory (self: RafsInode, parent: RafsInode, children: DirEntry[]): PackedDir {
  const dots: DirEntry[] = [{ key: '.', inode: self }, { key: '..', inode: parent }]
  const all = mergeSorted(children, dots)
  const blocks: DirEntry[][] = []
  let cur: DirEntry[] = []
  let used = 0
  for (const e of all) {
    const need = DIRENT_SIZE + e.key.length
    if (used + need > BLOCK_SIZE) {
      blocks.push(cur)
      cur = []
      used = 0
    }
    cur.push(e)
    used += need
  }
  blocks.push(cur)
  return { blocks, lastUsed: used, size: BLOCK_SIZE * (blocks.length - 1) + used }
}

function mergeSorted (a: DirEntry[], b: DirEntry[]): DirEntry[] {
  const out: DirEntry[] = []
  let i = 0
  let j = 0
  while (i < a.length || j < b.length) {
    if (j >= b.length || (i < a.length && a[i]!.key < b[j]!.key)) out.push(a[i++]!)
    else out.push(b[j++]!)
  }
  return out
}

/**
 * Writes every block of `dir` into `out`: block k at `blockOffset(k)`. Non-final blocks get the full 4096 B
 * (already zero in `out`); the final one exactly `lastUsed` bytes, since the kernel bounds its last name by i_size.
 */
export function encodeDirBlocks (dir: PackedDir, out: Buffer, blockOffset: (k: number) => number): void {
  dir.blocks.forEach((entries, k) => {
    const base = blockOffset(k)
    let nameoff = DIRENT_SIZE * entries.length
    entries.forEach((e, n) => {
      const nid = e.inode.nid
      if (nid === undefined) throw new Error(`internal: dirent ${JSON.stringify(e.key)} points at an unplaced inode`)
      encodeDirent({ nid, nameoff, fileType: FileTypeCode[e.inode.type] }, out, base + DIRENT_SIZE * n)
      out.write(e.key, base + nameoff, 'latin1')
      nameoff += e.key.length
    })
  })
}
