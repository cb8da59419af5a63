/**
 * Pull-test images of a chosen shape: an OCI image layout with N gzip layers of incompressible, seed-determined
 * bytes (the same seed gives the same blobs, run after run, so digests can be pinned and caches compared), a
 * linux/amd64 config and an OCI manifest. The first layer also carries `/bin/busybox` from the busybox-static
 * package when it is installed, so the image can run. Layers are streamed tar → gzip → file while hashing; a 128 MiB
 * layer never sits in memory. `skopeo` pushes the layout to a registry.
 *
 * @example
 * const img = await buildLayeredImage(dir, { layers: [2 << 20, 3 << 20, 1 << 20], seed: 'kit' })
 * await pushLayeredImage(img, `${reg.host}/kit/layered:1`, { creds: 'u:p' })
 * console.log(img.layerDigests, img.totalBlobBytes)
 */
import { execFile } from 'node:child_process'
import { createCipheriv, createHash, randomBytes } from 'node:crypto'
import { once, type EventEmitter } from 'node:events'
import { createReadStream, createWriteStream, existsSync } from 'node:fs'
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { promisify } from 'node:util'
import { createGzip } from 'node:zlib'
import tar from 'tar-stream'
import type { OciImage } from './oci-image.js'

const run = promisify(execFile)

export const BUSYBOX_BIN = process.env.RAFSPEER_BUSYBOX_BIN ?? '/usr/bin/busybox'
const MEDIA_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
const MEDIA_CONFIG = 'application/vnd.oci.image.config.v1+json'
const MEDIA_LAYER = 'application/vnd.oci.image.layer.v1.tar+gzip'
const REF_NAME = 'org.opencontainers.image.ref.name'
/** one fixed time for tar headers and the config, so the blobs depend on the seed alone */
const MTIME = new Date(1_700_000_000_000)
/** layers are cut into files of at most this size, like a real filesystem */
const FILE_MAX = 8 << 20
const CHUNK = 1 << 20
const ZEROS = Buffer.alloc(CHUNK)
const PUSH_TIMEOUT_MS = 300_000

export interface LayeredImageOptions {
  /** bytes of random file content in each layer (the blob is a little bigger: tar headers, gzip framing, busybox) */
  layers: number[]
  /** the same seed gives byte-identical blobs; default 1 */
  seed?: number | string
  /** default `layered` */
  tag?: string
  /** zlib level, default 1; random data does not shrink, 0 (stored blocks, still gzip) builds ~3× faster */
  gzipLevel?: number
}

export interface LayeredImage extends OciImage {
  /** `sha256:…` of each compressed layer blob, bottom first */
  layerDigests: string[]
  /** bytes of each compressed layer blob */
  layerSizes: number[]
  /** `sha256:…` of each uncompressed layer tar (the config's `rootfs.diff_ids`) */
  diffIds: string[]
  configDigest: string
  manifestDigest: string
  /** every layer blob plus the config blob */
  totalBlobBytes: number
  /** whether `/bin/busybox` is in the first layer */
  runnable: boolean
}

interface Blob { digest: string, size: number }
type TarHeader = Partial<tar.Header> & { name: string }

/** Writes `data` into the layout's blob store; returns its descriptor fields. */
async function writeBlob (layout: string, data: Buffer): Promise<Blob> {
  const hex = createHash('sha256').update(data).digest('hex')
  await writeFile(join(layout, 'blobs', 'sha256', hex), data)
  return { digest: `sha256:${hex}`, size: data.length }
}

/** Fast deterministic bytes: AES-256-CTR keystream over zeros, keyed by seed and layer. */
function keystream (seed: number | string, layer: number): (size: number) => Buffer {
  const key = createHash('sha256').update(`rafspeer-layered-image:${String(seed)}:${layer}`).digest()
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16))
  return (size) => cipher.update(size === CHUNK ? ZEROS : ZEROS.subarray(0, size))
}

/** Writes one tar entry's body with backpressure; resolves once tar-stream has taken the whole entry. */
async function addEntry (pack: tar.Pack, header: TarHeader, body?: AsyncIterable<Buffer> | Iterable<Buffer>): Promise<void> {
  let sink!: ReturnType<tar.Pack['entry']>
  const done = new Promise<void>((resolve, reject) => {
    sink = pack.entry({ mode: 0o644, uid: 0, gid: 0, mtime: MTIME, ...header }, (err) => { err != null ? reject(err) : resolve() })
  })
  done.catch(() => {}) // awaited below; a failed write throws first
  for await (const chunk of body ?? []) if (!sink.write(chunk)) await once(sink as unknown as EventEmitter, 'drain')
  sink.end(undefined) // streamx types want an argument; undefined writes nothing
  await done
}

function * randomFile (next: (size: number) => Buffer, size: number): Generator<Buffer> {
  for (let left = size; left > 0; left -= CHUNK) yield next(Math.min(CHUNK, left))
}

/** Writes the entries of layer `index` into `pack`. */
async function fillLayer (pack: tar.Pack, index: number, bytes: number, seed: number | string): Promise<void> {
  if (index === 0 && existsSync(BUSYBOX_BIN)) {
    const size = (await stat(BUSYBOX_BIN)).size
    await addEntry(pack, { name: 'bin', type: 'directory', mode: 0o755 })
    await addEntry(pack, { name: 'bin/busybox', size, mode: 0o755 }, createReadStream(BUSYBOX_BIN))
  }
  const dir = `data/layer-${index}`
  await addEntry(pack, { name: 'data', type: 'directory', mode: 0o755 })
  await addEntry(pack, { name: dir, type: 'directory', mode: 0o755 })
  const next = keystream(seed, index)
  for (let i = 0, left = bytes; left > 0; i++) {
    const size = Math.min(FILE_MAX, left)
    await addEntry(pack, { name: `${dir}/file-${i}.bin`, size }, randomFile(next, size))
    left -= size
  }
}

/** Streams one layer into the blob store; returns the compressed blob and the diff id. */
async function writeLayer (layout: string, index: number, bytes: number, opts: LayeredImageOptions): Promise<Blob & { diffId: string }> {
  const tmp = join(layout, 'blobs', 'sha256', `.tmp-${randomBytes(6).toString('hex')}`)
  const tarHash = createHash('sha256')
  const gzHash = createHash('sha256')
  let size = 0
  const pack = tar.pack()
  try {
    const produce = fillLayer(pack, index, bytes, opts.seed ?? 1).then(() => pack.finalize(), (err: Error) => { pack.destroy(err); throw err })
    await Promise.all([
      produce,
      pipeline(
        async function * () { for await (const c of pack as AsyncIterable<Buffer>) { tarHash.update(c); yield c } },
        createGzip({ level: opts.gzipLevel ?? 1 }),
        async function * (src: AsyncIterable<Buffer>) { for await (const c of src) { gzHash.update(c); size += c.length; yield c } },
        createWriteStream(tmp)
      )
    ])
    const hex = gzHash.digest('hex')
    await rename(tmp, join(layout, 'blobs', 'sha256', hex))
    return { digest: `sha256:${hex}`, size, diffId: `sha256:${tarHash.digest('hex')}` }
  } catch (err) {
    await rm(tmp, { force: true })
    throw err
  }
}

/**
 * Builds the image into `dir/layout` under `tag`. A layout that already holds other tags keeps them (blobs are
 * shared), so several images can be built into one directory.
 */
export async function buildLayeredImage (dir: string, opts: LayeredImageOptions): Promise<LayeredImage> {
  const layout = join(dir, 'layout')
  const tag = opts.tag ?? 'layered'
  await mkdir(join(layout, 'blobs', 'sha256'), { recursive: true })
  const layers: Array<Blob & { diffId: string }> = []
  for (const [i, bytes] of opts.layers.entries()) layers.push(await writeLayer(layout, i, Math.max(0, Math.round(bytes)), opts))
  const runnable = opts.layers.length > 0 && existsSync(BUSYBOX_BIN)
  const config = await writeBlob(layout, Buffer.from(JSON.stringify({
    created: MTIME.toISOString(),
    architecture: 'amd64',
    os: 'linux',
    config: { Env: ['PATH=/bin'], ...(runnable ? { Cmd: ['/bin/busybox', 'sh'] } : {}) },
    rootfs: { type: 'layers', diff_ids: layers.map(l => l.diffId) },
    history: layers.map((_, i) => ({ created: MTIME.toISOString(), created_by: `rafspeer layered-image layer ${i}` }))
  })))
  const manifest = await writeBlob(layout, Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: MEDIA_MANIFEST,
    config: { mediaType: MEDIA_CONFIG, ...config },
    layers: layers.map(l => ({ mediaType: MEDIA_LAYER, digest: l.digest, size: l.size }))
  })))
  const indexPath = join(layout, 'index.json')
  const old = existsSync(indexPath) ? JSON.parse(await readFile(indexPath, 'utf8')) as { manifests?: Array<{ annotations?: Record<string, string> }> } : {}
  const others = (old.manifests ?? []).filter(m => m.annotations?.[REF_NAME] !== tag)
  await writeFile(indexPath, JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.index.v1+json',
    manifests: [...others, {
      mediaType: MEDIA_MANIFEST, ...manifest, platform: { architecture: 'amd64', os: 'linux' }, annotations: { [REF_NAME]: tag }
    }]
  }))
  await writeFile(join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }))
  return {
    layout,
    tag,
    layerDigests: layers.map(l => l.digest),
    layerSizes: layers.map(l => l.size),
    diffIds: layers.map(l => l.diffId),
    configDigest: config.digest,
    manifestDigest: manifest.digest,
    totalBlobBytes: layers.reduce((n, l) => n + l.size, config.size),
    runnable
  }
}

export interface PushOptions {
  /** `user:password` for the destination registry */
  creds?: string
  timeoutMs?: number
  signal?: AbortSignal
}

/** `skopeo copy` of the layout to `dest` (`host:port/repo:tag`), plain HTTP allowed, blobs and manifest unchanged. */
export async function pushLayeredImage (img: OciImage, dest: string, opts: PushOptions = {}): Promise<void> {
  await run('skopeo', [
    'copy', '--quiet', '--dest-tls-verify=false', ...(opts.creds !== undefined ? ['--dest-creds', opts.creds] : []),
    `oci:${img.layout}:${img.tag}`, `docker://${dest}`
  ], { timeout: opts.timeoutMs ?? PUSH_TIMEOUT_MS, maxBuffer: 16 << 20, signal: opts.signal })
}
