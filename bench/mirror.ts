/**
 * The registry-mirror benchmark: N nodes on this machine, each a `rafspeer daemon` with a mirror and its own real
 * containerd, pull one multi-layer image (256 MiB of incompressible layers by default) from a registry whose egress
 * is capped (rafspeer's embedded registry, 32 MiB/s by default), all at once:
 * - baseline 1: one containerd pulling straight from the registry, alone;
 * - baseline 2: N containerd pulling straight from the registry at once;
 * - target: N containerd pulling through their nodes' mirrors at once (fresh caches).
 * Reports registry egress / image blob bytes (goal ≤ 1.1; straight it is N), the slowest mirrored pull / one pull
 * alone (goal ≤ 1.5), and the mirror's throughput for a cached blob vs reading the same file from disk.
 * `ctr images pull` unpacks as it pulls; `--fetch-only` times `ctr content fetch` (the download alone) instead.
 */
import { createReadStream } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startRegistryServer } from '../registry/index.js'
import { writeHostsToml, type ProxyMetricsJson } from '../proxy/index.js'
import { startContainerd, type Containerd } from '../test/helpers/containerd.js'
import { startDaemon, type TestDaemon } from '../test/helpers/daemon.js'
import { buildLayeredImage, pushLayeredImage } from '../test/helpers/layered-image.js'

export interface MirrorBenchOptions {
  nodes?: number
  /** bytes of layer content, split over the layers */
  imageBytes?: number
  /** registry egress, bytes per second */
  bandwidth?: number
  fetchOnly?: boolean
  /** skip the N-at-once straight baseline (diagnosis) */
  mirroredOnly?: boolean
  /** write each daemon's debug log here (`node<i>.log`) */
  logsDir?: string
  log?: (line: string) => void
}

export interface MirrorBenchResult {
  nodes: number
  blobBytes: number
  layers: number
  bandwidth: number
  mode: 'pull' | 'fetch'
  aloneMs: number
  directMs: number[]
  directEgress: number
  mirrorMs: number[]
  mirrorEgress: number
  /** registry egress / image blob bytes through the mirrors (goal ≤ 1.1) */
  egressRatio: number
  directEgressRatio: number
  /** slowest mirrored pull / one direct pull alone (goal ≤ 1.5) */
  slowdown: number
  directSlowdown: number
  peerBytes: number[]
  /** share of the machine's CPU time busy during the straight and the mirrored phase */
  directBusy: number
  mirrorBusy: number
  /** CPU time of each daemon and of the registry during the mirrored phase */
  daemonCpuMs: number[]
  registryCpuMs: number
  /** MB/s of a cached blob through the mirror, and of the same file read from disk */
  cachedMBps: number
  diskMBps: number
}

const MiB = 1 << 20

/** The machine's busy share (0..1) over `f`, from /proc/stat: where the time went when a phase is slow. */
async function busy<T> (f: () => Promise<T>): Promise<{ value: T, busy: number }> {
  const read = async (): Promise<{ idle: number, total: number }> => {
    const cpu = (await readFile('/proc/stat', 'utf8')).split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number)
    return { idle: cpu[3]! + cpu[4]!, total: cpu.reduce((a, b) => a + b, 0) }
  }
  const a = await read()
  const value = await f()
  const b = await read()
  return { value, busy: 1 - (b.idle - a.idle) / Math.max(1, b.total - a.total) }
}

async function timed (f: () => Promise<void>): Promise<number> {
  const t0 = performance.now()
  await f()
  return Math.round(performance.now() - t0)
}

async function drain (url: string): Promise<number> {
  return await new Promise((resolve, reject) => {
    request(url, res => {
      let n = 0
      if (res.statusCode !== 200) { reject(new Error(`${url}: HTTP ${res.statusCode}`)); res.resume(); return }
      res.on('data', (b: Buffer) => { n += b.length })
      res.on('end', () => { resolve(n) })
      res.on('error', reject)
    }).on('error', reject).end()
  })
}

async function readFileThrough (path: string): Promise<number> {
  let n = 0
  for await (const b of createReadStream(path, { highWaterMark: 1 << 20 })) n += (b as Buffer).length
  return n
}

export async function benchMirror (opts: MirrorBenchOptions = {}): Promise<MirrorBenchResult> {
  const nodes = opts.nodes ?? 4
  const imageBytes = opts.imageBytes ?? 256 * MiB
  const bandwidth = opts.bandwidth ?? 32 * MiB
  const log = opts.log ?? (() => {})
  const mode = opts.fetchOnly === true ? 'fetch' : 'pull'
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-bench-mirror-'))
  const cleanups: Array<() => Promise<unknown>> = []
  try {
    // five layers, large to small, like an application image
    const weights = [0.375, 0.25, 0.1875, 0.125, 0.0625]
    const layers = weights.map(w => Math.round(imageBytes * w))
    log(`building a ${layers.length}-layer image of ${imageBytes / MiB} MiB`)
    const img = await buildLayeredImage(join(dir, 'image'), { layers, seed: 'bench-mirror', gzipLevel: 0 })
    const reg = await startRegistryServer({ root: join(dir, 'registry'), bandwidthLimit: bandwidth })
    cleanups.push(async () => { await reg.stop() })
    const ref = `${reg.host}/bench/app:1`
    await pushLayeredImage(img, ref)
    const blobBytes = img.totalBlobBytes

    const containerds = async (tag: string): Promise<Containerd[]> => {
      const out: Containerd[] = []
      for (let i = 0; i < nodes; i++) {
        await mkdir(join(dir, tag), { recursive: true })
        const c = await startContainerd({ dir: join(dir, tag) })
        cleanups.push(async () => { await c.stop() })
        out.push(c)
      }
      return out
    }
    const pull = async (c: Containerd, hostsDir?: string): Promise<number> => await timed(async () => {
      const r = mode === 'pull'
        ? await c.pull(ref, { ...(hostsDir !== undefined ? { hostsDir } : { plainHttp: true }), timeoutMs: 900_000 })
        : await c.ctr(['content', 'fetch', ...(hostsDir !== undefined ? ['--hosts-dir', hostsDir] : ['--plain-http']), ref], { timeoutMs: 900_000 })
      if (r.code !== 0) throw new Error(`ctr ${mode} ${ref} failed: ${r.stderr.slice(-2000)}`)
    })
    const egress = (): number => reg.counters.bytesServed()

    // baseline 1: one pull alone
    const [lone] = await containerds('alone')
    let e0 = egress()
    const aloneMs = await pull(lone!)
    log(`one ${mode} alone, straight from the registry: ${aloneMs} ms, ${((egress() - e0) / MiB).toFixed(1)} MiB of egress`)

    // baseline 2: N at once, straight (skipped with `mirroredOnly`, to look at the mirrors alone)
    const direct = opts.mirroredOnly === true ? [] : await containerds('direct')
    e0 = egress()
    const { value: directMs, busy: directBusy } = await busy(async () => await Promise.all(direct.map(async c => await pull(c))))
    const directEgress = egress() - e0
    log(`${nodes} at once, straight: ${directMs.join(', ')} ms, ${(directEgress / MiB).toFixed(1)} MiB of egress`)

    // target: N at once through their mirrors, fresh caches
    const daemons: TestDaemon[] = []
    const mirrors: string[] = []
    let scheduler = ''
    for (let i = 0; i < nodes; i++) {
      const home = join(dir, `node${i}`)
      await mkdir(home, { recursive: true })
      const d = await startDaemon(home, {
        p2p: { listen: ['/ip4/127.0.0.1/tcp/0'] },
        scheduler: i === 0 ? { embedded: true } : { address: scheduler },
        proxy: { listen: '127.0.0.1:0' },
        log: { level: opts.logsDir !== undefined ? 'debug' : 'warn', format: 'text' }
      })
      cleanups.push(async () => {
        await d.stop()
        if (opts.logsDir !== undefined) await writeFile(join(opts.logsDir, `node${i}.log`), d.log())
      })
      daemons.push(d)
      const info = await d.client.daemon()
      if (i === 0) scheduler = info.p2p!.addrs.find(a => a.includes('/ip4/127.0.0.1/'))!
      mirrors.push((info.proxy as { listen: string }).listen)
    }
    const through = await containerds('mirrored')
    const hostsDirs = await Promise.all(mirrors.map(async (m, i) => {
      const hostsDir = join(dir, `hosts${i}`)
      await writeHostsToml({ hostsDir, mirror: `http://${m}`, registries: [reg.host] })
      return hostsDir
    }))
    const procCpu = async (pid: number): Promise<number> => {
      const f = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]!.split(' ')
      return (Number(f[11]) + Number(f[12])) * 10
    }
    const cpu0 = await Promise.all(daemons.map(async d => await procCpu(d.proc.pid!)))
    const self0 = process.cpuUsage()
    e0 = egress()
    const { value: mirrorMs, busy: mirrorBusy } = await busy(async () => await Promise.all(through.map(async (c, i) => await pull(c, hostsDirs[i]))))
    const mirrorEgress = egress() - e0
    const daemonCpuMs = await Promise.all(daemons.map(async (d, i) => await procCpu(d.proc.pid!) - cpu0[i]!))
    const selfCpu = process.cpuUsage(self0)
    const registryCpuMs = Math.round((selfCpu.user + selfCpu.system) / 1000)
    log(`CPU ms in the mirrored phase: daemons ${daemonCpuMs.join(', ')}; this process (the registry) ${registryCpuMs}`)
    const metrics = await Promise.all(daemons.map(async d => (await d.client.metricsJson()).proxy as ProxyMetricsJson))
    log(`${nodes} at once through their mirrors: ${mirrorMs.join(', ')} ms, ${(mirrorEgress / MiB).toFixed(1)} MiB of egress`)

    // a cached blob through a mirror vs the same bytes from disk (the OCI layout's file), best of 3
    const biggest = img.layerDigests[0]!
    const file = join(img.layout, 'blobs', 'sha256', biggest.slice('sha256:'.length))
    const size = (await stat(file)).size
    await readFile(file) // warm the page cache for the disk baseline too
    let cachedMs = Infinity
    let diskMs = Infinity
    for (let r = 0; r < 3; r++) {
      cachedMs = Math.min(cachedMs, await timed(async () => {
        const n = await drain(`http://${mirrors[1]}/v2/bench/app/blobs/${biggest}?ns=${encodeURIComponent(reg.host)}`)
        if (n !== size) throw new Error(`mirror sent ${n} of ${size} bytes`)
      }))
      diskMs = Math.min(diskMs, await timed(async () => { await readFileThrough(file) }))
    }
    const mbps = (ms: number): number => Math.round(size / 1e6 / (ms / 1000))
    return {
      nodes,
      blobBytes,
      layers: layers.length,
      bandwidth,
      mode,
      aloneMs,
      directMs,
      directEgress,
      mirrorMs,
      mirrorEgress,
      egressRatio: mirrorEgress / blobBytes,
      directEgressRatio: directEgress / blobBytes,
      slowdown: Math.max(...mirrorMs) / aloneMs,
      directSlowdown: directMs.length === 0 ? 0 : Math.max(...directMs) / aloneMs,
      peerBytes: metrics.map(m => m.bytesBySource.peer),
      directBusy,
      mirrorBusy,
      daemonCpuMs,
      registryCpuMs,
      cachedMBps: mbps(cachedMs),
      diskMBps: mbps(diskMs)
    }
  } finally {
    for (const c of cleanups.reverse()) await c().catch(() => {})
    await rm(dir, { recursive: true, force: true })
  }
}

export function formatMirrorBench (r: MirrorBenchResult): string {
  const s = (ms: number): string => `${(ms / 1000).toFixed(1)} s`
  return [
    `mirror: ${r.nodes} nodes, each with its own containerd, \`ctr ${r.mode === 'pull' ? 'images pull' : 'content fetch'}\` of a ${r.layers}-layer image ` +
      `(${(r.blobBytes / MiB).toFixed(0)} MiB of blobs), registry egress capped at ${(r.bandwidth / MiB).toFixed(0)} MiB/s`,
    `  one pull alone, straight from the registry: ${s(r.aloneMs)} (baseline)`,
    ...(r.directMs.length > 0 ? [`  ${r.nodes} at once, straight: slowest ${s(Math.max(...r.directMs))} = ${r.directSlowdown.toFixed(2)}x; registry egress / image ${r.directEgressRatio.toFixed(2)}`] : []),
    `  ${r.nodes} at once, through their mirrors: slowest ${s(Math.max(...r.mirrorMs))} = ${r.slowdown.toFixed(2)}x (goal ≤ 1.5); registry egress / image ${r.egressRatio.toFixed(3)} (goal ≤ 1.1)`,
    `  bytes from peers per node: ${r.peerBytes.map(b => `${(b / MiB).toFixed(0)} MiB`).join(', ')}; CPU busy ${Math.round(r.directBusy * 100)}% straight, ${Math.round(r.mirrorBusy * 100)}% through the mirrors`,
    `  a cached blob through the mirror: ${r.cachedMBps} MB/s vs the same file from disk ${r.diskMBps} MB/s = ${(r.cachedMBps / r.diskMBps).toFixed(2)}x`
  ].join('\n')
}
