/**
 * Merges per-layer images (bottom to top) into one, with the OCI image-spec layer rules: `.wh.NAME` hides NAME
 * of lower layers, `.wh..wh..opq` hides every lower child of its directory, a directory over a directory
 * merges, anything else replaces. Like `nydus-image merge`, the result keeps every layer's blob.
 *
 * @example
 * ```ts
 * const { blobs } = await mergeBootstraps(['l0.boot', 'l1.boot'], 'image.boot')
 * ```
 * @packageDocumentation
 */
import type { ChunkInfo, RafsBlobInfo, RafsImage, RafsInode } from './model.js'
import { nameKey, walk } from './model.js'
import { RafsReader } from './reader.js'
import { writeBootstrap } from './bootstrap-writer.js'
import { RafspeerError } from '../base/index.js'

export class MergeError extends RafspeerError.coded('RAFSPEER_ERR_MERGE') {}

const WHITEOUT_PREFIX = nameKey('.wh.')
const OPAQUE = nameKey('.wh..wh..opq')

export interface MergeOptions {}

/**
 * The layers are never mutated: the result is built from copies, so a layer (or a reader's cache of it) can be
 * reused. Hard links within a layer stay one inode.
 */
export function mergeLayers (layers: RafsImage[], _opts: MergeOptions = {}): RafsImage {
  const first = layers[0]
  if (first === undefined) throw new MergeError('nothing to merge: no layers given')
  layers.forEach((l, i) => {
    if (l.chunkSize !== first.chunkSize || l.compressor !== first.compressor || l.digester !== first.digester) {
      throw new MergeError(
        `layer ${i} has chunk size ${l.chunkSize}, ${l.compressor}, ${l.digester} but layer 0 has ` +
        `${first.chunkSize}, ${first.compressor}, ${first.digester}: one image needs one chunk size and codec set`)
    }
    if (l.root.type !== 'dir') throw new MergeError(`layer ${i}: the root is not a directory`)
  })

  const blobs: RafsBlobInfo[] = []
  const blobIndexById = new Map<string, number>()
  const chunkBySlot = new Map<string, ChunkInfo>()
  const copies: Array<Map<RafsInode, RafsInode>> = []

  let root: RafsInode | undefined
  for (const [i, layer] of layers.entries()) {
    const remap = layer.blobs.map(b => {
      let idx = blobIndexById.get(b.blobId)
      if (idx === undefined) {
        idx = blobs.length
        blobIndexById.set(b.blobId, idx)
        blobs.push({ ...b, blobTocDigest: Buffer.from(b.blobTocDigest) })
      }
      return idx
    })
    const layerCopies = new Map<RafsInode, RafsInode>()
    copies.push(layerCopies)
    const ctx: LayerContext = { index: i, copies: layerCopies, remapChunk: (c) => remapChunk(c, remap, chunkBySlot, i) }
    if (root === undefined) root = copyTree(layer.root, ctx)
    else applyDir(root, layer.root, ctx)
  }

  const reachable = new Set<RafsInode>()
  for (const [, inode] of walk(root!)) reachable.add(inode)
  const prefetch: RafsInode[] = []
  const seen = new Set<RafsInode>()
  layers.forEach((layer, i) => {
    for (const p of layer.prefetch ?? []) {
      const copy = copies[i]!.get(p)
      if (copy !== undefined && reachable.has(copy) && !seen.has(copy)) {
        seen.add(copy)
        prefetch.push(copy)
      }
    }
  })

  const image: RafsImage = { root: root!, blobs, chunkSize: first.chunkSize, compressor: first.compressor, digester: first.digester }
  if (prefetch.length > 0) image.prefetch = prefetch
  return image
}

interface LayerContext {
  index: number
  /** this layer's inode → its copy (or, for merged dirs, the result dir it merged into) */
  copies: Map<RafsInode, RafsInode>
  remapChunk: (c: ChunkInfo) => ChunkInfo
}

/** One ChunkInfo per (merged blob, ci index), shared by every file that uses that chunk. */
function remapChunk (c: ChunkInfo, remap: number[], bySlot: Map<string, ChunkInfo>, layer: number): ChunkInfo {
  const blobIndex = remap[c.blobIndex]
  if (blobIndex === undefined) throw new MergeError(`layer ${layer}: a chunk points to blob ${c.blobIndex}, which its blob table lacks`)
  const key = `${blobIndex}:${c.index}`
  let out = bySlot.get(key)
  if (out === undefined) {
    out = { ...c, digest: Buffer.from(c.digest), blobIndex }
    bySlot.set(key, out)
  }
  return out
}

const isWhiteout = (key: string): boolean => key.startsWith(WHITEOUT_PREFIX)

/** Copies a layer subtree that has nothing below it: its whiteouts hide nothing and are simply dropped. */
function copyTree (inode: RafsInode, ctx: LayerContext): RafsInode {
  const known = ctx.copies.get(inode)
  if (known !== undefined) return known
  const copy: RafsInode = { ...inode, xattrs: new Map(inode.xattrs) }
  delete copy.nid
  if (inode.target !== undefined) copy.target = Buffer.from(inode.target)
  if (inode.chunks !== undefined) copy.chunks = inode.chunks.map(ctx.remapChunk)
  ctx.copies.set(inode, copy)
  if (inode.children !== undefined) {
    copy.children = new Map()
    for (const [key, child] of inode.children) {
      if (!isWhiteout(key)) copy.children.set(key, copyTree(child, ctx))
    }
  }
  return copy
}

/** Applies upper directory `upper` onto `lower`, a directory of the result (owned by the merge, so mutable). */
function applyDir (lower: RafsInode, upper: RafsInode, ctx: LayerContext): void {
  ctx.copies.set(upper, lower)
  // a directory the upper layer only passes through keeps the attributes the lower layers gave it
  if (upper.implicit !== true) {
    lower.mode = upper.mode
    lower.uid = upper.uid
    lower.gid = upper.gid
    lower.mtime = upper.mtime
    lower.mtimeNsec = upper.mtimeNsec
    lower.xattrs = new Map(upper.xattrs)
  }
  const children = lower.children!
  const upperChildren = upper.children ?? new Map<string, RafsInode>()
  // Whiteouts act on the lower layers only, so they go first: a name whited out and re-created by the same
  // layer ends up as the new entry.
  if (upperChildren.has(OPAQUE)) children.clear()
  for (const key of upperChildren.keys()) {
    if (isWhiteout(key) && key !== OPAQUE) children.delete(key.slice(WHITEOUT_PREFIX.length))
  }
  for (const [key, child] of upperChildren) {
    if (isWhiteout(key)) continue
    const existing = children.get(key)
    if (child.type === 'dir' && existing?.type === 'dir') applyDir(existing, child, ctx)
    else children.set(key, copyTree(child, ctx))
  }
}

/**
 * Reads each layer bootstrap, merges them and writes the result. Returns the merged image and its blob ids in
 * blob-table order (= the device order for a kernel mount).
 */
export async function mergeBootstraps (paths: string[], out: string): Promise<{ image: RafsImage, blobs: string[] }> {
  // Reader errors already name the file and carry their own code (RAFSPEER_ERR_BAD_FORMAT), so they pass through.
  const layers: RafsImage[] = []
  for (const path of paths) layers.push((await RafsReader.open(path)).toImage())
  const image = mergeLayers(layers)
  await writeBootstrap(image, out)
  return { image, blobs: image.blobs.map(b => b.blobId) }
}
