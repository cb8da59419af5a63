/**
 * `rafspeer check`: every structural rule of spec §2-§13 (the kernel's and the "nydus requires" ones), collected
 * rather than stopping at the first. A broken directory ends the walk of its subtree only.
 *
 * @example
 * const report = await checkImage('image.boot', { blobDir: './blobs' })
 * if (!report.ok) console.error(report.errors.join('\n'))
 */
import { readFile, stat } from 'node:fs/promises'
import { BLOCK_SIZE, BlobFeatures, FileTypeCode, InodeLayout, MAX_SYMLINK_SIZE, RafsFlags, RafsFormatError } from './layout.js'
import type { ChunkInfo } from './model.js'
import { RafsReader, MAX_BOOTSTRAP_SIZE, direntTypeOf } from './reader.js'
import type { ReaderInode } from './reader.js'
import { inspectHeader } from './reader-header.js'
import { isDot, isDotDot } from './reader-dir.js'
import { checkBlobs } from './check-blobs.js'

export interface CheckBlobReport {
  blobId: string
  index: number
  chunkCount: number
  compressedSize: number
  uncompressedSize: number
  features: number
  present?: boolean
  chunksVerified?: number
  sha256Ok?: boolean
  /** chunks verified through `<blobCacheDir>/<id>.blob.data` */
  viewPresent?: boolean
  viewChunksVerified?: number
}

export interface CheckReport {
  ok: boolean
  errors: string[]
  warnings: string[]
  bootstrap: { path: string, size: number, flags: number, chunkSize: number, compressor: string, digester: string, inodes: number, rootNid: number }
  blobs: CheckBlobReport[]
  stats: { files: number, dirs: number, symlinks: number, others: number, hardlinks: number, chunkSlots: number, distinctChunks: number }
}

/** A hostile image could produce millions of identical complaints; the first ones say enough. */
const MAX_MESSAGES = 1000

export class Findings {
  readonly errors: string[] = []
  readonly warnings: string[] = []
  private dropped = 0
  error (m: string): void { if (this.errors.length < MAX_MESSAGES) this.errors.push(m); else this.dropped++ }
  warn (m: string): void { if (this.warnings.length < MAX_MESSAGES) this.warnings.push(m) }
  finish (): void { if (this.dropped > 0) this.errors.push(`... and ${this.dropped} more errors`) }
}

const msg = (err: unknown): string => err instanceof Error ? err.message : String(err)
const show = (name: Buffer): string => JSON.stringify(name.toString('utf8'))

export async function checkImage (bootstrap: string, opts: { blobDir?: string, blobCacheDir?: string } = {}): Promise<CheckReport> {
  const f = new Findings()
  const report: CheckReport = {
    ok: false, errors: f.errors, warnings: f.warnings,
    bootstrap: { path: bootstrap, size: 0, flags: 0, chunkSize: 0, compressor: '', digester: '', inodes: 0, rootNid: 0 },
    blobs: [],
    stats: { files: 0, dirs: 0, symlinks: 0, others: 0, hardlinks: 0, chunkSlots: 0, distinctChunks: 0 }
  }
  const done = (): CheckReport => { f.finish(); report.ok = f.errors.length === 0; return report }
  let buf: Buffer
  try {
    const st = await stat(bootstrap)
    if (st.size > MAX_BOOTSTRAP_SIZE) { f.error(`${bootstrap}: ${st.size} bytes is too large for a bootstrap`); return done() }
    buf = await readFile(bootstrap)
  } catch (err) {
    f.error(`cannot read bootstrap ${bootstrap}: ${msg(err)}`)
    return done()
  }
  report.bootstrap.size = buf.length
  const { header, problems } = inspectHeader(buf)
  for (const p of problems) f.error(p.message)
  if (header === undefined || problems.some(p => p.hard)) return done()
  let r: RafsReader
  try {
    r = RafsReader.fromBuffer(buf, bootstrap)
  } catch (err) {
    f.error(msg(err))
    return done()
  }
  Object.assign(report.bootstrap, { flags: r.flags, chunkSize: r.chunkSize, compressor: r.compressor, digester: r.digester, rootNid: r.rootNid })
  report.blobs = r.blobs.map((b, index) => ({
    blobId: b.blobId, index, chunkCount: b.chunkCount, compressedSize: b.compressedSize, uncompressedSize: b.uncompressedSize, features: b.features
  }))
  const referenced = walkTree(r, f, report)
  checkChunkTable(r, f, referenced)
  const allDigest = r.blobs.length > 0 && r.blobs.every(b => (b.features & BlobFeatures.INLINED_CHUNK_DIGEST) !== 0)
  if (((r.flags & RafsFlags.INLINED_CHUNK_DIGEST) !== 0) !== allDigest) {
    f.warn(`RAFS flag INLINED_CHUNK_DIGEST is ${(r.flags & RafsFlags.INLINED_CHUNK_DIGEST) !== 0 ? 'set' : 'clear'} but ${allDigest ? 'every' : 'not every'} blob has the INLINED_CHUNK_DIGEST feature`)
  }
  if (opts.blobDir !== undefined || opts.blobCacheDir !== undefined) await checkBlobs(r, f, report.blobs, referenced, opts)
  return done()
}

/** Walks the tree from the root; returns the chunks the inodes reference, keyed "blob/ci". */
function walkTree (r: RafsReader, f: Findings, report: CheckReport): Map<string, ChunkInfo> {
  const referenced = new Map<string, ChunkInfo>()
  const names = new Map<number, number>() // nid → number of dirents naming it
  const subdirs = new Map<number, number>()
  const seen = new Map<number, string>() // nid → first path
  const hasXattrFlag = (r.flags & RafsFlags.HAS_XATTR) !== 0
  let xattrWarned = false
  const visit = (nid: number, path: string): ReaderInode | undefined => {
    let ino: ReaderInode
    try { ino = r.inode(nid) } catch (err) { f.error(`${path}: ${msg(err)}`); return undefined }
    try {
      const x = r.xattrs(nid)
      if (x.size > 0 && !hasXattrFlag && !xattrWarned) { f.warn(`${path} has xattrs but the RAFS flag HAS_XATTR is clear: nydusd hides them`); xattrWarned = true }
    } catch (err) { f.error(`${path}: ${msg(err)}`) }
    if (ino.type === 'file') checkFile(r, f, ino, path, referenced, report)
    else if (ino.type === 'symlink') {
      if (ino.size === 0 || ino.size > MAX_SYMLINK_SIZE) f.error(`${path} (nid ${nid}): symlink size ${ino.size} is not in 1..${MAX_SYMLINK_SIZE}`)
      report.stats.symlinks++
    } else if (ino.type === 'dir') report.stats.dirs++
    else {
      if (ino.layout !== InodeLayout.FLAT_PLAIN) f.warn(`${path} (nid ${nid}): ${ino.type} has layout ${ino.layout}, nydus writes FLAT_PLAIN`)
      if (ino.size !== 0) f.error(`${path} (nid ${nid}): ${ino.type} has size ${ino.size}, expected 0`)
      report.stats.others++
    }
    return ino
  }
  const root = visit(r.rootNid, '/')
  if (root === undefined) return referenced
  seen.set(r.rootNid, '/')
  const stack: Array<[number, number, string]> = [[r.rootNid, r.rootNid, '/']]
  while (stack.length > 0) {
    const [nid, parent, path] = stack.pop()!
    let blocks
    try { blocks = r.rawDirents(nid) } catch (err) { f.error(`${path}: ${msg(err)}`); continue }
    let prev: Buffer | undefined
    let dot = false
    let dotdot = false
    for (const [k, block] of blocks.entries()) {
      for (const d of block) {
        if (prev !== undefined && Buffer.compare(prev, d.name) >= 0) f.error(`${path} (nid ${nid}) block ${k}: entry ${show(d.name)} is not sorted after ${show(prev)}`)
        prev = d.name
        if (isDot(d.name) || isDotDot(d.name)) {
          const want = isDot(d.name) ? nid : parent
          if (isDot(d.name)) dot = true; else dotdot = true
          if (d.nid !== want) f.error(`${path} (nid ${nid}): '${d.name.toString()}' points to nid ${d.nid}, expected ${want}`)
          if (d.fileType !== FileTypeCode.dir) f.error(`${path} (nid ${nid}): '${d.name.toString()}' has file type ${d.fileType}, expected ${FileTypeCode.dir}`)
          continue
        }
        const childPath = (path === '/' ? '' : path) + '/' + d.name.toString('utf8')
        names.set(d.nid, (names.get(d.nid) ?? 0) + 1)
        const first = seen.get(d.nid)
        let child: ReaderInode | undefined
        if (first === undefined) {
          seen.set(d.nid, childPath)
          child = visit(d.nid, childPath)
          if (child?.type === 'dir') stack.push([d.nid, nid, childPath])
        } else {
          try { child = r.inode(d.nid) } catch { child = undefined }
          if (child?.type === 'dir') { f.error(`${childPath}: directory nid ${d.nid} is reached twice (also at ${first}): a loop or a directory hard link`); continue }
          if (child !== undefined) report.stats.hardlinks++
        }
        if (child === undefined) continue
        if (d.fileType !== direntTypeOf(child.type)) f.error(`${childPath}: dirent file type ${d.fileType} does not match the inode (nid ${d.nid}, a ${child.type})`)
        if (child.type === 'dir') subdirs.set(nid, (subdirs.get(nid) ?? 0) + 1)
      }
    }
    if (!dot) f.error(`${path} (nid ${nid}): no '.' entry`)
    if (!dotdot) f.error(`${path} (nid ${nid}): no '..' entry`)
  }
  // nlink: names for non-directories, 2 + subdirectories for directories
  for (const [nid, path] of seen) {
    let ino: ReaderInode
    try { ino = r.inode(nid) } catch { continue }
    if (ino.type === 'dir') {
      const want = 2 + (subdirs.get(nid) ?? 0)
      if (ino.nlink !== want) f.warn(`${path} (nid ${nid}): directory nlink ${ino.nlink}, expected ${want}`)
    } else if (ino.nlink !== (names.get(nid) ?? 0)) {
      f.error(`${path} (nid ${nid}): nlink ${ino.nlink} but ${names.get(nid) ?? 0} names refer to it`)
    }
  }
  report.bootstrap.inodes = seen.size
  if (r.superblock.inos !== seen.size) f.warn(`superblock inos is ${r.superblock.inos}, the tree has ${seen.size} inodes`)
  for (const p of r.prefetchNids) if (!seen.has(p)) f.error(`prefetch table names nid ${p}, which is not in the tree`)
  report.stats.distinctChunks = referenced.size
  return referenced
}

function checkFile (r: RafsReader, f: Findings, ino: ReaderInode, path: string, referenced: Map<string, ChunkInfo>, report: CheckReport): void {
  report.stats.files++
  const at = `${path} (nid ${ino.nid})`
  if ((ino.u >>> 16) !== 0) f.warn(`${at}: chunk format high bits 0x${(ino.u >>> 16).toString(16)} are not 0`)
  let slots
  try { slots = r.chunkIndexes(ino.nid) } catch (err) { f.error(`${path}: ${msg(err)}`); return }
  report.stats.chunkSlots += slots.length
  for (const [k, s] of slots.entries()) {
    let c: ChunkInfo
    try { c = r.chunkInfo(s.blobIndex, s.ciIndex, s.blkaddr) } catch (err) { f.error(`${at} chunk slot ${k}: ${msg(err)}`); continue }
    const want = Math.min(r.chunkSize, ino.size - k * r.chunkSize)
    if (c.uncompressedSize !== want) f.error(`${at} chunk slot ${k}: chunk ${s.blobIndex}/${s.ciIndex} has ${c.uncompressedSize} bytes, the file needs ${want}`)
    referenced.set(`${s.blobIndex}/${s.ciIndex}`, c)
  }
}

function checkChunkTable (r: RafsReader, f: Findings, referenced: Map<string, ChunkInfo>): void {
  const keys = new Set<string>()
  try {
    for (const { offset, info, flags } of r.chunkTableEntries()) {
      const at = `chunk table entry at offset ${offset} (chunk ${info.blobIndex}/${info.index})`
      const blob = r.blobs[info.blobIndex]
      if (blob === undefined) { f.error(`${at}: blob_index ${info.blobIndex} names no blob`); continue }
      const key = `${info.blobIndex}/${info.index}/${info.uncompressedOffset / BLOCK_SIZE}`
      if (keys.has(key)) f.error(`${at}: duplicate entry`)
      keys.add(key)
      if (info.index >= blob.chunkCount) f.error(`${at}: index ${info.index} >= chunk_count ${blob.chunkCount}`)
      if (info.uncompressedOffset % BLOCK_SIZE !== 0) f.error(`${at}: uncompressed_offset ${info.uncompressedOffset} is not ${BLOCK_SIZE}-aligned`)
      if (info.uncompressedSize === 0 || info.uncompressedSize > r.chunkSize) f.error(`${at}: uncompressed_size ${info.uncompressedSize} is not in 1..${r.chunkSize}`)
      if (info.uncompressedOffset + info.uncompressedSize > blob.uncompressedSize) f.error(`${at}: uncompressed range ends past the blob's uncompressed_size ${blob.uncompressedSize}`)
      if (info.compressedSize === 0) f.error(`${at}: compressed_size is 0`)
      if (info.compressedOffset + info.compressedSize > blob.compressedSize) f.error(`${at}: compressed range ends past the blob's compressed_size ${blob.compressedSize}`)
      if (!info.compressed && info.compressedSize !== info.uncompressedSize) f.error(`${at}: stored raw but compressed_size ${info.compressedSize} != uncompressed_size ${info.uncompressedSize}`)
      if ((flags & ~0x1d) !== 0) f.warn(`${at}: unknown flags 0x${flags.toString(16)}`)
      if (!referenced.has(`${info.blobIndex}/${info.index}`)) f.warn(`${at}: not referenced by any file`)
    }
  } catch (err) {
    if (!(err instanceof RafsFormatError)) throw err
    f.error(msg(err))
  }
}
