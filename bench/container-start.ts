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
 * 3. the same with `mode: 'auto'` (the best mode this kernel allows); the mode the daemon logged is reported;
 * 4. the same, of `bench/py:nydus-hot`: the image converted again with `--prefetch-files`, the list recorded by
 *    `rafspeer access-list` from one FUSE-mode start of `bench/py:nydus` on a node of its own (before the cap), as Nydus users
 *    record and replay start-up access lists; the mount prefetches the table by default.
 * For each: the cold start, OCI cold / this cold (the speed-up, goal ≥ 10x), the registry's body bytes sent between
 * the start of the pull and the first output line, and a warm second start on the same node (a new container of the
 * same image, no new pull, page cache kept) against the OCI warm start (goal ≤ 1.2x). `runs` repeats the cold starts
 * and reports medians.
 *
 * The registry is on this process's event loop: everything that talks to it runs as an asynchronous child.
 */
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, join } from 'node:path'
import { RegistryClient, startRegistryServer, type RegistryServer } from '../registry/index.js'
import { writeHostsToml } from '../proxy/index.js'
import { CTR_BIN, startContainerd, type Containerd } from '../test/helpers/containerd.js'
import { cliArgv, startDaemon, type TestDaemon } from '../test/helpers/daemon.js'
import { BUSYBOX, PYLIB, PYTHON, buildAndPush, type BenchImageShape } from './container-image.js'
import { dropCaches, forceUnmountUnder, machineNotes, median } from './measure.js'

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
  key: 'oci' | 'fuse' | 'auto' | 'table'
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
  image: BenchImageShape
  setupMs: number
  convertMs: number
  /**
   * the "prefetch table" row's list: recorded by `rafspeer access-list` on a first start (FUSE mode, another node),
   * then `rafspeer convert --prefetch-files` of the OCI image again
   */
  prefetchList: { files: number, bytes: number, recordMs: number, convertMs: number }
  rows: StartRow[]
}

const MiB = 1 << 20
const NS = 'k8s.io'
const SCRIPT = "import json, email, http.client; print('ready', flush=True)"
const COMMAND = ['python3', '-c', SCRIPT]
const PULL_TIMEOUT_S = 600
const RUN_TIMEOUT_MS = 300_000

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

/**
 * One cold start and one warm second start of `row` on a fresh node under `parent`; `afterCold` runs between the two
 * (the node's daemon still up), to look at what the cold start did.
 */
async function coldStart (row: RowSpec, parent: string, reg: RegistryServer, hostsDir: string, i: number, log: (l: string) => void, logsDir?: string,
  afterCold?: (daemon: TestDaemon | undefined) => Promise<void>): Promise<StartRun> {
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
    await afterCold?.(daemon)
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

/**
 * What a Nydus user does to get a prefetch table: one start of the plain image on a node of its own (FUSE mode, the
 * registry not yet capped), `rafspeer access-list` of its mount, and `rafspeer convert --prefetch-files` of the OCI
 * image with that list, pushed as `bench/py:nydus-hot`.
 */
async function recordAndReconvert (work: string, reg: RegistryServer, convWork: string, log: (l: string) => void, logsDir?: string): Promise<ContainerStartResult['prefetchList']> {
  const t0 = performance.now()
  const hostsDir = join(work, 'certs.d-record')
  await writeHostsToml({ hostsDir, mirror: `http://${reg.host}`, registries: [reg.host] })
  // per-file FUSE sees exactly the files read; erofs-lazy sees blob ranges, which the kernel's readahead of a blob
  // file stretches over the next files in the blob (an erofs-lazy recording of this start lists 130 files, 19.8 MiB)
  const spec: RowSpec = { key: 'fuse', label: 'recording start', ref: `${reg.host}/bench/py:nydus`, snapshotter: 'rafspeer', mode: 'fuse' }
  const files: string[] = []
  let bytes = 0
  await coldStart(spec, work, reg, hostsDir, 0, log, undefined, async (daemon) => {
    if (daemon === undefined) throw new Error('the recording start has no daemon')
    for (const m of await daemon.client.mounts()) {
      const list = await daemon.client.accessList(m.mountpoint)
      for (const f of list.files) {
        files.push(f)
        bytes += (await stat(join(m.mountpoint, f))).size
      }
    }
    if (files.length === 0) throw new Error('the recording start read no file through a mount of the daemon')
  })
  const recordMs = performance.now() - t0
  const listFile = join(work, 'prefetch-files.txt')
  await writeFile(listFile, files.map(f => f + '\n').join(''))
  if (logsDir !== undefined) {
    await mkdir(logsDir, { recursive: true })
    await writeFile(join(logsDir, 'prefetch-files.txt'), files.map(f => f + '\n').join(''))
  }
  log(`start: recorded ${files.length} files (${(bytes / MiB).toFixed(1)} MiB) read by the first start; converting with --prefetch-files`)
  const t1 = performance.now()
  await rafspeer(['convert', `${reg.host}/bench/py:oci`, `${reg.host}/bench/py:nydus-hot`, '--work-dir', convWork, '--prefetch-files', listFile], 1_800_000)
  return { files: files.length, bytes, recordMs, convertMs: performance.now() - t1 }
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
    image.nydusBytes = await manifestBytes(`${reg.host}/bench/py:nydus`)
    log(`start: OCI ${(image.ociBytes / MiB).toFixed(1)} MiB, Nydus ${(image.nydusBytes / MiB).toFixed(1)} MiB (convert ${(convertMs / 1000).toFixed(1)} s)`)
    const prefetchList = await recordAndReconvert(work, reg, convWork, log, opts.logsDir)
    await rm(convWork, { recursive: true, force: true })
    // the same storage behind the cap for every measured pull
    await reg.stop()
    reg = await startRegistryServer({ root, bandwidthLimit: bandwidth })
    const hostsDir = join(work, 'certs.d')
    await writeHostsToml({ hostsDir, mirror: `http://${reg.host}`, registries: [reg.host] })

    const specs: RowSpec[] = [
      { key: 'oci', label: 'OCI image, overlayfs snapshotter', ref: `${reg.host}/bench/py:oci`, snapshotter: 'overlayfs' },
      { key: 'fuse', label: 'rafspeer snapshotter, FUSE mode', ref: `${reg.host}/bench/py:nydus`, snapshotter: 'rafspeer', mode: 'fuse' },
      { key: 'auto', label: 'rafspeer snapshotter, auto mode', ref: `${reg.host}/bench/py:nydus`, snapshotter: 'rafspeer', mode: 'auto' },
      { key: 'table', label: 'rafspeer snapshotter, auto mode, prefetch table', ref: `${reg.host}/bench/py:nydus-hot`, snapshotter: 'rafspeer', mode: 'auto' }
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
    return { machine: await machineNotes(), bandwidth, runs, command: COMMAND, image, setupMs, convertMs, prefetchList, rows }
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
    row.key === 'auto' || row.key === 'table' ? `${row.label} (${row.modesUsed.length > 0 ? row.modesUsed.join('+') : '?'} mode used)` : row.label
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
    `  prefetch table: ${r.prefetchList.files} files (${mb(r.prefetchList.bytes)} MiB) recorded with \`rafspeer access-list\` from a first start ` +
      `(FUSE mode, another node), then \`rafspeer convert --prefetch-files\` (${(r.prefetchList.convertMs / 1000).toFixed(1)} s)`,
    '  goals: speed-up (OCI cold / this cold) ≥ 10x; warm second start ≤ 1.2x the OCI warm second start. ' +
      '"registry sent": blob and manifest bytes from the start of the pull to the first output line'
  ].join('\n')
}

