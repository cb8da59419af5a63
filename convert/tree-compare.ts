/**
 * The file-by-file comparison of `check --image --source`: the expected tree is built from the source image's layer
 * tars (streamed, OCI whiteouts applied by the same merge rules), with each file cut into chunks of the converted
 * image's chunk size and digested with its digester but stored nowhere; the converted tree is the bootstrap's. Two
 * files have the same content when their chunk digest lists match, and the blob check has already tied every
 * digest in the bootstrap to the bytes in the registry.
 */
import {
  digestChunk, mergeLayers, tarSource, walk,
  type ChunkInfo, type ChunkSink, type Digester, type RafsBlobInfo, type RafsImage, type RafsInode
} from '../rafs/index.js'
import type { ImageManifest, ImageReference, RegistryClient } from '../registry/index.js'
import { ConvertError } from './errors.js'
import { layerCompression, openLayer } from './layer-stream.js'

/** A sink that only digests: one fake blob per layer, unique chunk slots so merge keeps every chunk apart. */
function digestingSink (chunkSize: number, digester: Digester): ChunkSink {
  let next = 0
  const chunk = (data: Buffer, fileOffset: number): ChunkInfo => ({
    digest: digestChunk(digester, data), blobIndex: 0, index: next++, compressedOffset: 0, compressedSize: data.length,
    uncompressedOffset: 0, uncompressedSize: data.length, compressed: false, fileOffset
  })
  return {
    async addFile (data) {
      const out: ChunkInfo[] = []
      let pending: Buffer[] = []
      let held = 0
      let offset = 0
      const flush = (all: Buffer): Buffer => {
        let at = 0
        while (all.length - at >= chunkSize) {
          out.push(chunk(all.subarray(at, at + chunkSize), offset))
          offset += chunkSize
          at += chunkSize
        }
        return all.subarray(at)
      }
      const feed = (piece: Uint8Array): void => {
        pending.push(Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength))
        held += piece.byteLength
        if (held >= chunkSize) {
          const rest = Buffer.from(flush(Buffer.concat(pending)))
          pending = rest.length > 0 ? [rest] : []
          held = rest.length
        }
      }
      if (data instanceof Uint8Array) feed(data)
      else for await (const piece of data) feed(piece)
      if (held > 0) out.push(chunk(Buffer.concat(pending), offset))
      return out
    }
  }
}

/** The source image's merged tree, from its layer tars. */
export async function expectedTree (client: RegistryClient, repo: ImageReference, manifest: ImageManifest,
  chunkSize: number, digester: Digester, signal?: AbortSignal): Promise<RafsImage> {
  const layers: RafsImage[] = []
  for (const [i, layer] of manifest.layers.entries()) {
    const opened = openLayer(await client.getBlob(repo, layer.digest, signal !== undefined ? { signal } : {}),
      layerCompression(layer.mediaType, layer.digest), () => {})
    let root: RafsInode
    try {
      root = await tarSource(opened.tar, { gzip: false })(digestingSink(chunkSize, digester), signal !== undefined ? { signal } : {})
      await opened.done
    } catch (err) {
      opened.abort(err as Error)
      throw new ConvertError('RAFSPEER_ERR_CONVERT_LAYER', `source layer ${i} (${layer.digest}): ${(err as Error).message}`, { cause: err })
    }
    // only the id and ToC digest are read by merge; the rest describes no real blob
    const blob = { blobId: `source-layer-${i}`, blobTocDigest: Buffer.alloc(32) } as unknown as RafsBlobInfo
    layers.push({ root, blobs: [blob], chunkSize, compressor: 'none', digester })
  }
  return mergeLayers(layers)
}

interface Flat { inode: RafsInode, linkGroup?: string }

function flatten (root: RafsInode): Map<string, Flat> {
  const out = new Map<string, Flat>()
  const names = new Map<RafsInode, string[]>()
  for (const [path, inode] of walk(root)) {
    out.set(path, { inode })
    if (inode.type !== 'dir') names.set(inode, [...(names.get(inode) ?? []), path])
  }
  for (const paths of names.values()) {
    if (paths.length < 2) continue
    const first = paths.reduce((a, b) => (b < a ? b : a))
    for (const p of paths) out.get(p)!.linkGroup = first
  }
  return out
}

const hex = (b: Buffer | undefined): string | undefined => b?.toString('hex')
const xattrText = (m: Map<string, Buffer>): string => JSON.stringify([...m].map(([k, v]) => [k, v.toString('hex')]).sort())

/** Every difference between the expected and the converted tree, one line each. */
export function compareTrees (expected: RafsImage, actual: RafsImage): { entries: number, differences: string[] } {
  const want = flatten(expected.root)
  const got = flatten(actual.root)
  const diffs: string[] = []
  const show = (v: unknown): string => v === undefined ? '(none)' : typeof v === 'number' ? String(v) : JSON.stringify(v)
  for (const [path, w] of want) {
    const g = got.get(path)
    if (g === undefined) { diffs.push(`${path}: missing (expected a ${w.inode.type})`); continue }
    const a = w.inode
    const b = g.inode
    const fields: Array<[string, unknown, unknown]> = [
      ['type', a.type, b.type],
      ['mode', '0' + a.mode.toString(8), '0' + b.mode.toString(8)],
      ['uid', a.uid, b.uid],
      ['gid', a.gid, b.gid],
      ['mtime', `${a.mtime}.${a.mtimeNsec}`, `${b.mtime}.${b.mtimeNsec}`],
      ['size', a.type === 'file' ? a.size : undefined, b.type === 'file' ? b.size : undefined],
      ['rdev', `${a.rdevMajor}:${a.rdevMinor}`, `${b.rdevMajor}:${b.rdevMinor}`],
      ['symlink target', hex(a.target), hex(b.target)],
      ['xattrs', xattrText(a.xattrs), xattrText(b.xattrs)],
      ['hard-link group', w.linkGroup, g.linkGroup],
      ['content (chunk digests)', a.chunks?.map(c => hex(c.digest)).join(','), b.chunks?.map(c => hex(c.digest)).join(',')]
    ]
    for (const [name, x, y] of fields) if (x !== y) diffs.push(`${path}: ${name} expected ${show(x)}, got ${show(y)}`)
  }
  for (const [path, g] of got) if (!want.has(path)) diffs.push(`${path}: unexpected ${g.inode.type}`)
  return { entries: want.size, differences: diffs }
}

