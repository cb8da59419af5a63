/**
 * End-to-end container start, the way the Slacker and Nydus papers measure it: time from the start of the pull to
 * the container's first line of output, on a node that has nothing, behind a registry whose egress is capped
 * (rafspeer's embedded registry, 50 MiB/s by default).
 *
 * Image (built once per run in a temp dir): a "runtime" layer holding Debian's python3.11 interpreter, every shared
 * library `ldd` names for it and its lib-dynload modules (at the same paths, the dynamic loader too), its stdlib
 * (/usr/lib/python3.11, bytecode caches included), /bin/busybox (busybox-static, /bin/sh a link to it) and a minimal
 * /etc; then 4 layers of 128 MiB of incompressible /data/model-N.bin files. The container runs
 * `python3 -c "import json, email, http.client; print('ready', flush=True)"`: it reads a few MiB of the image.
 * The image is pushed as `bench/py:oci` and converted with `rafspeer convert` to `bench/py:nydus`, with the registry
 * uncapped; the registry is then restarted on the same storage with the cap, so every measured pull shares one
 * capped link.
 *
 * Rows (each cold start: a fresh containerd with its own root, a fresh `rafspeer daemon` with an empty cache for the
 * rafspeer rows, then `sync; echo 3 > /proc/sys/vm/drop_caches`):
 * 1. OCI image, overlayfs snapshotter (baseline): `rafspeer rpull` (a CRI pull, which downloads and unpacks every
 *    layer), then `ctr run --snapshotter overlayfs`;
 * 2. the Nydus image through the rafspeer snapshotter with `snapshotter.mode: 'fuse'`: `rafspeer rpull`, then
 *    `ctr run --snapshotter rafspeer`;
 * 3. the same with `mode: 'auto'` (the best mode this kernel allows); the mode the daemon logged is reported.
 * For each: the cold start, OCI cold / this cold (the speed-up, goal ≥ 10x), the registry's body bytes sent between
 * the start of the pull and the first output line, and a warm second start on the same node (a new container of the
 * same image, no new pull, page cache kept) against the OCI warm start (goal ≤ 1.2x). `runs` repeats the cold starts
 * and reports medians.
 *
 * The registry is on this process's event loop: everything that talks to it runs as an asynchronous child.
 */
import { spawn } from 'node:child_process'
import { createCipheriv, createHash } from 'node:crypto'
import { once } from 'node:events'
import { createWriteStream, existsSync } from 'node:fs'
import { chmod, mkdir, mkdtemp, readdir, rename, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, dirname, join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { createGzip } from 'node:zlib'
import { RegistryClient, startRegistryServer, type RegistryServer } from '../registry/index.js'
import { writeHostsToml } from '../proxy/index.js'
import { CTR_BIN, startContainerd, type Containerd } from '../test/helpers/containerd.js'
import { cliArgv, startDaemon, type TestDaemon } from '../test/helpers/daemon.js'
import { dropCaches, forceUnmountUnder, machineNotes, median, run } from './measure.js'

export interface ContainerStartOptions {
  /** registry egress cap, bytes per second (default 50 MiB/s) */
  bandwidth?: number
  /** cold starts of each row; medians are reported (default 1) */
  runs?: number
  /** layers of incompressible data on top of the runtime layer (default 4) */
  dataLayers?: number
  /** bytes of each data layer (default 128 MiB) */
  dataLayerBytes?: number
  log?: (line: string) => void
  /** write each row's daemon (debug) and containerd logs here */
  logsDir?: string
}

export interface StartRun {
  /** from the start of the pull to the container's first output line */
  coldMs: number
  /** `rafspeer rpull` alone (a new Node process, with the page cache dropped) */
  pullMs: number
  /** registry body bytes (blobs and manifests) sent from the start of the pull to the first output line */
  registryBytes: number
  /** a second container of the same image on the same node: `ctr run` to its first output line */
  warmMs: number
  /** mount modes the daemon logged during the cold and the warm start (rafspeer rows) */
  coldModes: string[]
  warmModes: string[]
}

export interface StartRow {
  key: 'oci' | 'fuse' | 'auto'
  label: string
  ref: string
  snapshotter: 'overlayfs' | 'rafspeer'
  /** `snapshotter.mode` of the daemon (rafspeer rows) */
  mode?: 'fuse' | 'auto'
  runs: StartRun[]
  coldMs: number
  pullMs: number
  registryBytes: number
  warmMs: number
  /** OCI cold / this cold (goal ≥ 10x) */
  speedup: number
  /** this warm / OCI warm (goal ≤ 1.2x) */
  warmRatio: number
  /** the mount modes seen in the cold starts, e.g. `fuse` */
  modesUsed: string[]
}

export interface ContainerStartResult {
  machine: string
  bandwidth: number
  runs: number
  command: string[]
  image: {
    /** layer and config blobs of the OCI image, and of the Nydus one */
    ociBytes: number
    nydusBytes: number
    layers: number
    /** the runtime layer's blob, and the uncompressed data (incompressible) */
    runtimeLayerBytes: number
    runtimeFiles: number
    dataBytes: number
  }
  setupMs: number
  convertMs: number
  rows: StartRow[]
}

const MiB = 1 << 20
const NS = 'k8s.io'
const PYTHON = '/usr/bin/python3.11'
const PYLIB = '/usr/lib/python3.11'
const BUSYBOX = process.env.RAFSPEER_BUSYBOX_BIN ?? '/usr/bin/busybox'
const SCRIPT = "import json, email, http.client; print('ready', flush=True)"
const COMMAND = ['python3', '-c', SCRIPT]
const FILE_BYTES = 32 * MiB
const MEDIA_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
const MEDIA_CONFIG = 'application/vnd.oci.image.config.v1+json'
const MEDIA_LAYER = 'application/vnd.oci.image.layer.v1.tar+gzip'
const CREATED = new Date(1_700_000_000_000).toISOString()
const PULL_TIMEOUT_S = 600
const RUN_TIMEOUT_MS = 300_000

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
async function buildAndPush (work: string, ref: string, o: { dataLayers: number, dataLayerBytes: number }, log: (l: string) => void): Promise<ContainerStartResult['image']> {
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

async function manifestBytes (ref: string): Promise<number> {
  const client = new RegistryClient({ plainHttp: 'auto' })
  try {
    const json = (await client.getManifest(ref)).json as { layers?: Array<{ size: number }>, config?: { size: number } }
    return (json.layers ?? []).reduce((n, l) => n + l.size, 0) + (json.config?.size ?? 0)
  } finally {
    await client.close()
  }
}

/** `rafspeer …` as a child process (dist/cli/main.js); throws with its output when it fails. */
async function rafspeer (args: string[], timeoutMs: number): Promise<string> {
  return await new Promise((resolve, reject) => {
    const child = spawn(process.execPath, cliArgv(args), { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    child.stdout.on('data', (b: Buffer) => { out += b.toString() })
    child.stderr.on('data', (b: Buffer) => { err += b.toString() })
    const timer = setTimeout(() => { child.kill('SIGKILL') }, timeoutMs)
    child.once('error', reject)
    child.once('close', (code, signal) => {
      clearTimeout(timer)
      if (code === 0) resolve(out)
      else reject(new Error(`rafspeer ${args.join(' ')} failed (${code ?? signal}): ${err.trim().slice(-3000)}`))
    })
  })
}

interface Started { firstLineMs: number, atFirstLine: number, line: string }

/**
 * `ctr run --rm` of `ref` as container `id` (the flags `Containerd.run` uses, so `stop()` finds its FIFOs, runc state
 * and cgroup), streaming stdout: resolves at the first output line, with ms since `t0` and `onFirstLine()`'s value
 * then, once the container has exited 0. A container that fails, prints nothing or outlives the deadline throws
 * (and is removed).
 */
async function startContainer (c: Containerd, ref: string, id: string, snapshotter: string, t0: number, onFirstLine: () => number): Promise<Started> {
  const child = spawn(CTR_BIN, ['--address', c.address, '--namespace', NS, 'run', '--rm',
    '--fifo-dir', join(c.dir, 'fifo'), '--runc-root', join(c.dir, 'runc'), '--cgroup', `/${basename(c.dir)}/${id}`,
    '--snapshotter', snapshotter, ref, id, ...COMMAND], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  let first: Started | undefined
  child.stdout.setEncoding('utf8').on('data', (s: string) => {
    stdout += s
    if (first === undefined && stdout.includes('\n')) {
      first = { firstLineMs: performance.now() - t0, atFirstLine: onFirstLine(), line: stdout.slice(0, stdout.indexOf('\n')) }
    }
  })
  child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr = (stderr + s).slice(-16384) })
  let timedOut = false
  const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL') }, RUN_TIMEOUT_MS)
  const code = await new Promise<number | null>(resolve => {
    child.once('error', err => { stderr += String(err); resolve(null) })
    child.once('close', code => resolve(code))
  })
  clearTimeout(timer)
  if (timedOut || code === null) {
    const o = { namespace: NS, timeoutMs: 10_000 }
    await c.ctr(['tasks', 'kill', '--signal', 'SIGKILL', id], o)
    await c.ctr(['tasks', 'delete', '--force', id], o)
    await c.ctr(['containers', 'delete', id], o)
  }
  if (code !== 0 || first === undefined) {
    throw new Error(`ctr run ${ref} ${id} (${snapshotter}) ${timedOut ? `timed out after ${RUN_TIMEOUT_MS} ms` : `exited ${code}`}: ` +
      `stdout ${JSON.stringify(stdout.slice(-500))}, stderr ${stderr.trim().slice(-3000)}`)
  }
  if (first.line.trim() !== 'ready') throw new Error(`ctr run ${ref} ${id}: first line ${JSON.stringify(first.line)}, expected "ready"; stderr ${stderr.trim().slice(-2000)}`)
  return first
}

const modesIn = (log: string): string[] => [...log.matchAll(/\((fuse|kernel|erofs-lazy) mode/g)].map(m => m[1]!)

interface RowSpec { key: StartRow['key'], label: string, ref: string, snapshotter: StartRow['snapshotter'], mode?: 'fuse' | 'auto' }

/** One cold start and one warm second start of `row` on a fresh node under `parent`. */
async function coldStart (row: RowSpec, parent: string, reg: RegistryServer, hostsDir: string, i: number, log: (l: string) => void, logsDir?: string): Promise<StartRun> {
  const dir = await mkdtemp(join(parent, `${row.key}${i}-`))
  let daemon: TestDaemon | undefined
  let c: Containerd | undefined
  const context = (): string =>
    (c !== undefined ? `\n--- containerd ---\n${c.logs().slice(-3000)}` : '') + (daemon !== undefined ? `\n--- daemon ---\n${daemon.log().slice(-6000)}` : '')
  try {
    let proxyPlugins: Record<string, string> | undefined
    if (row.mode !== undefined) {
      const home = join(dir, 'node')
      await mkdir(home)
      const address = join(dir, 'snap.sock')
      daemon = await startDaemon(home, { snapshotter: { address, mode: row.mode }, log: { level: logsDir !== undefined ? 'debug' : 'info', format: 'text' } })
      proxyPlugins = { rafspeer: address }
    }
    c = await startContainerd({ dir, namespace: NS, cri: { snapshotter: row.snapshotter, configPath: hostsDir }, ...(proxyPlugins !== undefined ? { proxyPlugins } : {}), ...(logsDir !== undefined ? { logLevel: 'debug' as const } : {}) })
    await dropCaches()
    const mark = daemon?.log().length ?? 0
    const b0 = reg.counters.bytesServed()
    const t0 = performance.now()
    try {
      const out = await rafspeer(['rpull', row.ref, '--address', c.address, '--timeout', String(PULL_TIMEOUT_S)], (PULL_TIMEOUT_S + 30) * 1000)
      if (logsDir !== undefined) log(`start: ${row.key} rpull: ${String(out).split('\n')[0]}`)
    } catch (err) { throw new Error(`${(err as Error).message}${context()}`) }
    const pullMs = performance.now() - t0
    const cold = await startContainer(c, row.ref, `cold-${row.key}-${i}`, row.snapshotter, t0, () => reg.counters.bytesServed() - b0)
      .catch((err: Error) => { throw new Error(`${err.message}${context()}`) })
    const warmMark = daemon?.log().length ?? 0
    // the same image again on the same node: no pull, page cache kept
    const t1 = performance.now()
    const warm = await startContainer(c, row.ref, `warm-${row.key}-${i}`, row.snapshotter, t1, () => 0)
      .catch((err: Error) => { throw new Error(`${err.message}${context()}`) })
    const r: StartRun = {
      coldMs: cold.firstLineMs,
      pullMs,
      registryBytes: cold.atFirstLine,
      warmMs: warm.firstLineMs,
      coldModes: daemon !== undefined ? modesIn(daemon.log().slice(mark, warmMark)) : [],
      warmModes: daemon !== undefined ? modesIn(daemon.log().slice(warmMark)) : []
    }
    log(`start: ${row.label} run ${i + 1}: cold ${(r.coldMs / 1000).toFixed(2)} s (rpull ${(pullMs / 1000).toFixed(2)} s), ` +
      `registry sent ${(r.registryBytes / MiB).toFixed(1)} MiB, warm ${(r.warmMs / 1000).toFixed(2)} s` +
      (daemon !== undefined ? `, modes cold [${r.coldModes.join(', ')}] warm [${r.warmModes.join(', ')}]` : ''))
    return r
  } finally {
    if (logsDir !== undefined) {
      await mkdir(logsDir, { recursive: true })
      if (daemon !== undefined) await writeFile(join(logsDir, `${row.key}-${i}-daemon.log`), daemon.log())
      if (c !== undefined) await writeFile(join(logsDir, `${row.key}-${i}-containerd.log`), c.logs())
    }
    await c?.stop().catch((err: Error) => { log(`start: stopping containerd: ${err.message}`) })
    if (daemon !== undefined) {
      const code = await daemon.stop()
      if (code !== 0) log(`start: the daemon exited ${code}:\n${daemon.log().slice(-4000)}`)
    }
    const left = await forceUnmountUnder(dir)
    if (left.length > 0) log(`start: had to detach ${left.join(', ')}`)
    await rm(dir, { recursive: true, force: true })
  }
}

export async function benchContainerStart (opts: ContainerStartOptions = {}): Promise<ContainerStartResult> {
  if (process.getuid?.() !== 0) throw new Error('the container-start bench needs root (containerd, runc, drop_caches, FUSE)')
  for (const f of [PYTHON, join(PYLIB, 'os.py'), BUSYBOX, CTR_BIN]) if (!existsSync(f)) throw new Error(`${f} missing (the start bench needs python3.11, busybox-static and containerd)`)
  const bandwidth = opts.bandwidth ?? 50 * MiB
  const runs = opts.runs ?? 1
  const shape = { dataLayers: opts.dataLayers ?? 4, dataLayerBytes: opts.dataLayerBytes ?? 128 * MiB }
  const log = opts.log ?? (() => {})
  const work = await mkdtemp(join(tmpdir(), 'rafspeer-bench-start-'))
  let reg: RegistryServer | undefined
  try {
    const root = join(work, 'registry')
    reg = await startRegistryServer({ root })
    const t0 = performance.now()
    log(`start: building a ${shape.dataLayers + 1}-layer python3.11 image (${shape.dataLayers} × ${(shape.dataLayerBytes / MiB).toFixed(0)} MiB of data)`)
    const image = await buildAndPush(work, `${reg.host}/bench/py:oci`, shape, log)
    const setupMs = performance.now() - t0
    log('start: converting with rafspeer convert')
    const t1 = performance.now()
    const convWork = join(work, 'convert')
    await mkdir(convWork)
    await rafspeer(['convert', `${reg.host}/bench/py:oci`, `${reg.host}/bench/py:nydus`, '--work-dir', convWork], 1_800_000)
    const convertMs = performance.now() - t1
    await rm(convWork, { recursive: true, force: true })
    image.nydusBytes = await manifestBytes(`${reg.host}/bench/py:nydus`)
    log(`start: OCI ${(image.ociBytes / MiB).toFixed(1)} MiB, Nydus ${(image.nydusBytes / MiB).toFixed(1)} MiB (convert ${(convertMs / 1000).toFixed(1)} s)`)
    // the same storage behind the cap for every measured pull
    await reg.stop()
    reg = await startRegistryServer({ root, bandwidthLimit: bandwidth })
    const hostsDir = join(work, 'certs.d')
    await writeHostsToml({ hostsDir, mirror: `http://${reg.host}`, registries: [reg.host] })

    const specs: RowSpec[] = [
      { key: 'oci', label: 'OCI image, overlayfs snapshotter', ref: `${reg.host}/bench/py:oci`, snapshotter: 'overlayfs' },
      { key: 'fuse', label: 'rafspeer snapshotter, FUSE mode', ref: `${reg.host}/bench/py:nydus`, snapshotter: 'rafspeer', mode: 'fuse' },
      { key: 'auto', label: 'rafspeer snapshotter, auto mode', ref: `${reg.host}/bench/py:nydus`, snapshotter: 'rafspeer', mode: 'auto' }
    ]
    const results = new Map<RowSpec['key'], StartRun[]>(specs.map(s => [s.key, []]))
    for (let i = 0; i < runs; i++) {
      for (const s of specs) results.get(s.key)!.push(await coldStart(s, work, reg, hostsDir, i, log, opts.logsDir))
    }
    const med = (rs: StartRun[], f: (r: StartRun) => number): number => median(rs.map(f))
    const oci = results.get('oci')!
    const ociCold = med(oci, r => r.coldMs)
    const ociWarm = med(oci, r => r.warmMs)
    const rows: StartRow[] = specs.map(s => {
      const rs = results.get(s.key)!
      const coldMs = med(rs, r => r.coldMs)
      const warmMs = med(rs, r => r.warmMs)
      return {
        ...s,
        runs: rs,
        coldMs,
        pullMs: med(rs, r => r.pullMs),
        registryBytes: med(rs, r => r.registryBytes),
        warmMs,
        speedup: ociCold / coldMs,
        warmRatio: warmMs / ociWarm,
        modesUsed: [...new Set(rs.flatMap(r => r.coldModes))]
      }
    })
    return { machine: await machineNotes(), bandwidth, runs, command: COMMAND, image, setupMs, convertMs, rows }
  } finally {
    await reg?.stop().catch(() => {})
    const left = await forceUnmountUnder(work)
    if (left.length > 0) log(`start: had to detach ${left.join(', ')}`)
    await rm(work, { recursive: true, force: true })
  }
}

export function formatContainerStart (r: ContainerStartResult): string {
  const mb = (n: number): string => (n / MiB).toFixed(1)
  const s = (ms: number): string => `${(ms / 1000).toFixed(2)} s`
  const pad = (v: string, n: number): string => v.padStart(n)
  const name = (row: StartRow): string =>
    row.key === 'auto' ? `${row.label} (${row.modesUsed.length > 0 ? row.modesUsed.join('+') : '?'} mode used)` : row.label
  const width = Math.max(...r.rows.map(row => name(row).length))
  const header = `  ${'row'.padEnd(width)}  ${pad('cold start', 10)}  ${pad('speed-up', 8)}  ${pad('registry sent', 13)}  ${pad('rpull', 7)}  ${pad('warm 2nd', 8)}  ${pad('warm/OCI', 8)}`
  return [
    `container start: \`${r.command.slice(0, 2).join(' ')} "${r.command[2]}"\` (Debian's python3.11) to its first output line; ` +
      `image ${r.image.layers} layers: runtime ${mb(r.image.runtimeLayerBytes)} MiB (${r.image.runtimeFiles} files) + ${mb(r.image.dataBytes)} MiB incompressible; ` +
      `OCI ${mb(r.image.ociBytes)} MiB, Nydus ${mb(r.image.nydusBytes)} MiB`,
    `  registry capped at ${mb(r.bandwidth)} MiB/s; each cold start on a fresh containerd (and daemon, empty cache), page cache dropped; ` +
      `pull = \`rafspeer rpull\` (CRI); median of ${r.runs}; ${r.machine}`,
    header,
    ...r.rows.map(row => `  ${name(row).padEnd(width)}  ${pad(s(row.coldMs), 10)}  ${pad(`${row.speedup.toFixed(1)}x`, 8)}  ` +
      `${pad(`${mb(row.registryBytes)} MiB`, 13)}  ${pad(s(row.pullMs), 7)}  ${pad(s(row.warmMs), 8)}  ${pad(`${row.warmRatio.toFixed(2)}x`, 8)}`),
    '  goals: speed-up (OCI cold / this cold) ≥ 10x; warm second start ≤ 1.2x the OCI warm second start. ' +
      '"registry sent": blob and manifest bytes from the start of the pull to the first output line'
  ].join('\n')
}

