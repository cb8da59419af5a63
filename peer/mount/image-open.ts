/**
 * Opens an image for mounting: a registry reference (manifest → bootstrap layer, kept under
 * `<workDir>/bootstraps/` by layer digest so a restart fetches nothing) or a local bootstrap with a blob
 * directory. Registers every blob with the cache and records the image (ref → manifest → bootstrap). When the
 * registry cannot be reached, a reference the cache already knows mounts from its recorded bootstrap.
 */
import { mkdir, rename, rm, stat } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { RafspeerError, errorCode, sha256File, type ComponentLogger } from '../../base/index.js'
import type { BlobCache } from '../../cache/index.js'
import { defaultPlatform, extractBootstrap, findBootstrapLayer } from '../../image/index.js'
import { RafsReader, type RafsBlobInfo } from '../../rafs/index.js'
import { MediaTypes, RegistryClient, isIndex, parseReference, type ImageReference } from '../../registry/index.js'
import { LocalBlobSource, RegistrySource, type ChunkSource } from '../fetch/index.js'

export interface OpenedImage {
  source: string
  /** `host/repo` for a registry image */
  repository?: string
  manifestDigest?: string
  bootstrapPath: string
  bootstrapDigest: string
  reader: RafsReader
  blobs: RafsBlobInfo[]
  chunkSources: ChunkSource[]
  /** the registry could not be reached: mounted from the cache's record */
  offline: boolean
  close: () => Promise<void>
}

export interface OpenImageComponents {
  cache: BlobCache
  clientFor: (plainHttp: boolean | 'auto') => RegistryClient
  logger?: ComponentLogger
}

export interface OpenImageRequest {
  source: string
  blobDir?: string
  plainHttp?: boolean | 'auto'
  platform?: string
  signal?: AbortSignal
  /** told as each step ends (`manifest`, `bootstrap`, `open`, `cache`), for the mount's timing line */
  onStep?: (step: string) => void
}

export class ImageOpenError extends RafspeerError<'RAFSPEER_ERR_NOT_RAFS' | 'RAFSPEER_ERR_IMAGE_SOURCE'> {}

/** Network failures that let a known image mount offline; not-found, auth and bad data never do. */
const OFFLINE_CODES = new Set(['RAFSPEER_ERR_REGISTRY_NETWORK', 'RAFSPEER_ERR_REGISTRY_HTTP', 'ECONNREFUSED', 'ETIMEDOUT', 'UND_ERR_CONNECT_TIMEOUT'])

const exists = async (p: string): Promise<boolean> => await stat(p).then(s => s.isFile(), () => false)

/** A path (absolute, ./, ../, or an existing file) rather than a registry reference. */
export async function isLocalSource (source: string, blobDir: string | undefined): Promise<boolean> {
  if (blobDir !== undefined) return true
  if (source.startsWith('/') || source.startsWith('./') || source.startsWith('../')) return true
  return await exists(source)
}

export async function openImage (c: OpenImageComponents, req: OpenImageRequest, workDir: string): Promise<OpenedImage> {
  const opened = await isLocalSource(req.source, req.blobDir)
    ? await openLocal(req)
    : await openRemote(c, req, workDir)
  try {
    // each blob its own file and record: registered side by side, as the mount waits for all of them
    await Promise.all(opened.blobs.map(async b => { await c.cache.registerBlob(b) }))
    await c.cache.putImage({
      ref: opened.source,
      manifestDigest: opened.manifestDigest ?? opened.bootstrapDigest,
      bootstrapPath: opened.bootstrapPath,
      bootstrapDigest: opened.bootstrapDigest,
      blobIds: opened.blobs.map(b => b.blobId)
    })
    req.onStep?.('cache')
  } catch (err) {
    await opened.close()
    throw err
  }
  return opened
}

async function openLocal (req: OpenImageRequest): Promise<OpenedImage> {
  const bootstrapPath = resolve(req.source)
  if (!(await exists(bootstrapPath))) throw new ImageOpenError('RAFSPEER_ERR_IMAGE_SOURCE', `bootstrap ${bootstrapPath} does not exist`)
  const reader = await RafsReader.open(bootstrapPath)
  const blobs = reader.blobs
  if (blobs.length > 0 && req.blobDir === undefined) {
    throw new ImageOpenError('RAFSPEER_ERR_IMAGE_SOURCE', `${bootstrapPath} has ${blobs.length} data blob(s): give --blob-dir`)
  }
  const local = new LocalBlobSource({ dir: resolve(req.blobDir ?? '.') })
  return {
    source: bootstrapPath,
    bootstrapPath,
    bootstrapDigest: `sha256:${await sha256File(bootstrapPath)}`,
    reader,
    blobs,
    chunkSources: [local],
    offline: false,
    close: async () => { await local.close() }
  }
}

async function openRemote (c: OpenImageComponents, req: OpenImageRequest, workDir: string): Promise<OpenedImage> {
  const target = parseReference(req.source)
  const repo: ImageReference = { registry: target.registry, repository: target.repository }
  const repository = `${target.registry}/${target.repository}`
  const client = c.clientFor(req.plainHttp ?? 'auto')
  const call = req.signal !== undefined ? { signal: req.signal } : {}
  const registrySource = new RegistrySource({ client }, { repository })
  const finish = async (bootstrapPath: string, manifestDigest: string, offline: boolean): Promise<OpenedImage> => {
    const reader = await RafsReader.open(bootstrapPath)
    const bootstrapDigest = `sha256:${await sha256File(bootstrapPath)}`
    req.onStep?.('open')
    return {
      source: req.source,
      repository,
      manifestDigest,
      bootstrapPath,
      bootstrapDigest,
      reader,
      blobs: reader.blobs,
      chunkSources: [registrySource],
      offline,
      close: async () => {}
    }
  }

  let got
  try {
    got = await client.getManifest(target, { platform: req.platform ?? defaultPlatform(), ...call })
  } catch (err) {
    const known = OFFLINE_CODES.has(errorCode(err) ?? '') ? await c.cache.getImage(req.source) : undefined
    if (known !== undefined && await exists(known.bootstrapPath)) {
      c.logger?.forComponent('rafspeer:mounts').warn('registry unreachable for %s (%s): mounting the cached bootstrap of %s', req.source, (err as Error).message, known.manifestDigest)
      return await finish(known.bootstrapPath, known.manifestDigest, true)
    }
    throw err
  }
  req.onStep?.('manifest')
  if (isIndex(got.json)) throw new ImageOpenError('RAFSPEER_ERR_NOT_RAFS', `${req.source} is an index without a manifest for this platform`)
  const boot = findBootstrapLayer(got.json)
  if (boot === undefined) {
    throw new ImageOpenError('RAFSPEER_ERR_NOT_RAFS', `${req.source} (${got.digest}) is not a RAFS/Nydus image: no layer carries the bootstrap annotation (convert it with \`rafspeer convert\`)`)
  }
  const dir = join(workDir, 'bootstraps')
  await mkdir(dir, { recursive: true })
  const hex = boot.digest.replace(/^sha256:/, '')
  if (!/^[0-9a-f]{64}$/.test(hex)) throw new ImageOpenError('RAFSPEER_ERR_NOT_RAFS', `bootstrap layer digest ${boot.digest} is not sha256`)
  const bootstrapPath = join(dir, `${hex}.boot`)
  if (!(await exists(bootstrapPath))) {
    // written under a temporary name, renamed when whole: an existing file is a complete, digest-checked one
    const tmp = `${bootstrapPath}.${process.pid}.${Date.now()}.tmp`
    try {
      const gzip = boot.mediaType === MediaTypes.OciLayerGzip || boot.mediaType === MediaTypes.DockerLayerGzip
      await extractBootstrap(await client.getBlob(repo, boot.digest, call), tmp, { gzip })
      await rename(tmp, bootstrapPath)
    } finally {
      await rm(tmp, { force: true })
    }
  }
  req.onStep?.('bootstrap')
  return await finish(bootstrapPath, got.digest, false)
}
