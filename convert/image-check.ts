/**
 * `rafspeer check --image`: verifies a RAFS (Nydus) image in a registry without pulling it whole: manifest layout →
 * bootstrap layer (extracted, structurally checked) → every blob layer against the blob table → each blob's tail
 * through ranged reads and its chunks while it streams past once → config diff_ids and history. With a source
 * image, the two trees are compared file by file. Problems are collected, never thrown, past the manifest.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { checkImage, RafsReader, walk, type ChunkInfo, type RafsImage } from '../rafs/index.js'
import { MediaTypes, RegistryClient, isIndex, parseReference, type ImageManifest, type ImageReference } from '../registry/index.js'
import { ConvertError } from './errors.js'
import { NydusAnnotations, NydusMediaTypes, defaultPlatform, extractBootstrap, findBootstrapLayer, type SourceConfig } from '../image/index.js'
import { compareCi, readRemoteTail, registryByteSource, verifyChunksStreaming, type Report } from './remote-blob.js'
import { readJsonBlob } from './source-image.js'
import { compareTrees, expectedTree } from './tree-compare.js'
import type { CheckImageOptions, CheckImageReport, CheckedBlob } from './types.js'

const MAX_MESSAGES = 1000
const msg = (err: unknown): string => err instanceof Error ? err.message : String(err)

export async function checkRemoteImage (ref: string, opts: CheckImageOptions = {}): Promise<CheckImageReport> {
  const target = parseReference(ref)
  const repo: ImageReference = { registry: target.registry, repository: target.repository }
  const client = opts.client ?? new RegistryClient({ plainHttp: opts.plainHttp ?? 'auto' })
  const call = opts.signal !== undefined ? { signal: opts.signal } : {}
  const platform = opts.platform ?? defaultPlatform()
  const parent = opts.workDir ?? tmpdir()
  await mkdir(parent, { recursive: true })
  const workDir = await mkdtemp(join(parent, 'rafspeer-check-'))
  const errors: string[] = []
  const warnings: string[] = []
  const r: Report = {
    error: (m) => { if (errors.length < MAX_MESSAGES) errors.push(m) },
    warn: (m) => { if (warnings.length < MAX_MESSAGES) warnings.push(m) }
  }
  try {
    const got = await client.getManifest(target, { platform, ...call })
    if (isIndex(got.json)) throw new ConvertError('RAFSPEER_ERR_NOT_NYDUS', `${ref} is an index without a manifest for ${platform}`)
    const manifest: ImageManifest = got.json
    const report: CheckImageReport = {
      ok: false, errors, warnings, reference: ref,
      manifest: { digest: got.digest, mediaType: got.mediaType, layers: manifest.layers }, blobs: []
    }
    const done = (): CheckImageReport => { report.ok = errors.length === 0; return report }
    const boot = findBootstrapLayer(manifest)
    if (boot === undefined) {
      r.error(`${ref} (${got.digest}) is not a RAFS/Nydus image: no layer has the ${NydusAnnotations.bootstrap} annotation`)
      return done()
    }
    if (manifest.layers[manifest.layers.length - 1] !== boot) r.error('the bootstrap layer is not the last layer')
    if (boot.annotations?.[NydusAnnotations.fsVersion] !== '6') r.error(`bootstrap layer: ${NydusAnnotations.fsVersion} is ${JSON.stringify(boot.annotations?.[NydusAnnotations.fsVersion])}, expected "6"`)
    const gzip = boot.mediaType === MediaTypes.OciLayerGzip || boot.mediaType === MediaTypes.DockerLayerGzip
    if (!gzip && boot.mediaType !== MediaTypes.OciLayer) r.error(`bootstrap layer media type ${boot.mediaType} is not a tar or tar+gzip layer`)

    // bootstrap: extract, structural check, read
    const bootPath = join(workDir, 'image.boot')
    let diffId: string
    try {
      const x = await extractBootstrap(await client.getBlob(repo, boot.digest, call), bootPath, { gzip })
      diffId = x.diffId
    } catch (err) {
      r.error(`bootstrap layer ${boot.digest}: ${msg(err)}`)
      return done()
    }
    const structural = await checkImage(bootPath)
    for (const e of structural.errors) r.error(`bootstrap: ${e}`)
    for (const w of structural.warnings) r.warn(`bootstrap: ${w}`)
    let image: RafsImage
    try {
      image = (await RafsReader.open(bootPath)).toImage()
    } catch (err) {
      r.error(`bootstrap: ${msg(err)}`)
      return done()
    }
    report.bootstrap = {
      digest: boot.digest, size: structural.bootstrap.size, inodes: structural.bootstrap.inodes,
      chunkSize: image.chunkSize, compressor: image.compressor, digester: image.digester
    }

    // blob table ↔ manifest layers
    const blobLayers = manifest.layers.filter(l => l !== boot)
    image.blobs.forEach((b, i) => {
      const l = blobLayers.find(x => x.digest === `sha256:${b.blobId}`)
      const entry: CheckedBlob = { blobId: b.blobId, index: i, size: b.compressedSize, chunkCount: b.chunkCount, inManifest: false, tailOk: false, chunksVerified: 0 }
      report.blobs.push(entry)
      if (l === undefined) { r.error(`blob ${b.blobId} (blob table index ${i}) is not listed in the manifest`); return }
      entry.inManifest = l.size === b.compressedSize && l.mediaType === NydusMediaTypes.blob
      if (l.size !== b.compressedSize) r.error(`blob ${b.blobId}: the manifest says ${l.size} bytes, the blob table ${b.compressedSize}`)
      if (l.mediaType !== NydusMediaTypes.blob) r.error(`blob ${b.blobId}: media type ${l.mediaType}, expected ${NydusMediaTypes.blob}`)
      if (l.annotations?.[NydusAnnotations.blob] !== 'true') r.warn(`blob ${b.blobId}: the layer lacks the ${NydusAnnotations.blob} annotation`)
      if (blobLayers[i] !== l) r.warn(`blob ${b.blobId}: manifest layer ${blobLayers.indexOf(l)} but blob table index ${i} (§17 lists blobs in blob-table order)`)
    })
    for (const l of blobLayers) {
      if (!image.blobs.some(b => `sha256:${b.blobId}` === l.digest)) r.warn(`manifest layer ${l.digest} is not in the bootstrap's blob table`)
    }

    // config
    try {
      const config = await readJsonBlob(client, repo, manifest.config, call) as SourceConfig
      const want = [...image.blobs.map(b => `sha256:${b.blobId}`), diffId]
      const have = config.rootfs?.diff_ids ?? []
      if (JSON.stringify(have) !== JSON.stringify(want)) r.error(`config rootfs.diff_ids ${JSON.stringify(have)} differ from the blobs and bootstrap tar ${JSON.stringify(want)}`)
      const layered = (config.history ?? []).filter(h => h.empty_layer !== true).length
      if (config.history !== undefined && layered !== have.length) r.error(`config history has ${layered} non-empty entries for ${have.length} diff_ids`)
      if (manifest.config.mediaType !== NydusMediaTypes.config && manifest.config.mediaType !== MediaTypes.DockerConfig) r.warn(`config media type ${manifest.config.mediaType}`)
    } catch (err) {
      r.error(`config ${manifest.config.digest}: ${msg(err)}`)
    }

    // blobs: tail by ranged reads, then every chunk on one streaming pass
    const used = new Map<number, Map<number, ChunkInfo>>()
    for (const [, inode] of walk(image.root)) {
      for (const c of inode.chunks ?? []) {
        let m = used.get(c.blobIndex)
        if (m === undefined) used.set(c.blobIndex, m = new Map())
        m.set(c.index, c)
      }
    }
    for (const entry of report.blobs) {
      const blob = image.blobs[entry.index]!
      const digest = `sha256:${blob.blobId}`
      try {
        const size = await client.headBlob(repo, digest, call)
        if (size === undefined) { r.error(`blob ${blob.blobId} is missing from ${target.registry}/${target.repository}`); continue }
        if (size !== blob.compressedSize) { r.error(`blob ${blob.blobId}: the registry has ${size} bytes, the blob table says ${blob.compressedSize}`); continue }
        const tail = await readRemoteTail(registryByteSource(client, repo, digest, size, opts.signal), blob, r)
        if (tail === undefined) continue
        entry.tailOk = true
        const mine = used.get(entry.index) ?? new Map<number, ChunkInfo>()
        compareCi(blob, tail, [...mine.values()], r)
        entry.chunksVerified = await verifyChunksStreaming(await client.getBlob(repo, digest, call), blob, tail, mine, r)
      } catch (err) {
        r.error(`blob ${blob.blobId}: ${msg(err)}`)
      }
    }

    if (opts.source !== undefined) {
      try {
        const src = parseReference(opts.source)
        const sm = await client.getManifest(src, { platform, ...call })
        if (isIndex(sm.json)) throw new ConvertError('RAFSPEER_ERR_CONVERT_SOURCE', `${opts.source} is an index without a manifest for ${platform}`)
        const expected = await expectedTree(client, { registry: src.registry, repository: src.repository }, sm.json, image.chunkSize, image.digester, opts.signal)
        report.compared = compareTrees(expected, image)
        for (const d of report.compared.differences.slice(0, 50)) r.error(`differs from ${opts.source}: ${d}`)
        if (report.compared.differences.length > 50) r.error(`… and ${report.compared.differences.length - 50} more differences from ${opts.source}`)
      } catch (err) {
        r.error(`comparing with ${opts.source}: ${msg(err)}`)
      }
    }
    return done()
  } finally {
    await rm(workDir, { recursive: true, force: true })
    if (opts.client === undefined) await client.close()
  }
}
