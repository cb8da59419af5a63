/**
 * A mount's access log: the image's regular files whose data was read, in first-read order — what
 * `rafspeer access-list` prints and `rafspeer convert --prefetch-files` takes back (Nydus's access pattern /
 * optimizer input). Per-file FUSE tells it files (`fileRead(nid)`); erofs-lazy sees only blob view ranges, so it is
 * told chunks (`chunkRead(blobIndex, ci)`) and maps them back to the files holding them through the bootstrap when
 * asked. A chunk shared by several files (deduplicated content) names them all, at its first read.
 *
 * Bounded by the image: each file and each chunk is recorded once.
 *
 * @example
 * ```ts
 * const log = new AccessLog(reader)
 * log.fileRead(reader.lookup('/usr/bin/python3.11'))
 * log.paths() // ['/usr/bin/python3.11']
 * ```
 */
import type { RafsReader } from '../../rafs/index.js'

/** (blob index, ci) as one number: blob indexes are small, ci < 2^32 */
const chunkKey = (blobIndex: number, ci: number): number => blobIndex * 0x1_0000_0000 + ci

type LogReader = Pick<RafsReader, 'rootNid' | 'inode' | 'readdir' | 'mapRange'>

export class AccessLog {
  /** files (FUSE) and chunks (erofs-lazy) in first-read order; a chunk entry is `-1 - key` */
  private readonly order: number[] = []
  private readonly seenFiles = new Set<number>()
  private readonly seenChunks = new Set<number>()
  /** built on the first `paths()`: a regular file's first path, and the files of each chunk */
  private index: { pathOf: Map<number, string>, filesOf: Map<number, number[]> } | undefined

  constructor (private readonly reader: LogReader) {}

  /** How many distinct files and chunks were recorded. */
  get size (): number { return this.order.length }

  /** A read of file `nid` (per-file FUSE). */
  fileRead (nid: number): void {
    if (this.seenFiles.has(nid)) return
    this.seenFiles.add(nid)
    this.order.push(nid)
  }

  /** A read of chunk `ci` of blob `blobIndex` (erofs-lazy's blob files). */
  chunkRead (blobIndex: number, ci: number): void {
    const key = chunkKey(blobIndex, ci)
    if (this.seenChunks.has(key)) return
    this.seenChunks.add(key)
    this.order.push(-1 - key)
  }

  /** The absolute paths of the files read, in first-read order, each once. */
  paths (): string[] {
    const { pathOf, filesOf } = this.index ??= this.buildIndex()
    const out: string[] = []
    const listed = new Set<number>()
    const add = (nid: number): void => {
      if (listed.has(nid)) return
      listed.add(nid)
      const p = pathOf.get(nid)
      if (p !== undefined) out.push(p)
    }
    for (const e of this.order) {
      if (e >= 0) add(e)
      else for (const nid of filesOf.get(-1 - e) ?? []) add(nid)
    }
    return out
  }

  /** One walk of the tree: first paths of regular files, and which files hold each chunk. */
  private buildIndex (): { pathOf: Map<number, string>, filesOf: Map<number, number[]> } {
    const r = this.reader
    const pathOf = new Map<number, string>()
    const filesOf = new Map<number, number[]>()
    const visited = new Set<number>()
    const stack: Array<{ nid: number, path: string }> = [{ nid: r.rootNid, path: '' }]
    while (stack.length > 0) {
      const { nid, path } = stack.pop()!
      if (visited.has(nid)) continue // hard links: the first path found names the file
      visited.add(nid)
      const ino = r.inode(nid)
      if (ino.type === 'dir') {
        const entries = r.readdir(nid)
        // reversed: the stack then visits names in directory order
        for (let i = entries.length - 1; i >= 0; i--) {
          // utf8, as `RafsReader.lookup` takes them; a name with a newline cannot be a line of a path list
          const n = entries[i]!.name.toString('utf8')
          if (n !== '.' && n !== '..' && !n.includes('\n')) stack.push({ nid: entries[i]!.nid, path: `${path}/${n}` })
        }
      } else if (ino.type === 'file') {
        pathOf.set(nid, path)
        if (ino.size === 0) continue
        for (const p of r.mapRange(nid, 0, ino.size)) {
          const key = chunkKey(p.chunk.blobIndex, p.chunk.index)
          const files = filesOf.get(key)
          if (files === undefined) filesOf.set(key, [nid])
          else if (files[files.length - 1] !== nid) files.push(nid)
        }
      }
    }
    return { pathOf, filesOf }
  }
}
