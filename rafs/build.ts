/**
 * Builds a single-layer RAFS v6 image: runs a tree source into one data blob, then writes the bootstrap
 * (docs/FORMAT.md §18). On failure nothing half-built stays behind under a real name.
 *
 * @example
 * ```ts
 * const res = await buildFromDirectory('/srv/rootfs', { bootstrap: 'out/image.boot', blobDir: 'out/blobs' })
 * console.log(res.blobs[0]?.blobId, res.stats.chunks)
 * ```
 */
import { performance } from 'node:perf_hooks'
import { mkdir, rm } from 'node:fs/promises'
import { dirname, join, posix } from 'node:path'
import { BlobWriter } from './blob-writer.js'
import { writeBootstrap } from './bootstrap-writer.js'
import { DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, type Compressor, type Digester } from './layout.js'
import { nameKey, walk, type RafsImage, type RafsInode } from './model.js'
import { directorySource } from './source-dir.js'
import type { TreeSource } from './source.js'
import { RafspeerError } from '../base/index.js'

export class BuildError extends RafspeerError.coded('RAFSPEER_ERR_BUILD') {}

export interface BuildOptions {
  bootstrap: string
  blobDir: string
  /** when set, the blob's uncompressed view `<blob_id>.blob.data` is written here (what the kernel mounts) */
  blobCacheDir?: string
  compressor?: Compressor
  digester?: Digester
  chunkSize?: number
  /** absolute paths inside the image; resolved to inodes for the bootstrap's prefetch table */
  prefetchFiles?: string[]
  signal?: AbortSignal
}

export interface BuildResult {
  bootstrap: string
  blobs: Array<{ blobId: string, path: string, size: number, uncompressedSize: number, chunkCount: number, viewPath?: string }>
  image: RafsImage
  stats: {
    inodes: number
    files: number
    dirs: number
    symlinks: number
    others: number
    dataBytes: number
    chunks: number
    dedupedChunks: number
    elapsedMs: number
  }
}

function checkChunkSize (chunkSize: number): void {
  if (!Number.isInteger(chunkSize) || chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE ||
      (chunkSize & (chunkSize - 1)) !== 0) {
    throw new BuildError(`chunk size ${chunkSize} is invalid: it must be a power of two from 0x1000 (4 KiB) to 0x1000000 (16 MiB)`)
  }
}

/**
 * Resolves image paths ("/usr/bin/sh") to inodes for a prefetch table, in list order, each once, without following
 * symlinks; "/" is the whole image. A path that is not absolute throws; paths not in the image come back in
 * `missing` (a list recorded on one image version may name files another lacks).
 */
export function resolvePrefetchPaths (root: RafsInode, paths: string[]): { inodes: RafsInode[], missing: string[] } {
  const inodes: RafsInode[] = []
  const missing: string[] = []
  const seen = new Set<RafsInode>()
  for (const p of paths) {
    if (!p.startsWith('/')) throw new BuildError(`prefetch path ${JSON.stringify(p)} is not absolute`)
    let node: RafsInode | undefined = root
    for (const part of posix.normalize(p).split('/').filter(s => s !== '')) {
      node = node.children?.get(nameKey(part))
      if (node === undefined) break
    }
    if (node === undefined) missing.push(p)
    else if (!seen.has(node)) { seen.add(node); inodes.push(node) }
  }
  return { inodes, missing }
}

function resolvePrefetch (root: RafsInode, paths: string[]): RafsInode[] {
  const { inodes, missing } = resolvePrefetchPaths(root, paths)
  if (missing.length > 0) throw new BuildError(`prefetch path ${missing[0]!} does not exist in the image`)
  return inodes
}

function treeStats (root: RafsInode): Omit<BuildResult['stats'], 'chunks' | 'dedupedChunks' | 'elapsedMs'> & { chunkRefs: number } {
  const s = { inodes: 0, files: 0, dirs: 0, symlinks: 0, others: 0, dataBytes: 0, chunkRefs: 0 }
  const seen = new Set<RafsInode>()
  for (const [, inode] of walk(root)) {
    if (seen.has(inode)) continue // hard links count once
    seen.add(inode)
    s.inodes++
    if (inode.type === 'file') {
      s.files++
      s.dataBytes += inode.size
      s.chunkRefs += inode.chunks?.length ?? 0
    } else if (inode.type === 'dir') s.dirs++
    else if (inode.type === 'symlink') s.symlinks++
    else s.others++
  }
  return s
}

export async function buildImage (source: TreeSource, opts: BuildOptions): Promise<BuildResult> {
  const started = performance.now()
  const { signal } = opts
  const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE
  const compressor = opts.compressor ?? 'zstd'
  const digester = opts.digester ?? 'blake3'
  checkChunkSize(chunkSize)
  signal?.throwIfAborted()

  await mkdir(opts.blobDir, { recursive: true })
  if (opts.blobCacheDir !== undefined) await mkdir(opts.blobCacheDir, { recursive: true })
  await mkdir(dirname(opts.bootstrap), { recursive: true })

  const writer = new BlobWriter({ blobDir: opts.blobDir, blobCacheDir: opts.blobCacheDir, compressor, digester, chunkSize, blobIndex: 0 })
  try {
    const root = await source(writer, { signal })
    signal?.throwIfAborted()
    const prefetch = opts.prefetchFiles !== undefined && opts.prefetchFiles.length > 0
      ? resolvePrefetch(root, opts.prefetchFiles)
      : undefined
    const blob = await writer.finish()
    signal?.throwIfAborted()
    const image: RafsImage = { root, blobs: blob !== undefined ? [blob] : [], chunkSize, compressor, digester, ...(prefetch !== undefined ? { prefetch } : {}) }
    await writeBootstrap(image, opts.bootstrap)

    const { chunkRefs, ...counts } = treeStats(root)
    const chunks = blob?.chunkCount ?? 0
    const outputs = writer.outputs
    return {
      bootstrap: opts.bootstrap,
      blobs: blob === undefined
        ? []
        : [{
            blobId: blob.blobId,
            path: outputs?.blobPath ?? join(opts.blobDir, blob.blobId),
            size: blob.compressedSize,
            uncompressedSize: blob.uncompressedSize,
            chunkCount: blob.chunkCount,
            ...(outputs?.viewPath !== undefined ? { viewPath: outputs.viewPath } : {})
          }],
      image,
      stats: { ...counts, chunks, dedupedChunks: Math.max(0, chunkRefs - chunks), elapsedMs: performance.now() - started }
    }
  } catch (err) {
    await writer.abort().catch(() => {})
    // only files this build created: a blob that already existed may belong to another image
    for (const p of writer.outputs?.created ?? []) await rm(p, { force: true }).catch(() => {})
    if (err instanceof Error && 'code' in err) throw err
    throw new BuildError(`building ${opts.bootstrap} failed: ${(err as Error).message}`, { cause: err })
  }
}

export async function buildFromDirectory (dir: string, opts: BuildOptions): Promise<BuildResult> {
  return await buildImage(directorySource(dir), opts)
}
