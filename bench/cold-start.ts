/**
 * Cold start: time until an application can read its first file, on a node that has nothing, behind a registry
 * with a bandwidth cap. Baseline, measured in the same run: a full pull (`skopeo copy` to an OCI layout, then
 * `umoci unpack`, then read the file). Ours: `rafspeer mount REF MNT --foreground` from an empty cache and work
 * directory, `--prefetch none`, `--mode auto` (erofs-lazy where the host can; `mountMode` asks another), until the
 * file's bytes come back through the mount; and the same mount as a node does it, `rafspeer mount` (the client)
 * through a daemon already running with an empty cache.
 *
 * Image: an OCI image built with umoci (as `test/helpers/oci-image.ts` does) of a few hundred small files,
 * among them `/app/config.json`, the file we read, and a few big incompressible files (model weights, say);
 * pushed with skopeo to the embedded registry and converted to RAFS there with `convertImage`. The registry is
 * then restarted on the same storage with `bandwidthLimit`, so both paths share one capped link. Page cache is
 * dropped before every run (the registry's blob files are cold too), and each run gets empty directories.
 *
 * The registry is on this process's event loop: everything that talks to it runs as an asynchronous child.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { RegistryClient, startRegistryServer, type RegistryServer } from '../registry/index.js'
import { convertImage } from '../convert/index.js'
import { BlobCache } from '../cache/index.js'
import { FuseNativeBackend, MountManager } from '../peer/index.js'
import { addLayer, pseudoRandom, pushOciImage, type OciImage } from '../test/helpers/oci-image.js'
import { startDaemon } from '../test/helpers/daemon.js'
import { dropCaches, forceUnmountUnder, machineNotes, median, mountsUnder, run, waitFor } from './measure.js'

export interface ColdStartOptions {
  /** registry egress cap, bytes per second (default 100 MiB/s) */
  bandwidth?: number
  bigFiles?: number
  /** default 128 MiB: 4 × 128 MiB = 512 MiB of incompressible data */
  bigFileBytes?: number
  smallFiles?: number
  /** repetitions of each path; the median is reported (default 3) */
  runs?: number
  /** the mount mode asked (default `auto`: erofs-lazy where the host can, else FUSE, since the cache starts empty) */
  mountMode?: 'auto' | 'fuse' | 'erofs-lazy'
  /** `cli` spawns `node dist/cli/main.js mount ... --foreground`; `auto` (default) uses it when it exists, else in-process */
  rafspeer?: 'auto' | 'cli' | 'in-process'
  /**
   * Another `cli/main.js` (a build of an earlier commit, say) timed the same way in every round, alternately with
   * ours: on a shared machine, the load varies more between runs of the bench than a change to the start does.
   */
  baselineCli?: string
  workParent?: string
}

export interface ColdRun { ms: number, bytes: number, requests: number, parts?: Record<string, number> }

export interface ColdStartResult {
  machine: string
  bandwidth: number
  image: { ociBytes: number, rafsBytes: number, files: number, bigBytes: number }
  runs: number
  /** which rafspeer path was timed, in which mount mode */
  rafspeerPath: 'cli' | 'in-process'
  mountMode: string
  fullPull: { runs: ColdRun[], medianMs: number, medianBytes: number }
  rafspeer: { runs: ColdRun[], medianMs: number, medianBytes: number }
  /** with the CLI: the same mount by a MountManager in this process, to split process start from the mount path */
  inProcess?: { runs: ColdRun[], medianMs: number, medianBytes: number }
  /**
   * with the CLI: `rafspeer mount` (a new client process) through a daemon already running on the node with an
   * empty cache, as a node mounts (the daemon is a service, the command its client); `ratio` is full pull / this
   */
  viaDaemon?: { runs: ColdRun[], medianMs: number, medianBytes: number, ratio: number }
  /** with `baselineCli`: the same mount by that CLI, in the same rounds */
  baseline?: { cli: string, runs: ColdRun[], medianMs: number, cliVersionColdMs: number }
  /** full pull time / rafspeer time: above 1 means rafspeer starts faster */
  ratio: number
  /** `node dist/cli/main.js --version` with the page cache dropped: the fixed cost of a new CLI process */
  cliVersionColdMs?: number
  /** whether dist/cli/main.js is the esbuild bundle (`npm run build`) or tsc's output (`tsc` alone) */
  cliBundled?: boolean
}

const CONFIG_PATH = 'app/config.json'
const CONFIG = JSON.stringify({ name: 'bench-app', listen: ':8080', model: '/models/w0.bin' }, null, 2) + '\n'
const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', 'cli', 'main.js')

async function buildImage (work: string, o: Required<Pick<ColdStartOptions, 'bigFiles' | 'bigFileBytes' | 'smallFiles'>>): Promise<OciImage> {
  const img: OciImage = { layout: join(work, 'oci'), tag: 'src' }
  await run('umoci', ['init', '--layout', img.layout])
  await run('umoci', ['new', '--image', `${img.layout}:${img.tag}`])
  // layer 1: the app, a few hundred small files; layer 2: the weights
  await addLayer(img, work, async (r) => {
    const words = 'alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu'.split(' ')
    for (let i = 0; i < o.smallFiles; i++) {
      const d = join(r, 'app', 'lib', `m${i % 20}`)
      await mkdir(d, { recursive: true })
      const n = 300 + (i * 7919) % 20000
      let s = ''
      while (s.length < n) s += words[(s.length * 13 + i) % words.length] + (s.length % 70 < 6 ? '\n' : ' ')
      await writeFile(join(d, `mod${i}.js`), s)
    }
    await writeFile(join(r, CONFIG_PATH), CONFIG)
  })
  await addLayer(img, work, async (r) => {
    await mkdir(join(r, 'models'), { recursive: true })
    for (let i = 0; i < o.bigFiles; i++) await writeFile(join(r, 'models', `w${i}.bin`), pseudoRandom(o.bigFileBytes, 1000 + i))
  })
  return img
}

async function manifestBytes (client: RegistryClient, ref: string): Promise<number> {
  const m = await client.getManifest(ref)
  const json = m.json as { layers?: Array<{ size: number }>, config?: { size: number } }
  return (json.layers ?? []).reduce((n, l) => n + l.size, 0) + (json.config?.size ?? 0)
}

/** Registry traffic of one measurement. */
async function counted (reg: RegistryServer, body: () => Promise<Record<string, number> | undefined>): Promise<ColdRun> {
  const b0 = reg.counters.bytesServed()
  const r0 = reg.counters.requests()
  const t = performance.now()
  const parts = await body()
  const ms = performance.now() - t
  return { ms, bytes: reg.counters.bytesServed() - b0, requests: reg.counters.requests() - r0, ...(parts !== undefined ? { parts } : {}) }
}

async function fullPull (reg: RegistryServer, ref: string, dir: string): Promise<ColdRun> {
  await dropCaches()
  return await counted(reg, async () => {
    const t = performance.now()
    await run('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${ref}`, `oci:${join(dir, 'oci')}:app`])
    const copied = performance.now()
    await run('umoci', ['unpack', '--image', `${join(dir, 'oci')}:app`, join(dir, 'bundle')])
    const unpacked = performance.now()
    if (await readFile(join(dir, 'bundle', 'rootfs', CONFIG_PATH), 'utf8') !== CONFIG) throw new Error('full pull: wrong config bytes')
    return { skopeoCopyMs: copied - t, umociUnpackMs: unpacked - copied }
  })
}

/**
 * Polls the file through the mount every 20 ms; resolves when its bytes are right, with when (ms after `t0`) the
 * mount first showed in /proc/mounts.
 */
async function firstRead (mnt: string, t0: number, deadlineMs: number, failed: () => string | undefined): Promise<number | undefined> {
  const end = Date.now() + deadlineMs
  let mountedMs: number | undefined
  for (;;) {
    const why = failed()
    if (why !== undefined) throw new Error(why)
    if (mountedMs === undefined && (await mountsUnder(mnt)).length > 0) mountedMs = performance.now() - t0
    const got = await readFile(join(mnt, CONFIG_PATH), 'utf8').catch(() => undefined)
    if (got === CONFIG) return mountedMs
    if (got !== undefined) throw new Error(`rafspeer: wrong config bytes through the mount: ${JSON.stringify(got.slice(0, 80))}`)
    if (Date.now() > end) throw new Error(`rafspeer: ${CONFIG_PATH} not readable within ${deadlineMs} ms`)
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

/** `npm run build` bundles the CLI (cli/bundle.mjs marks it); a build with `tsc` alone leaves hundreds of files to load. */
async function cliBundled (): Promise<boolean> {
  return (await readFile(CLI, 'utf8')).slice(0, 200).includes('bundled by cli/bundle.mjs')
}

async function cliMountAvailable (): Promise<boolean> {
  const help = await run(process.execPath, [CLI, 'mount', '--help']).catch(() => '')
  return ['--foreground', '--cache-dir', '--work-dir', '--prefetch', '--mode'].every(f => help.includes(f))
}

async function rafspeerCli (reg: RegistryServer, ref: string, dir: string, mountMode: string, cli = CLI): Promise<ColdRun> {
  const mnt = join(dir, 'mnt')
  for (const d of ['mnt', 'cache', 'work']) await mkdir(join(dir, d))
  await dropCaches()
  let child: ChildProcess | undefined
  let exited: string | undefined
  let stderr = ''
  try {
    return await counted(reg, async () => {
      const t = performance.now()
      child = spawn(process.execPath, [cli, 'mount', ref, mnt, '--foreground', '--cache-dir', join(dir, 'cache'), '--work-dir', join(dir, 'work'),
        '--socket', join(dir, 'admin.sock'), '--prefetch', 'none', '--mode', mountMode], { stdio: ['ignore', 'ignore', 'pipe'] })
      child.stderr!.on('data', (d: Buffer) => { stderr += d.toString() })
      child.on('exit', (code, signal) => { exited = `rafspeer mount exited early (${code ?? signal}): ${stderr.trim()}` })
      const mountedMs = await firstRead(mnt, t, 120_000, () => exited)
      return { ...(mountedMs !== undefined ? { mountedMs } : {}), firstByteMs: performance.now() - t }
    })
  } finally {
    if (child !== undefined && exited === undefined) {
      const gone = new Promise(resolve => child!.once('exit', resolve))
      child.kill('SIGTERM')
      await Promise.race([gone, new Promise(resolve => setTimeout(resolve, 15_000))])
      if (exited === undefined) child.kill('SIGKILL')
    }
    if (!await waitFor(async () => (await mountsUnder(mnt)).length === 0, 10_000)) await forceUnmountUnder(mnt)
  }
}

/**
 * `rafspeer mount REF MNT --socket S` (the client command, a new process) through a `rafspeer daemon` started
 * before the clock with an empty cache and work directory: the clock covers the client's start, the daemon's
 * mount (manifest, bootstrap, the kernel mount) and the first read.
 */
async function rafspeerViaDaemon (reg: RegistryServer, ref: string, dir: string, mountMode: string): Promise<ColdRun> {
  const mnt = join(dir, 'mnt')
  await mkdir(mnt)
  const daemon = await startDaemon(join(dir), { log: { level: 'info' } })
  try {
    await dropCaches()
    return await counted(reg, async () => {
      const t = performance.now()
      let failed: string | undefined
      let stderr = ''
      const child = spawn(process.execPath, [CLI, 'mount', ref, mnt, '--socket', daemon.socket, '--prefetch', 'none', '--mode', mountMode],
        { stdio: ['ignore', 'ignore', 'pipe'] })
      child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
      child.on('exit', (code, signal) => { if (code !== 0) failed = `rafspeer mount failed (${code ?? signal}): ${stderr.trim()}\n${daemon.log().slice(-2000)}` })
      const mountedMs = await firstRead(mnt, t, 120_000, () => failed)
      return { ...(mountedMs !== undefined ? { mountedMs } : {}), firstByteMs: performance.now() - t }
    })
  } finally {
    await daemon.stop()
    if (!await waitFor(async () => (await mountsUnder(mnt)).length === 0, 10_000)) await forceUnmountUnder(mnt)
  }
}

async function rafspeerInProcess (reg: RegistryServer, ref: string, dir: string, mountMode: 'auto' | 'fuse' | 'erofs-lazy'): Promise<ColdRun> {
  const mnt = join(dir, 'mnt')
  await mkdir(mnt)
  await dropCaches()
  let mm: MountManager | undefined
  let cache: BlobCache | undefined
  try {
    return await counted(reg, async () => {
      const t = performance.now()
      cache = await BlobCache.open(join(dir, 'cache'))
      mm = new MountManager({ cache, fuse: new FuseNativeBackend() }, { workDir: join(dir, 'work') })
      await mm.mount({ source: ref, mountpoint: mnt, mode: mountMode, prefetch: 'none' })
      const mountedMs = performance.now() - t
      await firstRead(mnt, t, 120_000, () => undefined)
      return { mountedMs, firstByteMs: performance.now() - t }
    })
  } finally {
    await mm?.stop().catch(() => {})
    await cache?.close().catch(() => {})
    await forceUnmountUnder(mnt)
  }
}

export async function benchColdStart (opts: ColdStartOptions = {}): Promise<ColdStartResult> {
  if (process.getuid?.() !== 0) throw new Error('the cold-start bench needs root (drop_caches, umoci unpack, FUSE)')
  const bandwidth = opts.bandwidth ?? 100 << 20
  const shape = { bigFiles: opts.bigFiles ?? 4, bigFileBytes: opts.bigFileBytes ?? 128 << 20, smallFiles: opts.smallFiles ?? 300 }
  const runs = opts.runs ?? 3
  const work = await mkdtemp(join(opts.workParent ?? tmpdir(), 'rafs-bench-cold-'))
  const client = new RegistryClient({ plainHttp: 'auto' })
  let reg: RegistryServer | undefined
  try {
    const root = join(work, 'registry')
    reg = await startRegistryServer({ root })
    process.stderr.write('cold: building and pushing the OCI image\n')
    const img = await buildImage(work, shape)
    await pushOciImage(img, `${reg.host}/bench/app:oci`)
    await rm(img.layout, { recursive: true, force: true })
    process.stderr.write('cold: converting\n')
    await convertImage(`${reg.host}/bench/app:oci`, `${reg.host}/bench/app:rafs`, { client, workDir: work })
    const image = {
      ociBytes: await manifestBytes(client, `${reg.host}/bench/app:oci`),
      rafsBytes: await manifestBytes(client, `${reg.host}/bench/app:rafs`),
      files: shape.smallFiles + 1 + shape.bigFiles,
      bigBytes: shape.bigFiles * shape.bigFileBytes
    }
    await reg.stop()
    reg = await startRegistryServer({ root, bandwidthLimit: bandwidth })
    const host = reg.host

    const mountMode = opts.mountMode ?? 'auto'
    const mode = opts.rafspeer ?? 'auto'
    const useCli = mode === 'cli' || (mode === 'auto' && await cliMountAvailable())
    if (mode === 'cli' && !useCli) throw new Error(`${CLI} has no usable mount --foreground`)
    if (opts.baselineCli !== undefined && !useCli) throw new Error('a baseline CLI is compared with ours: ours must run as a CLI too')
    const baseline: ColdRun[] = []
    const pulls: ColdRun[] = []
    const mounts: ColdRun[] = []
    const inProc: ColdRun[] = []
    const viaDaemon: ColdRun[] = []
    for (let i = 0; i < runs; i++) {
      // alternate, so that neither path always runs on a machine the other just warmed
      const pd = join(work, `pull${i}`)
      await mkdir(pd)
      pulls.push(await fullPull(reg, `${host}/bench/app:oci`, pd))
      await rm(pd, { recursive: true, force: true })
      process.stderr.write(`cold: full pull ${(pulls[i]!.ms / 1000).toFixed(2)} s, ${pulls[i]!.bytes} bytes\n`)
      const md = join(work, `mount${i}`)
      await mkdir(md)
      mounts.push(useCli ? await rafspeerCli(reg, `${host}/bench/app:rafs`, md, mountMode) : await rafspeerInProcess(reg, `${host}/bench/app:rafs`, md, mountMode))
      await rm(md, { recursive: true, force: true })
      process.stderr.write(`cold: rafspeer ${(mounts[i]!.ms / 1000).toFixed(2)} s, ${mounts[i]!.bytes} bytes\n`)
      if (useCli) {
        await mkdir(md)
        inProc.push(await rafspeerInProcess(reg, `${host}/bench/app:rafs`, md, mountMode))
        await rm(md, { recursive: true, force: true })
        process.stderr.write(`cold: rafspeer in-process ${(inProc[i]!.ms / 1000).toFixed(2)} s, ${inProc[i]!.bytes} bytes\n`)
      }
      if (useCli) {
        await mkdir(md)
        viaDaemon.push(await rafspeerViaDaemon(reg, `${host}/bench/app:rafs`, md, mountMode))
        await rm(md, { recursive: true, force: true })
        process.stderr.write(`cold: rafspeer mount through a running daemon ${(viaDaemon[i]!.ms / 1000).toFixed(2)} s, ${viaDaemon[i]!.bytes} bytes\n`)
      }
      if (opts.baselineCli !== undefined) {
        await mkdir(md)
        baseline.push(await rafspeerCli(reg, `${host}/bench/app:rafs`, md, mountMode, opts.baselineCli))
        await rm(md, { recursive: true, force: true })
        process.stderr.write(`cold: baseline CLI ${(baseline[i]!.ms / 1000).toFixed(2)} s\n`)
      }
    }
    const versionCold = async (cli: string): Promise<number> => {
      await dropCaches()
      const t = performance.now()
      await run(process.execPath, [cli, '--version'])
      return performance.now() - t
    }
    const cliVersionColdMs = useCli ? await versionCold(CLI) : undefined
    const baselineVersionMs = opts.baselineCli !== undefined ? await versionCold(opts.baselineCli) : undefined
    const fullMs = median(pulls.map(r => r.ms))
    const ourMs = median(mounts.map(r => r.ms))
    return {
      machine: await machineNotes(),
      bandwidth,
      image,
      runs,
      rafspeerPath: useCli ? 'cli' : 'in-process',
      mountMode,
      fullPull: { runs: pulls, medianMs: fullMs, medianBytes: median(pulls.map(r => r.bytes)) },
      rafspeer: { runs: mounts, medianMs: ourMs, medianBytes: median(mounts.map(r => r.bytes)) },
      ...(inProc.length > 0 ? { inProcess: { runs: inProc, medianMs: median(inProc.map(r => r.ms)), medianBytes: median(inProc.map(r => r.bytes)) } } : {}),
      ...(viaDaemon.length > 0
        ? { viaDaemon: { runs: viaDaemon, medianMs: median(viaDaemon.map(r => r.ms)), medianBytes: median(viaDaemon.map(r => r.bytes)), ratio: fullMs / median(viaDaemon.map(r => r.ms)) } }
        : {}),
      ratio: fullMs / ourMs,
      ...(cliVersionColdMs !== undefined ? { cliVersionColdMs } : {}),
      ...(useCli ? { cliBundled: await cliBundled() } : {}),
      ...(opts.baselineCli !== undefined
        ? { baseline: { cli: opts.baselineCli, runs: baseline, medianMs: median(baseline.map(r => r.ms)), cliVersionColdMs: baselineVersionMs! } }
        : {})
    }
  } finally {
    const left = await forceUnmountUnder(work)
    if (left.length > 0) process.stderr.write(`cold: had to detach ${left.join(', ')}\n`)
    await client.close()
    await reg?.stop()
    await rm(work, { recursive: true, force: true })
  }
}

export function formatColdStart (r: ColdStartResult): string {
  const mb = (n: number): string => (n / (1 << 20)).toFixed(1)
  const size = (n: number): string => n >= 1 << 20 ? `${mb(n)} MiB` : `${(n / 1024).toFixed(1)} KiB`
  const s = (ms: number): string => (ms / 1000).toFixed(2)
  const part = (runs: ColdRun[], key: string): string => s(median(runs.map(x => x.parts?.[key] ?? 0)))
  return [
    `cold start: OCI image ${mb(r.image.ociBytes)} MiB (${r.image.files} files, ${mb(r.image.bigBytes)} MiB incompressible), RAFS ${mb(r.image.rafsBytes)} MiB; ` +
      `registry capped at ${mb(r.bandwidth)} MiB/s; page cache dropped before each run; median of ${r.runs}; ${r.machine}`,
    `  full pull (baseline): skopeo copy ${part(r.fullPull.runs, 'skopeoCopyMs')} s + umoci unpack ${part(r.fullPull.runs, 'umociUnpackMs')} s → ` +
      `/${CONFIG_PATH} readable after ${s(r.fullPull.medianMs)} s; registry served ${size(r.fullPull.medianBytes)}`,
    `  rafspeer mount --prefetch none --mode ${r.mountMode} (${r.rafspeerPath === 'cli' ? `node dist/cli/main.js mount --foreground, a new process${r.cliBundled === true ? ', bundled CLI' : r.cliBundled === false ? ', unbundled CLI (tsc only)' : ''}` : 'in-process MountManager'}): ` +
      `mounted after ${part(r.rafspeer.runs, 'mountedMs')} s, first byte of /${CONFIG_PATH} after ${s(r.rafspeer.medianMs)} s; ` +
      `registry served ${size(r.rafspeer.medianBytes)} in ${median(r.rafspeer.runs.map(x => x.requests))} requests` +
      (r.cliVersionColdMs !== undefined ? ` (a cold \`rafspeer --version\` alone: ${s(r.cliVersionColdMs)} s)` : ''),
    ...(r.inProcess !== undefined
      ? [`  the same mount by a MountManager in the bench process (no process start): mounted after ${part(r.inProcess.runs, 'mountedMs')} s, ` +
          `first byte after ${s(r.inProcess.medianMs)} s`]
      : []),
    ...(r.viaDaemon !== undefined
      ? [`  \`rafspeer mount\` (a new client process) through a daemon already running on the node, empty cache: mounted after ` +
          `${part(r.viaDaemon.runs, 'mountedMs')} s, first byte after ${s(r.viaDaemon.medianMs)} s = ${r.viaDaemon.ratio.toFixed(1)}x the full pull`]
      : []),
    ...(r.baseline !== undefined
      ? [`  the same mount by the baseline CLI ${r.baseline.cli} (in the same rounds): first byte after ${s(r.baseline.medianMs)} s ` +
          `(${part(r.baseline.runs, 'firstByteMs')}); ours takes ${(r.rafspeer.medianMs / r.baseline.medianMs).toFixed(2)}x its time; ` +
          `its cold \`--version\`: ${s(r.baseline.cliVersionColdMs)} s`]
      : []),
    `  ratio full pull / rafspeer mount --foreground: ${r.ratio.toFixed(1)}x (goal ≥ 20x, as Nydus); bytes ${(r.fullPull.medianBytes / Math.max(1, r.rafspeer.medianBytes)).toFixed(0)}x fewer`
  ].join('\n')
}
