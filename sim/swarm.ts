/**
 * A swarm on this machine: the embedded registry (with an egress cap), a scheduler, and N real `rafspeer daemon`
 * processes with P2P on loopback (each with its own cache, identity and bandwidth caps). An image is published from
 * a directory; every node mounts it lazily with FUSE and reads the whole tree, which is checked against the
 * source. The report gives registry egress, bytes each node got from peers, the registry and its cache, and
 * completion times. `rafspeer sim` and `rafspeer demo` are this, with different defaults.
 *
 * @example
 * ```ts
 * const report = await runSwarm({ nodes: 8, imageBytes: 256 << 20, bandwidth: 50 << 20 })
 * console.log(report.registryBytes / report.blobBytes, report.maxMs)
 * ```
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { delay } from '../base/index.js'
import { publishDirectory } from '../convert/index.js'
import { AdminClient, type SourceReason } from '../peer/index.js'
import { RegistryClient, startRegistryServer, type RegistryServer } from '../registry/index.js'
import { startSchedulerNode, type SchedulerNode } from '../scheduler/index.js'
import { contentMap, diffContent, generateTree, type ContentMap } from './source-tree.js'

export interface SwarmInit {
  nodes: number
  /** generate an image of about this many bytes of file data (ignored with `source`) */
  imageBytes?: number
  /** publish this directory instead of a generated tree */
  source?: string
  /** bytes/s of the registry's egress and of each node's upload and download (unlimited when absent) */
  bandwidth?: number
  /** what each mount prefetches besides what its reader reads (default 'none': the readers pull everything) */
  prefetch?: 'all' | 'none'
  /** start node i's reader `staggerMs * i` after the first (default 0: all at once) */
  staggerMs?: number
  /** what the scheduler indexes (the daemons' `p2p.directory`): each chunk's holders, or who works on which blob */
  directory?: 'chunks' | 'blobs'
  /** how every node mounts the image (default `auto`: erofs-lazy where the host can, else per-file FUSE) */
  mode?: 'auto' | 'fuse' | 'erofs-lazy'
  /** parent of the run's directory (default the OS temp dir); the run's directory is removed unless `keep` */
  workDir?: string
  keep?: boolean
  chunkSize?: number
  /** the daemons' log level (their logs are in `<run>/nodeN/daemon.log`; default info) */
  logLevel?: 'error' | 'warn' | 'info' | 'debug'
  /** extra Node.js arguments of the daemons (e.g. `--cpu-prof`, `--cpu-prof-dir=DIR` to profile them) */
  daemonNodeArgs?: string[]
  /** progress lines */
  log?: (line: string) => void
  /** aborts the run (Ctrl-C): everything started is stopped and removed */
  signal?: AbortSignal
}

export interface NodeReport {
  id: number
  peerId: string
  /** from this node's start (after its stagger) to its last byte checked: its own mount and read time */
  completionMs: number
  /** when this node started, from the start of the reads (its stagger) */
  startMs: number
  /**
   * real mode: of `completionMs`, the mount (the daemon fetching the image's manifest and bootstrap, and the kernel's
   * mounts) before the read began: 0.1 s for one node alone here, 0.5–1.0 s for 8 mounting at once on two cores
   */
  mountMs?: number
  /**
   * real mode: the longest one read of the node's daemon waited for chunks fetched for it (its slowest miss; a read
   * behind a prefetch's batch, say), ms
   */
  readWaitMaxMs?: number
  /** real mode: chunks a read of it waited for on the neighbours too long and asked of the registry too */
  readHandOffs?: number
  /** the mount mode the node's daemon chose */
  mode: string
  /** plaintext chunk bytes this node fetched, by source */
  registryBytes: number
  peerBytes: number
  cacheBytes: number
  /** chunk bytes it served to neighbours */
  uploadBytes: number
  ok: boolean
  differences: string[]
  /** how its fetches went: latency of fetch attempts (all sources), and its requests to neighbours */
  fetchMs: { p50: number, p99: number, max: number }
  /** `streamsOpened` (real mode): chunk-protocol streams the requests needed (the rest went on streams kept open) */
  peerRequests: { sent: number, failed: number, timeouts: number, hedges: number, busy: number, notFound: number, badChunks: number, redirects: number, streamsOpened?: number }
  /**
   * what its chunk server answered neighbours besides chunks: BUSY with every upload slot taken, BUSY after a wait
   * for its own fetch of the chunk, REDIRECT to a peer it was sending the chunk to
   */
  served: { refused: number, urgentUploads: number, busyWhileFetching: number, redirects: number }
  /** blob-level directory: chunks its locator sent to the registry, by why (`SourceReason`), when it finished reading */
  registryChunks?: Record<SourceReason, number>
  /** blob-level directory: chunks nobody it followed had that it asked their assignee for, before the registry */
  assigneeAsks?: number
}

export interface SwarmReport {
  nodes: NodeReport[]
  /** file bytes of the image */
  imageBytes: number
  /** data blob bytes in the registry (what one full pull costs) */
  blobBytes: number
  /** blob bytes the registry sent (data and bootstrap layers) */
  registryBytes: number
  /** plaintext bytes nodes got from neighbours */
  peerBytes: number
  verifiedOk: boolean
  bandwidth: number | null
  p50Ms: number
  p95Ms: number
  maxMs: number
  /** the whole run, setup included */
  wallMs: number
  /** the same reader over the published source tree on this disk, page cache dropped: what a node's read costs at best */
  nativeReadMs: number
  /** plaintext bytes of each chunk of the image, blob after blob in chunk order: its layout, for the model */
  chunkSizes: number[]
  /**
   * CPU time (ms, all cores together) of the reading phase, from the first mount to the last node's last byte: the
   * daemons' (their FUSE servers included), the readers' (each a process of its own) and this process's (the
   * registry and the scheduler run here); undefined where it could not be read (`/proc`)
   */
  readCpuMs?: number
  /** that phase's length (ms): from the first mount to the last node's last byte */
  readMs: number
}

/** Node.js arguments running `module` (a sibling path without extension) from the same build as this file. */
function moduleArgv (module: string, args: string[]): string[] {
  const fromSources = import.meta.url.endsWith('.ts')
  const path = fileURLToPath(new URL(`${module}${fromSources ? '.ts' : '.js'}`, import.meta.url))
  return fromSources ? ['--import', 'tsx', path, ...args] : [path, ...args]
}

const daemonArgv = (args: string[]): string[] => moduleArgv('../cli/main', args)

/** Dirty pages written, clean ones dropped (root only; elsewhere the baseline reads a warm page cache). */
async function dropCaches (): Promise<void> {
  await new Promise<void>(resolve => { spawn('sync').once('close', () => { resolve() }).once('error', () => { resolve() }) })
  await writeFile('/proc/sys/vm/drop_caches', '3').catch(() => {})
}

/** A reader process started ahead of its read, loaded and waiting for its mountpoint (see reader.ts). */
interface Reader {
  pid: number | undefined
  /** reads the whole tree at `root` and ends the process */
  read: (root: string) => Promise<ContentMap>
  /** ends the process if it has not read (a run that failed before its reads) */
  kill: () => void
}

/** Starts a reader process (see reader.ts for why not here) and resolves once it is loaded. */
async function startReader (signal?: AbortSignal): Promise<Reader> {
  const proc = spawn(process.execPath, moduleArgv('./reader', ['-']), { stdio: ['pipe', 'pipe', 'pipe'], ...(signal !== undefined ? { signal } : {}) })
  const out: Buffer[] = []
  let err = ''
  proc.stderr?.on('data', (b: Buffer) => { err = (err + b.toString()).slice(-4000) })
  const closed = new Promise<number | null>((resolve, reject) => {
    proc.once('error', reject)
    proc.once('close', resolve)
  })
  const failure = (code: number | null): Error => new Error(err.trim() !== '' ? err.trim() : `the reader exited with ${code}`)
  // `ready` and a newline first, then the content map
  await new Promise<void>((resolve, reject) => {
    let head: string | undefined = ''
    proc.stdout?.on('data', (b: Buffer) => {
      if (head === undefined) { out.push(b); return }
      head += b.toString('latin1')
      const nl = head.indexOf('\n')
      if (nl < 0) return
      const line = head.slice(0, nl)
      const rest = Buffer.from(head.slice(nl + 1), 'latin1')
      head = undefined
      if (rest.length > 0) out.push(rest)
      if (line === 'ready') resolve()
      else reject(new Error(`the reader said ${JSON.stringify(line.slice(0, 80))}`))
    })
    closed.then(code => { reject(failure(code)) }, reject)
  })
  return {
    pid: proc.pid,
    read: async (root) => {
      proc.stdin?.end(`${root}\n`)
      const code = await closed
      if (code !== 0) throw failure(code)
      return new Map(JSON.parse(Buffer.concat(out).toString('utf8')) as Array<[string, string]>)
    },
    kill: () => { if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL') }
  }
}

interface RunningNode {
  id: number
  dir: string
  socket: string
  proc: ChildProcess
  client: AdminClient
  output: () => string
  exited: Promise<void>
}

/**
 * CPU ms (user + system) so far of this process with its children reaped (the readers, each in a process of its own
 * that ends with its read), and of `pids` (the daemons, running); undefined when one could not be read (`/proc`)
 */
async function cpuMsOf (pids: Array<number | undefined>): Promise<number | undefined> {
  // /proc/<pid>/stat: the command may hold spaces, so the fields count from its closing parenthesis; from there
  // utime, stime, cutime, cstime are the 12th to 15th
  const ticks = async (pid: number | 'self', children: boolean): Promise<number> => {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return Number(f[11]) + Number(f[12]) + (children ? Number(f[13]) + Number(f[14]) : 0)
  }
  try {
    let t = await ticks('self', true)
    for (const pid of pids) {
      if (pid === undefined) return undefined
      t += await ticks(pid, false)
    }
    return t * 1000 / CLOCK_TICKS
  } catch {
    return undefined
  }
}
/** USER_HZ, 100 on every Linux this runs on */
const CLOCK_TICKS = 100

async function startNode (id: number, dir: string, config: Record<string, unknown>, nodeArgs: string[], signal?: AbortSignal): Promise<RunningNode> {
  await mkdir(dir, { recursive: true })
  const socket = join(dir, 'admin.sock')
  const cfg = join(dir, 'daemon.json')
  await writeFile(cfg, JSON.stringify({ version: 1, socket, workDir: join(dir, 'work'), cache: { dir: join(dir, 'cache') }, ...config }, null, 2))
  // the daemon's log goes to <dir>/daemon.log (kept with --keep)
  const logFile = await open(join(dir, 'daemon.log'), 'a')
  // stdin a pipe from us: the daemon stops (unmounting) when this process dies, however it dies
  const proc = spawn(process.execPath, [...nodeArgs, ...daemonArgv(['daemon', '--config', cfg, '--exit-with-parent'])], { stdio: ['pipe', 'ignore', 'pipe'] })
  proc.stderr?.on('data', (b: Buffer) => { logFile.write(b).catch(() => {}) })
  proc.once('exit', () => { void logFile.close().catch(() => {}) })
  let out = ''
  proc.stderr?.on('data', (b: Buffer) => { out = (out + b.toString()).slice(-64_000) })
  const exited = new Promise<void>(resolve => proc.once('exit', () => resolve()))
  const client = new AdminClient(socket)
  const node: RunningNode = { id, dir, socket, proc, client, output: () => out, exited }
  const deadline = Date.now() + 30_000
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`node ${id}: the daemon exited with ${proc.exitCode}: ${out.trim().split('\n').slice(-5).join(' | ')}`)
    if (signal?.aborted === true) { proc.kill('SIGKILL'); throw signal.reason }
    try {
      await client.daemon({ timeoutMs: 1000 })
      return node
    } catch {
      if (Date.now() > deadline) { proc.kill('SIGKILL'); throw new Error(`node ${id}: the daemon did not answer within 30 s: ${out.slice(-2000)}`) }
      await delay(100)
    }
  }
}

async function stopNode (n: RunningNode): Promise<void> {
  if (n.proc.exitCode === null && n.proc.signalCode === null) n.proc.kill('SIGTERM')
  const t = setTimeout(() => { n.proc.kill('SIGKILL') }, 15_000)
  await n.exited
  clearTimeout(t)
}

const percentile = (sorted: number[], p: number): number =>
  sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]!

export async function runSwarm (init: SwarmInit): Promise<SwarmReport> {
  if (!Number.isInteger(init.nodes) || init.nodes < 1 || init.nodes > 64) throw new RangeError(`--nodes must be 1..64, got ${init.nodes}`)
  const log = init.log ?? (() => {})
  const t0 = performance.now()
  const run = await mkdtemp(join(init.workDir ?? tmpdir(), 'rafspeer-swarm-'))
  let registry: RegistryServer | undefined
  let scheduler: SchedulerNode | undefined
  /** every reader started (the baseline's and the nodes'), killed at the end if it never read */
  const readers: Reader[] = []
  const nodes: RunningNode[] = []
  const mounts: Array<{ node: RunningNode, mountpoint: string }> = []
  const signal = init.signal
  // an abort (Ctrl-C) stops the daemons, which unmounts their images: reads in progress fail and the run unwinds
  const onAbort = (): void => { for (const n of nodes) if (n.proc.exitCode === null) n.proc.kill('SIGTERM') }
  signal?.addEventListener('abort', onAbort, { once: true })
  try {
    // 1. the image
    let source = init.source
    let imageBytes = 0
    if (source === undefined) {
      source = join(run, 'source')
      const g = await generateTree(source, init.imageBytes ?? 64 << 20)
      imageBytes = g.bytes
      log(`generated a ${mib(imageBytes)} tree (${g.files} files)`)
    }
    const expected = await contentMap(source, { onBytes: n => { if (init.source !== undefined) imageBytes += n } })
    signal?.throwIfAborted()
    registry = await startRegistryServer({ root: join(run, 'registry'), ...(init.bandwidth !== undefined ? { bandwidthLimit: init.bandwidth } : {}) })
    const ref = `${registry.host}/swarm/image:latest`
    const client = new RegistryClient({ plainHttp: true })
    const published = await publishDirectory(source, ref, { client, workDir: run, ...(init.chunkSize !== undefined ? { chunkSize: init.chunkSize } : {}) })
    await client.close()
    const blobBytes = published.blobBytes
    const pushed = registry.counters.bytesServed()
    log(`published ${ref}: ${mib(blobBytes)} in ${published.blobs.length} blob(s), registry at ${registry.url}${init.bandwidth !== undefined ? `, egress capped at ${mib(init.bandwidth)}/s` : ''}`)

    // 2. the scheduler and the nodes
    scheduler = await startSchedulerNode({ listen: ['/ip4/127.0.0.1/tcp/0'] })
    log(`scheduler ${scheduler.multiaddrs[0]}`)
    const caps = init.bandwidth !== undefined ? { uploadBytesPerSecond: init.bandwidth } : {}
    const started = await Promise.all(Array.from({ length: init.nodes }, async (_, i) => await startNode(i + 1, join(run, `node${i + 1}`), {
      log: { level: init.logLevel ?? 'info', format: 'text' },
      prefetch: { policy: 'none' },
      fetch: init.bandwidth !== undefined ? { downloadBytesPerSecond: init.bandwidth } : {},
      p2p: { listen: ['/ip4/127.0.0.1/tcp/0'], ...caps, ...(init.directory !== undefined ? { directory: init.directory } : {}) },
      scheduler: { address: scheduler!.multiaddrs[0], heartbeatMs: 1000 }
    }, init.daemonNodeArgs ?? [], signal)))
    nodes.push(...started)
    const peerIds = await Promise.all(nodes.map(async n => (await n.client.daemon()).p2p?.peerId ?? '?'))
    log(`${nodes.length} node${nodes.length === 1 ? '' : 's'} up: ${peerIds.map((p, i) => `node${i + 1}=${p.slice(-8)}`).join(' ')}`)

    // the baseline: the reader over the source tree itself, nothing cached
    const baseline = await startReader(signal)
    readers.push(baseline)
    await dropCaches()
    const nativeStart = performance.now()
    await baseline.read(source)
    const nativeReadMs = Math.round(performance.now() - nativeStart)
    // every node's reader, loaded before the reads begin
    const nodeReaders = await Promise.all(nodes.map(async () => await startReader(signal)))
    readers.push(...nodeReaders)
    log(`the reader over the source tree on this disk: ${(nativeReadMs / 1000).toFixed(2)} s`)

    // 3. every node mounts and reads the whole tree
    // the readers' CPU counts once they are reaped (this process's children's), loading included: theirs so far is
    // counted here, so only their reading is in the phase's
    const cpuBefore = await cpuMsOf([...nodes.map(n => n.proc.pid), ...nodeReaders.map(r => r.pid)])
    const startReads = performance.now()
    let done = 0
    const reg = registry
    const ticker = setInterval(() => {
      log(`  ${((performance.now() - startReads) / 1000).toFixed(0)} s: ${done}/${nodes.length} done, registry sent ${mib(reg.counters.bytesServed() - pushed)} (${reg.counters.requests()} requests)`)
    }, 5_000)
    ticker.unref()
    const results = await Promise.all(nodes.map(async (n, i) => {
      if (init.staggerMs !== undefined && init.staggerMs > 0) await delay(init.staggerMs * i, signal)
      // a node's clock starts when it starts, after its stagger: completion is its own mount + read time
      const nodeStart = performance.now()
      const mountpoint = join(n.dir, 'mnt')
      await mkdir(mountpoint, { recursive: true })
      const mounted = await n.client.mount({ source: ref, mountpoint, mode: init.mode ?? 'auto', prefetch: init.prefetch ?? 'none' })
      mounts.push({ node: n, mountpoint })
      const mountMs = performance.now() - nodeStart
      let got: ContentMap
      try {
        got = await nodeReaders[i]!.read(mountpoint)
      } catch (err) {
        throw new Error(`node ${n.id}: reading its mount failed: ${(err as Error).message}\n${n.output().slice(-3000)}`, { cause: err })
      }
      const completionMs = performance.now() - nodeStart
      done++
      const differences = diffContent(expected, got)
      const m = await n.client.metricsJson()
      const img = m.images.find(x => x.mountpoint === mountpoint)
      const report: NodeReport = {
        id: n.id,
        peerId: peerIds[i]!,
        completionMs: Math.round(completionMs),
        startMs: Math.round(nodeStart - startReads),
        mountMs: Math.round(mountMs),
        readWaitMaxMs: img?.readWaitMaxMs ?? 0,
        readHandOffs: img?.readHandOffs ?? 0,
        mode: mounted.mode,
        registryBytes: img?.bytesBySource.registry ?? 0,
        peerBytes: img?.bytesBySource.peer ?? 0,
        cacheBytes: img?.bytesBySource.cache ?? 0,
        uploadBytes: 0,
        ok: differences.length === 0,
        differences,
        fetchMs: { p50: m.fetchLatencyMs.p50, p99: m.fetchLatencyMs.p99, max: m.fetchLatencyMs.max },
        peerRequests: {
          sent: m.p2p?.download.requests ?? 0,
          failed: m.p2p?.download.failedRequests ?? 0,
          timeouts: m.p2p?.download.timeouts ?? 0,
          hedges: m.p2p?.download.hedges ?? 0,
          busy: m.p2p?.download.busy ?? 0,
          notFound: m.p2p?.download.notFound ?? 0,
          badChunks: m.p2p?.download.badChunks ?? 0,
          redirects: m.p2p?.download.redirects ?? 0,
          streamsOpened: m.p2p?.download.streams?.opened ?? 0
        },
        served: {
          refused: m.p2p?.upload.refused ?? 0,
          urgentUploads: m.p2p?.upload.urgentUploads ?? 0,
          busyWhileFetching: m.p2p?.upload.busyWhileFetching ?? 0,
          redirects: m.p2p?.upload.redirects ?? 0
        },
        ...(m.p2p?.registryChunks !== undefined ? { registryChunks: { ...m.p2p.registryChunks } } : {}),
        ...(m.p2p?.assigneeAsks !== undefined ? { assigneeAsks: m.p2p.assigneeAsks } : {})
      }
      log(`node${n.id}: read ${mib(imageBytes)} in ${(completionMs / 1000).toFixed(2)} s (registry ${mib(report.registryBytes)}, peers ${mib(report.peerBytes)}, cache ${mib(report.cacheBytes)})${report.ok ? '' : `: ${differences.length} DIFFERENCES`}`)
      return report
    }))
    clearInterval(ticker)
    const cpuAfter = await cpuMsOf(nodes.map(n => n.proc.pid))
    const readMs = Math.round(performance.now() - startReads)
    signal?.throwIfAborted()
    // uploads are known once everyone is done
    for (const r of results) r.uploadBytes = (await nodes[r.id - 1]!.client.metricsJson()).p2p?.upload.bytesServed ?? 0
    const times = results.map(r => r.completionMs).sort((a, b) => a - b)
    return {
      nodes: results,
      imageBytes,
      blobBytes,
      registryBytes: registry.counters.bytesServed() - pushed,
      peerBytes: results.reduce((a, r) => a + r.peerBytes, 0),
      verifiedOk: results.every(r => r.ok),
      bandwidth: init.bandwidth ?? null,
      p50Ms: percentile(times, 0.5),
      p95Ms: percentile(times, 0.95),
      maxMs: times[times.length - 1] ?? 0,
      wallMs: Math.round(performance.now() - t0),
      nativeReadMs,
      chunkSizes: published.chunkSizes.flat(),
      readMs,
      ...(cpuBefore !== undefined && cpuAfter !== undefined ? { readCpuMs: Math.round(cpuAfter - cpuBefore) } : {})
    }
  } finally {
    signal?.removeEventListener('abort', onAbort)
    for (const r of readers) r.kill()
    for (const { node, mountpoint } of mounts) await node.client.unmount(mountpoint).catch(() => {})
    await Promise.all(nodes.map(stopNode))
    await scheduler?.stop().catch(() => {})
    await registry?.stop().catch(() => {})
    if (init.keep !== true) await rm(run, { recursive: true, force: true }).catch(() => {})
    else log(`kept ${run}`)
  }
}

/** The report as a few human lines. */
export function formatSwarmReport (r: SwarmReport): string {
  const lines = [
    `image: ${mib(r.imageBytes)} of files, ${mib(r.blobBytes)} of blobs; ${r.nodes.length} node(s)${r.bandwidth !== null ? `, ${mib(r.bandwidth)}/s per node and registry` : ''}`,
    `registry egress: ${mib(r.registryBytes)} = ${(r.registryBytes / r.blobBytes).toFixed(3)}x the blobs; from peers: ${mib(r.peerBytes)}`,
    `completion: p50 ${s(r.p50Ms)}, p95 ${s(r.p95Ms)}, max ${s(r.maxMs)} (run ${s(r.wallMs)}); the same reader over the source tree: ${s(r.nativeReadMs)}`,
    ...registryChunksLine(r.nodes),
    `verified: ${r.verifiedOk ? 'every node read exactly the published tree' : 'DIFFERENCES (see below)'}`,
    '  node  mode        time      (mount)   wait      registry    peers       cache       uploaded',
    ...r.nodes.map(n => `  ${String(n.id).padEnd(5)} ${n.mode.padEnd(11)} ${s(n.completionMs).padEnd(9)} ${(n.mountMs !== undefined ? s(n.mountMs) : '-').padEnd(9)} ` +
      `${(n.readWaitMaxMs !== undefined ? s(n.readWaitMaxMs) : '-').padEnd(9)} ${mib(n.registryBytes).padEnd(11)} ${mib(n.peerBytes).padEnd(11)} ${mib(n.cacheBytes).padEnd(11)} ${mib(n.uploadBytes)}`),
    ...r.nodes.flatMap(n => n.differences.map(d => `  node${n.id} differs: ${d}`))
  ]
  return lines.join('\n')
}

/** the chunks the nodes' locators sent to the registry, by why (blob-level directory), as the model words them */
function registryChunksLine (nodes: NodeReport[]): string[] {
  const all = nodes.flatMap(n => n.registryChunks !== undefined ? [n.registryChunks] : [])
  if (all.length === 0) return []
  const sum = (k: SourceReason): number => all.reduce((a, c) => a + c[k], 0)
  const asks = nodes.reduce((a, n) => a + (n.assigneeAsks ?? 0), 0)
  return [`registry chunks: ${sum('assignee')} as the rendezvous assignee, ${sum('noGroup')} as the assignee without the scheduler's group, ${sum('ahead')} ahead of an assignee behind, ${sum('grace')} after the grace; ${asks} asked of their assignee first`]
}

const mib = (n: number): string => `${(n / (1 << 20)).toFixed(1)} MiB`
const s = (ms: number): string => `${(ms / 1000).toFixed(2)} s`

