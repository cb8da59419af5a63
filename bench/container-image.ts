/**
 * The container-start bench's image (bench/container-start.ts): a "runtime" layer holding Debian's python3.11
 * interpreter, every shared library `ldd` names for it and its lib-dynload modules (at the same paths, the dynamic
 * loader too), its stdlib (/usr/lib/python3.11, bytecode caches included), /bin/busybox (busybox-static, /bin/sh a
 * link to it) and a minimal /etc; then N layers of incompressible /data/model-N.bin files. Built under a work
 * directory and pushed as an OCI image.
 */
import { spawn } from 'node:child_process'
import { createCipheriv, createHash } from 'node:crypto'
import { once } from 'node:events'
import { createWriteStream, existsSync } from 'node:fs'
import { chmod, mkdir, readdir, rename, rm, symlink, writeFile } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { createGzip } from 'node:zlib'
import { RegistryClient } from '../registry/index.js'
import { run } from './measure.js'

/** What the image holds. */
export interface BenchImageShape {
  /** layer and config blobs of the OCI image, and of the Nydus one (filled in by the caller) */
  ociBytes: number
  nydusBytes: number
  layers: number
  /** the runtime layer's blob, and the uncompressed data (incompressible) */
  runtimeLayerBytes: number
  runtimeFiles: number
  dataBytes: number
}

const MiB = 1 << 20
export const PYTHON = '/usr/bin/python3.11'
export const PYLIB = '/usr/lib/python3.11'
export const BUSYBOX = process.env.RAFSPEER_BUSYBOX_BIN ?? '/usr/bin/busybox'
const FILE_BYTES = 32 * MiB
const MEDIA_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
const MEDIA_CONFIG = 'application/vnd.oci.image.config.v1+json'
const MEDIA_LAYER = 'application/vnd.oci.image.layer.v1.tar+gzip'
const CREATED = new Date(1_700_000_000_000).toISOString()

interface Blob { digest: string, size: number, path: string }
interface Layer extends Blob { diffId: string }

/** Shared libraries `ldd` names for `files` (the dynamic loader included), as ldd prints their paths. */
async function sharedLibraries (files: string[]): Promise<string[]> {
  const libs = new Set<string>()
  for (const f of files) {
    const text = await run('ldd', [f]).catch(() => '')
    for (const line of text.split('\n')) {
      const m = /=>\s+(\/\S+)\s+\(/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line)
      if (m !== null) libs.add(m[1]!)
    }
  }
  return [...libs].sort()
}

/** Copies `path` (dereferenced, mode and times kept) to the same path under `rootfs`. */
async function copyAt (rootfs: string, path: string): Promise<void> {
  const dest = join(rootfs, path)
  await mkdir(dirname(dest), { recursive: true })
  await run('cp', ['-L', '--preserve=mode,timestamps', path, dest])
}

async function countFiles (dir: string): Promise<number> {
  let n = 0
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) if (!e.isDirectory()) n++
  return n
}

/** The runtime layer's tree: python3.11 and its libraries, its stdlib, busybox, a minimal /etc. */
async function buildRuntimeTree (rootfs: string): Promise<number> {
  for (const d of ['bin', 'etc', 'tmp', 'root', 'proc', 'sys', 'dev', 'usr/bin', 'usr/lib']) await mkdir(join(rootfs, d), { recursive: true })
  await chmod(join(rootfs, 'tmp'), 0o1777)
  const dynload = join(PYLIB, 'lib-dynload')
  const modules = (await readdir(dynload)).filter(f => f.endsWith('.so')).map(f => join(dynload, f))
  for (const lib of await sharedLibraries([PYTHON, ...modules])) await copyAt(rootfs, lib)
  await copyAt(rootfs, PYTHON)
  await symlink('python3.11', join(rootfs, 'usr/bin/python3'))
  await run('cp', ['-a', PYLIB, join(rootfs, 'usr/lib/')])
  if (existsSync('/etc/python3.11')) await run('cp', ['-a', '/etc/python3.11', join(rootfs, 'etc/')])
  await run('cp', ['-L', '--preserve=mode,timestamps', BUSYBOX, join(rootfs, 'bin/busybox')])
  await symlink('busybox', join(rootfs, 'bin/sh'))
  await writeFile(join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n')
  await writeFile(join(rootfs, 'etc/group'), 'root:x:0:\nnogroup:x:65534:\n')
  await writeFile(join(rootfs, 'etc/hosts'), '127.0.0.1 localhost\n::1 localhost\n')
  await writeFile(join(rootfs, 'etc/hostname'), 'bench\n')
  await writeFile(join(rootfs, 'etc/resolv.conf'), '')
  await writeFile(join(rootfs, 'etc/nsswitch.conf'), 'passwd: files\ngroup: files\nhosts: files dns\n')
  return await countFiles(rootfs)
}

/** Incompressible files /data/model-N.bin (AES-256-CTR keystream, fast and seed-determined). */
async function buildDataTree (rootfs: string, layer: number, bytes: number): Promise<void> {
  await mkdir(join(rootfs, 'data'), { recursive: true })
  const perLayer = Math.ceil(bytes / FILE_BYTES)
  const zeros = Buffer.alloc(MiB)
  for (let i = 0, left = bytes; left > 0; i++) {
    const size = Math.min(FILE_BYTES, left)
    const key = createHash('sha256').update(`rafspeer-bench-start:${layer}:${i}`).digest()
    const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16))
    const out = createWriteStream(join(rootfs, 'data', `model-${layer * perLayer + i}.bin`))
    for (let done = 0; done < size; done += MiB) {
      if (!out.write(cipher.update(zeros.subarray(0, Math.min(MiB, size - done))))) await once(out, 'drain')
    }
    out.end()
    await once(out, 'finish')
    left -= size
  }
}

/** `tar -C tree -cf - <its entries>` → gzip → `blobs/<hex>`; hashes both sides as they stream. */
async function writeLayer (tree: string, blobs: string, gzipLevel: number): Promise<Layer> {
  const entries = (await readdir(tree)).sort()
  const tmp = join(blobs, `.tmp-${basename(tree)}`)
  const tar = spawn('tar', ['-C', tree, '--numeric-owner', '--owner=0', '--group=0', '--sort=name', '-cf', '-', ...entries], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  tar.stderr.on('data', (b: Buffer) => { stderr += b.toString() })
  const exited = new Promise<number | null>(resolve => tar.once('close', code => resolve(code)))
  const tarHash = createHash('sha256')
  const gzHash = createHash('sha256')
  let size = 0
  await pipeline(
    tar.stdout,
    async function * (src: AsyncIterable<Buffer>) { for await (const c of src) { tarHash.update(c); yield c } },
    createGzip({ level: gzipLevel }),
    async function * (src: AsyncIterable<Buffer>) { for await (const c of src) { gzHash.update(c); size += c.length; yield c } },
    createWriteStream(tmp)
  )
  const code = await exited
  if (code !== 0) throw new Error(`tar of ${tree} exited ${code}: ${stderr.trim()}`)
  const hex = gzHash.digest('hex')
  const path = join(blobs, hex)
  await rename(tmp, path)
  return { digest: `sha256:${hex}`, size, path, diffId: `sha256:${tarHash.digest('hex')}` }
}

async function jsonBlob (blobs: string, value: unknown): Promise<Blob & { bytes: Buffer }> {
  const bytes = Buffer.from(JSON.stringify(value))
  const hex = createHash('sha256').update(bytes).digest('hex')
  const path = join(blobs, hex)
  await writeFile(path, bytes)
  return { digest: `sha256:${hex}`, size: bytes.length, path, bytes }
}

/** Builds the image's blobs under `work` and pushes them as `ref`; returns its shape. */
export async function buildAndPush (work: string, ref: string, o: { dataLayers: number, dataLayerBytes: number }, log: (l: string) => void): Promise<BenchImageShape> {
  const blobs = join(work, 'blobs')
  await mkdir(blobs, { recursive: true })
  const runtimeTree = join(work, 'tree-runtime')
  const runtimeFiles = await buildRuntimeTree(runtimeTree)
  const layers: Layer[] = [await writeLayer(runtimeTree, blobs, 1)]
  await rm(runtimeTree, { recursive: true, force: true })
  log(`start: runtime layer ${(layers[0]!.size / MiB).toFixed(1)} MiB (${runtimeFiles} files)`)
  for (let i = 0; i < o.dataLayers; i++) {
    const tree = join(work, `tree-data${i}`)
    await buildDataTree(tree, i, o.dataLayerBytes)
    // random bytes do not shrink: stored blocks (still gzip) build several times faster
    layers.push(await writeLayer(tree, blobs, 0))
    await rm(tree, { recursive: true, force: true })
  }
  const config = await jsonBlob(blobs, {
    created: CREATED,
    architecture: 'amd64',
    os: 'linux',
    config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['python3'], WorkingDir: '/' },
    rootfs: { type: 'layers', diff_ids: layers.map(l => l.diffId) },
    history: layers.map((_, i) => ({ created: CREATED, created_by: i === 0 ? 'rafspeer bench: python3.11 runtime' : `rafspeer bench: data layer ${i}` }))
  })
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: MEDIA_MANIFEST,
    config: { mediaType: MEDIA_CONFIG, digest: config.digest, size: config.size },
    layers: layers.map(l => ({ mediaType: MEDIA_LAYER, digest: l.digest, size: l.size }))
  }))
  const client = new RegistryClient({ plainHttp: 'auto' })
  try {
    const repo = ref.slice(0, ref.lastIndexOf(':'))
    for (const b of [...layers, config]) await client.pushBlob(repo, b.digest, b.size, b.path)
    await client.putManifest(ref, MEDIA_MANIFEST, manifest)
  } finally {
    await client.close()
  }
  await rm(blobs, { recursive: true, force: true })
  return {
    ociBytes: layers.reduce((n, l) => n + l.size, config.size),
    nydusBytes: 0,
    layers: layers.length,
    runtimeLayerBytes: layers[0]!.size,
    runtimeFiles,
    dataBytes: o.dataLayers * o.dataLayerBytes
  }
}
