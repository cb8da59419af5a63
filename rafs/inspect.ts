/**
 * `rafspeer inspect`: a readable (and JSON) summary of a bootstrap: superblock, flags, blobs, counts, and on
 * request the whole tree with each file's chunks.
 */
import type { RafsImage, RafsInode } from './model.js'
import { walk } from './model.js'
import { RafsFlags, BlobFeatures } from './layout.js'
import { RafsReader } from './reader.js'

export interface InspectReport {
  path: string
  superblock: {
    magic: string
    featureCompat: string
    featureIncompat: string
    blockSize: number
    rootNid: number
    inodes: number
    blocks: number
    metaBlkaddr: number
    extraDevices: number
  }
  flags: { value: string, names: string[] }
  chunkSize: number
  compressor: string
  digester: string
  blobs: Array<{
    index: number
    blobId: string
    chunkCount: number
    compressedSize: number
    uncompressedSize: number
    features: { value: string, names: string[] }
    ciCompressor: string
    ciOffset: number
    ciCompressedSize: number
    ciUncompressedSize: number
    tocSize: number
  }>
  counts: { files: number, dirs: number, symlinks: number, devices: number, fifos: number, sockets: number, hardlinks: number, xattrs: number, chunkSlots: number, distinctChunks: number, dataBytes: number }
  prefetch: string[]
  tree?: InspectTreeEntry[]
}

export interface InspectTreeEntry {
  path: string
  nid: number
  type: string
  mode: string
  uid: number
  gid: number
  size: number
  mtime: number
  nlink?: number
  target?: string
  rdev?: string
  xattrs?: Record<string, string>
  chunks?: Array<{ blob: number, ci: number, digest: string, compressedOffset: number, compressedSize: number, uncompressedOffset: number, uncompressedSize: number }>
}

const hex = (n: number): string => '0x' + n.toString(16)

function flagNames (value: number, table: Record<string, number>): string[] {
  return Object.entries(table).filter(([, bit]) => (value & bit) !== 0).map(([name]) => name)
}

export async function inspectBootstrap (path: string, opts: { tree?: boolean } = {}): Promise<InspectReport> {
  const reader = await RafsReader.open(path)
  const image = reader.toImage()
  const sb = reader.superblock
  return {
    path,
    superblock: {
      magic: hex(sb.magic),
      featureCompat: hex(sb.featureCompat),
      featureIncompat: hex(sb.featureIncompat),
      blockSize: 1 << sb.blkszbits,
      rootNid: sb.rootNid,
      inodes: sb.inos,
      blocks: sb.blocks,
      metaBlkaddr: sb.metaBlkaddr,
      extraDevices: sb.extraDevices
    },
    flags: { value: hex(reader.ext.flags), names: flagNames(reader.ext.flags, RafsFlags) },
    chunkSize: image.chunkSize,
    compressor: image.compressor,
    digester: image.digester,
    blobs: image.blobs.map((b, index) => ({
      index,
      blobId: b.blobId,
      chunkCount: b.chunkCount,
      compressedSize: b.compressedSize,
      uncompressedSize: b.uncompressedSize,
      features: { value: hex(b.features), names: flagNames(b.features, BlobFeatures) },
      ciCompressor: b.ciCompressor,
      ciOffset: b.ciOffset,
      ciCompressedSize: b.ciCompressedSize,
      ciUncompressedSize: b.ciUncompressedSize,
      tocSize: b.blobTocSize
    })),
    counts: countTree(image),
    prefetch: prefetchPaths(image),
    tree: opts.tree === true ? treeEntries(image) : undefined
  }
}

function countTree (image: RafsImage): InspectReport['counts'] {
  const c = { files: 0, dirs: 0, symlinks: 0, devices: 0, fifos: 0, sockets: 0, hardlinks: 0, xattrs: 0, chunkSlots: 0, distinctChunks: 0, dataBytes: 0 }
  const seen = new Set<RafsInode>()
  const chunks = new Set<unknown>()
  for (const [, inode] of walk(image.root)) {
    if (seen.has(inode)) { c.hardlinks++; continue }
    seen.add(inode)
    c.xattrs += inode.xattrs.size
    switch (inode.type) {
      case 'file':
        c.files++
        c.dataBytes += inode.size
        c.chunkSlots += inode.chunks?.length ?? 0
        for (const ch of inode.chunks ?? []) chunks.add(ch)
        break
      case 'dir': c.dirs++; break
      case 'symlink': c.symlinks++; break
      case 'chr': case 'blk': c.devices++; break
      case 'fifo': c.fifos++; break
      case 'sock': c.sockets++; break
    }
  }
  c.distinctChunks = chunks.size
  return c
}

function prefetchPaths (image: RafsImage): string[] {
  if (image.prefetch === undefined || image.prefetch.length === 0) return []
  const wanted = new Set(image.prefetch)
  const out: string[] = []
  for (const [path, inode] of walk(image.root)) if (wanted.has(inode)) out.push(path)
  return out
}

function treeEntries (image: RafsImage): InspectTreeEntry[] {
  const out: InspectTreeEntry[] = []
  for (const [path, inode] of walk(image.root)) {
    const e: InspectTreeEntry = {
      path,
      nid: inode.nid ?? -1,
      type: inode.type,
      mode: '0' + inode.mode.toString(8),
      uid: inode.uid,
      gid: inode.gid,
      size: inode.size,
      mtime: inode.mtime
    }
    if (inode.target !== undefined) e.target = inode.target.toString('utf8')
    if (inode.type === 'chr' || inode.type === 'blk') e.rdev = `${inode.rdevMajor}:${inode.rdevMinor}`
    if (inode.xattrs.size > 0) e.xattrs = Object.fromEntries([...inode.xattrs].map(([k, v]) => [k, v.toString('utf8')]))
    if (inode.chunks !== undefined && inode.chunks.length > 0) {
      e.chunks = inode.chunks.map((c) => ({
        blob: c.blobIndex,
        ci: c.index,
        digest: c.digest.toString('hex'),
        compressedOffset: c.compressedOffset,
        compressedSize: c.compressedSize,
        uncompressedOffset: c.uncompressedOffset,
        uncompressedSize: c.uncompressedSize
      }))
    }
    out.push(e)
  }
  return out
}

/** Human-readable form of a report, for terminals. */
export function formatInspect (r: InspectReport): string {
  const lines = [
    `bootstrap      ${r.path}`,
    `superblock     magic ${r.superblock.magic}  compat ${r.superblock.featureCompat}  incompat ${r.superblock.featureIncompat}  block ${r.superblock.blockSize}`,
    `               root nid ${r.superblock.rootNid}  inodes ${r.superblock.inodes}  blocks ${r.superblock.blocks}  meta_blkaddr ${r.superblock.metaBlkaddr}  devices ${r.superblock.extraDevices}`,
    `flags          ${r.flags.value} (${r.flags.names.join(' | ')})`,
    `chunks         ${r.chunkSize} B (${hex(r.chunkSize)}), ${r.compressor}, ${r.digester}`,
    `counts         ${r.counts.files} files, ${r.counts.dirs} dirs, ${r.counts.symlinks} symlinks, ${r.counts.devices} devices, ${r.counts.fifos} fifos, ${r.counts.sockets} sockets, ${r.counts.hardlinks} extra hard links`,
    `data           ${r.counts.dataBytes} B in ${r.counts.chunkSlots} chunk slots, ${r.counts.distinctChunks} distinct chunks`
  ]
  for (const b of r.blobs) {
    lines.push(`blob ${b.index}         ${b.blobId}`)
    lines.push(`               ${b.chunkCount} chunks, ${b.compressedSize} B stored, ${b.uncompressedSize} B uncompressed, features ${b.features.value} (${b.features.names.join(' | ')})`)
  }
  if (r.prefetch.length > 0) lines.push(`prefetch       ${r.prefetch.join(', ')}`)
  for (const e of r.tree ?? []) {
    const extra = e.target !== undefined ? ` -> ${e.target}` : e.rdev !== undefined ? ` ${e.rdev}` : ''
    lines.push(`${e.mode.padStart(8)} ${String(e.uid).padStart(5)} ${String(e.gid).padStart(5)} ${String(e.size).padStart(12)}  nid ${String(e.nid).padStart(6)}  ${e.path}${extra}`)
  }
  return lines.join('\n')
}
