/**
 * `rafspeer convert`: an OCI image in a registry → a RAFS (Nydus) image in a registry. Each source layer streams
 * from the registry through its decompressor into the RAFS builder (one data blob per layer, never a whole layer
 * in memory), the layer models are merged in memory into one bootstrap, and the result is pushed in the §17 layout
 * with the manifest last.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { buildImage, mergeLayers, resolvePrefetchPaths, tarSource, writeBootstrap, type RafsImage, type TreeSource } from '../rafs/index.js'
import {
  RegistryClient, isIndex, parseReference, type Descriptor, type ImageManifest, type ImageReference
} from '../registry/index.js'
import { readJsonBlob } from './source-image.js'
import { ConvertError } from './errors.js'
import { layerCompression, openLayer } from './layer-stream.js'
import {
  NydusMediaTypes, defaultPlatform, findBootstrapLayer, jsonBytes, nydusConfig, nydusManifest, sha256Digest, writeBootstrapLayer,
  type BlobLayer, type SourceConfig
} from '../image/index.js'
import { confirmPushed, pushItem, type PushContext, type PushItem, type PushOutcome } from './push.js'
import type { ConvertOptions, ConvertProgress, ConvertReport, LayerReport } from './types.js'

interface BuiltLayer {
  image: RafsImage
  blob?: { blobId: string, path: string, size: number, chunkCount: number }
  chunks: number
}

/** Counts the chunk references a source hands to the sink, for progress. */
function countingSource (inner: TreeSource, onChunks: (n: number) => void): TreeSource {
  return async (sink, options) => await inner({
    addFile: async (data) => {
      const chunks = await sink.addFile(data)
      onChunks(chunks.length)
      return chunks
    }
  }, options)
}

async function convertLayer (client: RegistryClient, src: ImageReference, layer: Descriptor, index: number, workDir: string,
  opts: ConvertOptions, emit: (ev: ConvertProgress) => void): Promise<BuiltLayer> {
  const compression = layerCompression(layer.mediaType, layer.digest)
  const signal = opts.signal
  let downloaded = 0
  let chunks = 0
  const progress = (): void => emit({ type: 'layer', phase: 'progress', index, digest: layer.digest, size: layer.size, downloaded, chunks })
  emit({ type: 'layer', phase: 'start', index, digest: layer.digest, size: layer.size, downloaded, chunks })
  const where = `layer ${index} (${layer.digest}) of ${src.registry}/${src.repository}`
  let feedError: Error | undefined
  let opened
  try {
    const blob = await client.getBlob({ registry: src.registry, repository: src.repository }, layer.digest, signal !== undefined ? { signal } : {})
    opened = openLayer(blob, compression, (n) => { downloaded += n; progress() })
  } catch (err) {
    throw new ConvertError('RAFSPEER_ERR_CONVERT_LAYER', `${where}: ${(err as Error).message}`, { cause: err })
  }
  opened.done.catch((e: Error) => { feedError ??= e })
  try {
    const built = await buildImage(countingSource(tarSource(opened.tar, { gzip: false }), (n) => { chunks += n; progress() }), {
      bootstrap: join(workDir, `layer-${index}.boot`),
      blobDir: join(workDir, 'blobs'),
      ...(opts.compressor !== undefined ? { compressor: opts.compressor } : {}),
      ...(opts.chunkSize !== undefined ? { chunkSize: opts.chunkSize } : {}),
      ...(opts.digester !== undefined ? { digester: opts.digester } : {}),
      ...(signal !== undefined ? { signal } : {})
    })
    // the tar may end before the blob does: only a blob read to its end has had its digest checked
    await opened.done
    const b = built.blobs[0]
    emit({ type: 'layer', phase: 'done', index, digest: layer.digest, size: layer.size, downloaded, chunks: b?.chunkCount ?? 0, ...(b !== undefined ? { blobId: b.blobId } : {}) })
    return { image: built.image, chunks: b?.chunkCount ?? 0, ...(b !== undefined ? { blob: { blobId: b.blobId, path: b.path, size: b.size, chunkCount: b.chunkCount } } : {}) }
  } catch (err) {
    // a registry failure surfaces downstream as a tar error; give it a moment to land, then report it, not the echo
    await Promise.race([opened.done.catch(() => {}), sleep(100)])
    opened.abort(err as Error)
    const cause = feedError ?? err as Error
    throw new ConvertError('RAFSPEER_ERR_CONVERT_LAYER', `${where}: ${cause.message}`, { cause })
  }
}

export async function convertImage (source: string, target: string, opts: ConvertOptions = {}): Promise<ConvertReport> {
  const started = performance.now()
  const src = parseReference(source)
  const dst = parseReference(target)
  const client = opts.client ?? new RegistryClient({ plainHttp: opts.plainHttp ?? 'auto' })
  const emit = (ev: ConvertProgress): void => { opts.onProgress?.(ev) }
  const signal = opts.signal
  const badPath = opts.prefetchFiles?.find(p => !p.startsWith('/'))
  if (badPath !== undefined) {
    throw new ConvertError('RAFSPEER_ERR_PREFETCH_LIST', `prefetch path ${JSON.stringify(badPath)} is not absolute (one absolute path in the image per line)`)
  }
  const call = signal !== undefined ? { signal } : {}
  const parent = opts.workDir ?? tmpdir()
  await mkdir(parent, { recursive: true })
  const workDir = await mkdtemp(join(parent, 'rafspeer-convert-'))
  try {
    const platform = opts.platform ?? defaultPlatform()
    const got = await client.getManifest(src, { platform, ...call })
    if (isIndex(got.json)) throw new ConvertError('RAFSPEER_ERR_CONVERT_SOURCE', `${source} is an index without a manifest for ${platform}`)
    const manifest: ImageManifest = got.json
    if (findBootstrapLayer(manifest) !== undefined) throw new ConvertError('RAFSPEER_ERR_CONVERT_SOURCE', `${source} (${got.digest}) is already a RAFS/Nydus image`)
    if (manifest.layers.length === 0) throw new ConvertError('RAFSPEER_ERR_CONVERT_SOURCE', `${source} (${got.digest}) has no layers`)
    // every layer type is checked before a byte is downloaded
    for (const l of manifest.layers) layerCompression(l.mediaType, l.digest)
    emit({ type: 'manifest', digest: got.digest, layers: manifest.layers.map(l => ({ digest: l.digest, size: l.size, mediaType: l.mediaType })) })
    const sourceConfig = await readJsonBlob(client, src, manifest.config, call) as SourceConfig

    const built: BuiltLayer[] = []
    for (const [i, layer] of manifest.layers.entries()) {
      built.push(await convertLayer(client, src, layer, i, workDir, opts, emit))
    }

    const merged = mergeLayers(built.map(b => b.image))
    // one bootstrap is pushed, the merged one: its table is the one a mount reads, resolved against the tree the
    // container sees (a file a later layer replaced or deleted is the later layer's, or missing)
    let prefetch: ConvertReport['prefetch']
    if (opts.prefetchFiles !== undefined) {
      const { inodes, missing } = resolvePrefetchPaths(merged.root, opts.prefetchFiles)
      if (inodes.length > 0) merged.prefetch = inodes
      else delete merged.prefetch
      prefetch = { listed: opts.prefetchFiles.length, entries: inodes.length, missing }
      emit({ type: 'prefetch', entries: inodes.length, missing })
    }
    const bootstrapPath = join(workDir, 'image.boot')
    await writeBootstrap(merged, bootstrapPath)
    const paths = new Map(built.flatMap(b => b.blob !== undefined ? [[b.blob.blobId, b.blob.path] as const] : []))
    const blobs: BlobLayer[] = merged.blobs.map(b => ({ blobId: b.blobId, size: b.compressedSize }))
    const seen = new Set<string>()
    const blobOfLayer = built.map(b => {
      if (b.blob === undefined || seen.has(b.blob.blobId)) return undefined
      seen.add(b.blob.blobId)
      return merged.blobs.findIndex(x => x.blobId === b.blob!.blobId)
    })
    const bootLayer = await writeBootstrapLayer(bootstrapPath, join(workDir, 'bootstrap.tar.gz'), call)
    const configBytes = jsonBytes(nydusConfig(sourceConfig, blobs, bootLayer, blobOfLayer))
    const configDigest = sha256Digest(configBytes)
    const target = nydusManifest({ digest: configDigest, size: configBytes.length }, blobs, bootLayer)
    const manifestBytes = jsonBytes(target)
    emit({ type: 'merged', blobs: blobs.length, bootstrapSize: bootLayer.size })

    const items: PushItem[] = [
      ...blobs.map((b, i) => ({ digest: `sha256:${b.blobId}`, size: b.size, source: paths.get(b.blobId)!, label: `blob ${i}` })),
      { digest: bootLayer.digest, size: bootLayer.size, source: join(workDir, 'bootstrap.tar.gz'), label: 'bootstrap layer' },
      { digest: configDigest, size: configBytes.length, source: async function * () { yield configBytes }, label: 'config' }
    ]
    const ctx: PushContext = { client, target: dst, source: src, ...(signal !== undefined ? { signal } : {}) }
    const outcomes = new Map<string, PushOutcome>()
    for (const item of items) {
      emit({ type: 'push', phase: 'start', label: item.label, digest: item.digest, size: item.size })
      const outcome = await pushItem(ctx, item)
      outcomes.set(item.digest, outcome)
      emit({ type: 'push', phase: 'done', label: item.label, digest: item.digest, size: item.size, outcome })
    }
    await confirmPushed(ctx, items)
    const targetDigest = await client.putManifest(dst, NydusMediaTypes.manifest, manifestBytes, call)
    emit({ type: 'pushed', digest: targetDigest })

    const layers: LayerReport[] = manifest.layers.map((l, i) => {
      const b = built[i]!
      return {
        sourceDigest: l.digest,
        size: l.size,
        chunks: b.chunks,
        ...(b.blob !== undefined ? { blobId: b.blob.blobId, blobSize: b.blob.size } : {}),
        skippedPush: b.blob !== undefined && outcomes.get(`sha256:${b.blob.blobId}`) !== 'uploaded',
        ...(b.blob !== undefined ? { push: outcomes.get(`sha256:${b.blob.blobId}`)! } : {})
      }
    })
    return {
      source: formatRef(src),
      target: formatRef(dst),
      sourceDigest: got.digest,
      targetDigest,
      layers,
      bootstrap: { digest: bootLayer.digest, size: bootLayer.size, diffId: bootLayer.diffId, push: outcomes.get(bootLayer.digest)! },
      config: { digest: configDigest, size: configBytes.length },
      ...(prefetch !== undefined ? { prefetch } : {}),
      elapsedMs: performance.now() - started
    }
  } finally {
    await rm(workDir, { recursive: true, force: true })
    if (opts.client === undefined) await client.close()
  }
}

const formatRef = (r: ImageReference): string => `${r.registry}/${r.repository}${r.tag !== undefined ? `:${r.tag}` : ''}${r.digest !== undefined ? `@${r.digest}` : ''}`
