/**
 * How an image's file bytes split between large and small regular files: the kernel mounts read the two best in
 * different ways (a blob file's readahead serves the next small files of the build order; large files read fastest
 * with direct I/O, one page cache instead of two: `peer/mount/kernel-mount.ts`). Hard links count once.
 *
 * The walk decodes every inode of the tree (~0.3 s for the Linux source's 83k entries), so it yields to the event
 * loop every few milliseconds, walks a directory linked twice once, and stops as soon as the answer to `largeShareAtLeast` is certain.
 *
 * @example
 * ```ts
 * const p = await dataProfile(reader, { largeShareAtLeast: 0.8 })
 * if (p.largeShare >= 0.8) ... // mostly large files
 * ```
 */
import type { RafsReader } from './reader.js'

/** a file of this many bytes or more is a large file (1 MiB, RAFS's default chunk size) */
export const LARGE_FILE_BYTES = 1 << 20
/** the walk yields to the event loop after this long */
const SLICE_MS = 8

export interface DataProfile {
  /** regular files seen (hard links once) */
  files: number
  /** their bytes */
  bytes: number
  /** bytes of those of at least `largeFileBytes` */
  largeBytes: number
  /** largeBytes / bytes (0 for an image without file bytes) */
  largeShare: number
  /** the walk stopped early: `largeShareAtLeast` was decided by the blob bytes left to see */
  partial: boolean
}

export interface DataProfileOptions {
  /** default {@link LARGE_FILE_BYTES} */
  largeFileBytes?: number
  /**
   * stop once small files alone hold more than 1 − this share of the blobs' plaintext bytes (the share can then no
   * longer reach it); absent: walk the whole tree
   */
  largeShareAtLeast?: number
  signal?: AbortSignal
}

export async function dataProfile (reader: RafsReader, opts: DataProfileOptions = {}): Promise<DataProfile> {
  const large = opts.largeFileBytes ?? LARGE_FILE_BYTES
  // the files' plaintext is at least what the blobs hold once (chunks shared between files are stored once), so
  // small bytes above this bound make a large share ≥ largeShareAtLeast impossible
  const blobBytes = reader.blobs.reduce((n, b) => n + b.uncompressedSize, 0)
  const smallLimit = opts.largeShareAtLeast === undefined ? Infinity : (1 - opts.largeShareAtLeast) * blobBytes
  let files = 0
  let bytes = 0
  let largeBytes = 0
  const seen = new Set<number>()
  // a hostile bootstrap may link a directory into itself: each is walked once
  const walked = new Set<number>([reader.rootNid])
  const dirs = [reader.rootNid]
  let slice = performance.now()
  const result = (partial: boolean): DataProfile => ({ files, bytes, largeBytes, largeShare: bytes > 0 ? largeBytes / bytes : 0, partial })
  while (dirs.length > 0) {
    for (const e of reader.readdir(dirs.pop()!)) {
      const inode = reader.inode(e.nid)
      if (inode.type === 'dir') {
        if (!walked.has(e.nid)) { walked.add(e.nid); dirs.push(e.nid) }
      }
      else if (inode.type === 'file' && !seen.has(e.nid)) {
        seen.add(e.nid)
        files++
        bytes += inode.size
        if (inode.size >= large) largeBytes += inode.size
      }
    }
    if (bytes - largeBytes > smallLimit) return result(true)
    if (performance.now() - slice > SLICE_MS) {
      await new Promise(resolve => setImmediate(resolve))
      opts.signal?.throwIfAborted()
      slice = performance.now()
    }
  }
  return result(false)
}
