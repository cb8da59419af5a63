/**
 * `publishDirectory`: a directory straight to a RAFS (Nydus-layout) image in a registry — build, bootstrap layer,
 * config, push, manifest last. What the demo and the simulator use to put a sample image in their registry
 * without an OCI source image.
 *
 * @example
 * ```ts
 * const r = await publishDirectory('/srv/model', '127.0.0.1:5000/models/llm:v1', { client, workDir: '/tmp/w' })
 * ```
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { buildFromDirectory, type RafsImage, type RafsInode } from '../rafs/index.js'
import { parseReference, type RegistryClient } from '../registry/index.js'
import { NydusMediaTypes, jsonBytes, nydusConfig, nydusManifest, sha256Digest, writeBootstrapLayer } from '../image/index.js'
import { confirmPushed, pushItem, type PushContext, type PushItem } from './push.js'

export interface PublishOptions {
  client: RegistryClient
  /** parent of the temporary build directory */
  workDir: string
  chunkSize?: number
  prefetchFiles?: string[]
  signal?: AbortSignal
}

export interface PublishResult {
  reference: string
  manifestDigest: string
  /** data blob bytes (what a full pull of the data costs) */
  blobBytes: number
  blobs: Array<{ blobId: string, size: number }>
  /** plaintext bytes of each chunk of each blob, in chunk index order (the image's layout, for `sim/model/`) */
  chunkSizes: number[][]
}

export async function publishDirectory (dir: string, ref: string, opts: PublishOptions): Promise<PublishResult> {
  const target = parseReference(ref)
  const call = opts.signal !== undefined ? { signal: opts.signal } : {}
  await mkdir(opts.workDir, { recursive: true })
  const work = await mkdtemp(join(opts.workDir, 'publish-'))
  try {
    const built = await buildFromDirectory(dir, {
      bootstrap: join(work, 'image.boot'),
      blobDir: join(work, 'blobs'),
      ...(opts.chunkSize !== undefined ? { chunkSize: opts.chunkSize } : {}),
      ...(opts.prefetchFiles !== undefined ? { prefetchFiles: opts.prefetchFiles } : {}),
      ...call
    })
    const blobs = built.blobs.map(b => ({ blobId: b.blobId, size: b.size }))
    const bootLayer = await writeBootstrapLayer(built.bootstrap, join(work, 'bootstrap.tar.gz'), call)
    const created = new Date().toISOString()
    const source = {
      created,
      architecture: process.arch === 'arm64' ? 'arm64' : 'amd64',
      os: 'linux',
      config: {},
      history: blobs.map(() => ({ created, created_by: 'rafspeer publish' }))
    }
    const configBytes = jsonBytes(nydusConfig(source, blobs, bootLayer, blobs.map((_b, i) => i)))
    const configDigest = sha256Digest(configBytes)
    const manifestBytes = jsonBytes(nydusManifest({ digest: configDigest, size: configBytes.length }, blobs, bootLayer))
    const items: PushItem[] = [
      ...built.blobs.map((b, i) => ({ digest: `sha256:${b.blobId}`, size: b.size, source: b.path, label: `blob ${i}` })),
      { digest: bootLayer.digest, size: bootLayer.size, source: join(work, 'bootstrap.tar.gz'), label: 'bootstrap layer' },
      { digest: configDigest, size: configBytes.length, source: async function * () { yield configBytes }, label: 'config' }
    ]
    const ctx: PushContext = { client: opts.client, target, source: target, ...call }
    for (const item of items) await pushItem(ctx, item)
    await confirmPushed(ctx, items)
    const manifestDigest = await opts.client.putManifest(target, NydusMediaTypes.manifest, manifestBytes, call)
    return { reference: ref, manifestDigest, blobBytes: blobs.reduce((n, b) => n + b.size, 0), blobs, chunkSizes: chunkSizesOf(built.image) }
  } finally {
    await rm(work, { recursive: true, force: true })
  }
}

/** Plaintext bytes of each chunk of each blob of `image`, in chunk index order (deduplicated chunks once). */
export function chunkSizesOf (image: RafsImage): number[][] {
  const out: number[][] = image.blobs.map(() => [])
  const visit = (ino: RafsInode): void => {
    for (const c of ino.chunks ?? []) out[c.blobIndex]![c.index] = c.uncompressedSize
    for (const child of ino.children?.values() ?? []) visit(child)
  }
  visit(image.root)
  return out.map(sizes => Array.from(sizes, s => s ?? 0))
}
