/**
 * Bootstrap → model tree. An explicit stack (no recursion) and a visited set: a hostile image can make a
 * directory its own descendant or list one directory twice, and either must end in a RafsFormatError.
 */
import { RafsFormatError } from './layout.js'
import { nameKey, newInode } from './model.js'
import type { ChunkInfo, RafsImage, RafsInode } from './model.js'
import type { RafsReader } from './reader.js'

/** More inodes than any real image has; stops a crafted bootstrap from fanning out without end. */
export const MAX_INODES = 10_000_000

export function buildImage (r: RafsReader): RafsImage {
  const byNid = new Map<number, RafsInode>()
  const dirPaths = new Map<number, string>()
  const model = (nid: number, path: string): RafsInode => {
    const have = byNid.get(nid)
    if (have !== undefined) {
      if (have.type === 'dir') throw new RafsFormatError(`directory nid ${nid} is reached twice: at ${dirPaths.get(nid) ?? '?'} and at ${path}`)
      return have // a hard link
    }
    if (byNid.size >= MAX_INODES) throw new RafsFormatError(`more than ${MAX_INODES} inodes (at ${path})`)
    const ri = r.inode(nid)
    const inode = newInode(ri.type, {
      mode: ri.mode, uid: ri.uid, gid: ri.gid, mtime: ri.mtime, mtimeNsec: ri.mtimeNsec, size: ri.size,
      rdevMajor: ri.rdevMajor, rdevMinor: ri.rdevMinor, nid
    })
    inode.xattrs = r.xattrs(nid)
    if (ri.type === 'symlink') inode.target = r.readlink(nid)
    if (ri.type === 'file') {
      inode.chunks = r.chunkIndexes(nid).map((s, k) => {
        try {
          return r.chunkInfo(s.blobIndex, s.ciIndex, s.blkaddr)
        } catch (err) {
          throw new RafsFormatError(`${path} (nid ${nid}) chunk ${k}: ${(err as Error).message}`, { cause: err })
        }
      })
    }
    if (ri.type === 'dir') dirPaths.set(nid, path)
    byNid.set(nid, inode)
    return inode
  }
  const root = model(r.rootNid, '/')
  const stack: Array<[RafsInode, number, string]> = [[root, r.rootNid, '/']]
  while (stack.length > 0) {
    const [dir, nid, path] = stack.pop()!
    const children = dir.children!
    for (const ent of r.readdir(nid)) {
      const key = nameKey(ent.name)
      const childPath = (path === '/' ? '' : path) + '/' + ent.name.toString('utf8')
      if (children.has(key)) throw new RafsFormatError(`directory ${path} (nid ${nid}) lists ${JSON.stringify(ent.name.toString('latin1'))} twice`)
      const child = model(ent.nid, childPath)
      children.set(key, child)
      if (child.type === 'dir') stack.push([child, ent.nid, childPath])
    }
  }
  const image: RafsImage = {
    root, blobs: r.blobs.map(b => ({ ...b })), chunkSize: r.chunkSize, compressor: r.compressor, digester: r.digester
  }
  const prefetch = r.prefetchNids.map(n => byNid.get(n)).filter((i): i is RafsInode => i !== undefined)
  if (prefetch.length > 0) image.prefetch = prefetch
  return image
}

/** Distinct chunk objects of a model tree (handy for stats and tests). */
export function distinctChunks (root: RafsInode): Set<ChunkInfo> {
  const out = new Set<ChunkInfo>()
  const stack = [root]
  const seen = new Set<RafsInode>()
  while (stack.length > 0) {
    const i = stack.pop()!
    if (seen.has(i)) continue
    seen.add(i)
    for (const c of i.chunks ?? []) out.add(c)
    for (const c of i.children?.values() ?? []) stack.push(c)
  }
  return out
}
