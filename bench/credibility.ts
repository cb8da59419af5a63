/**
 * Credibility of the swarm model (issue 13): for each swarm size and bandwidth cap, the real `rafspeer sim` (N real
 * daemons, lazy mounts, the capped embedded registry) and the model with that run's parameters
 * (`modelInitFor`), side by side: registry egress over one pull, completion p50 and max, as model / real, flagged
 * outside ±5% (egress) and ±15% (times). Per cap, one node alone both ways (the real one-node run and the model's
 * `nativeReadMs`). The model runs over the real image's chunk layout (the files' chunks, many of them small). With
 * `prefetch: 'all'` every run's nodes also prefetch the whole image, in the model as in the daemons.
 *
 * Real runs share this machine's cores with their daemons, readers and registry: the model is given the machine's
 * CPU (`ModelInit.cpu`: a cost per MiB from the registry, one per MiB from a neighbour, a node's background share of
 * a core), fitted by `fitMachineCpu` from calibration runs' reading-phase CPU (`SwarmReport.readCpuMs`): one node
 * alone at each cap, two nodes at each cap, the second started once the first is done, and swarms of sizes not
 * compared (3 and 6 nodes: the machine loaded as the compared swarms load it); and a request to a
 * neighbour's cost apart from its bytes (`benchChunkRequests`, streams kept open), and a first contact's (a new
 * connection's handshakes and first stream, the same bench less its request). Never from the runs it
 * is compared with. The calibration runs beside a busy loop per core at idle priority ({@link warmCores}): the model
 * needs what work costs on a machine the swarm keeps busy, and on an idle VM the same work takes more CPU time (one
 * node alone at 4 MiB/s: 3.7–3.9 CPU-s idle, 2.7 s warm). The model runs a second time without CPU, to show what
 * the machine's CPU is worth. Each row also reports the CPU the swarm used (this process and every child it reaped)
 * and how busy the whole machine was.
 */
import { readFile } from 'node:fs/promises'
import { benchChunkRequests } from './chunk-requests.js'
import { warmCores } from './warm-cores.js'
import {
  compareRuns, cpuSampleOf, fitMachineCpu, modelInitFor, ISSUE_BOUNDS, runModel, runSwarm, type CpuSample, type FigureComparison, type ModelCpu, type ModelReport, type SwarmInit, type SwarmReport
} from '../sim/index.js'

export interface CredibilityBenchOptions {
  nodes?: number[]
  bandwidths?: number[]
  imageBytes?: number
  directory?: 'blobs' | 'chunks'
  /** every run's nodes also prefetch the whole image (the model's too: `ModelInit.prefetch`); default none */
  prefetch?: 'none' | 'all'
  chunkSize?: number
  staggerMs?: number
  rttMs?: number
  /**
   * swarm sizes also run for the calibration, at every cap (default 3 and 6, less any size compared): loads like the
   * compared swarms', which the runs alone and the relays do not give (`[]`: none)
   */
  calibrationNodes?: number[]
  /** run the calibration (the runs alone, the relays, a request's cost) beside idle-priority loops that keep the cores from idling ({@link warmCores}; default true) */
  warmCalibration?: boolean
  log?: (line: string) => void
}

export interface CpuUse {
  /** CPU seconds of this process and the children it reaped (daemons, readers) over the run */
  swarmCpuS: number
  /** swarmCpuS over (wall × cores) */
  swarmShare: number
  /** the whole machine's busy share over the run (everyone's work) */
  machineBusy: number
}

export interface CredibilityRow {
  nodes: number
  bandwidth: number
  real: { egress: number, p50Ms: number, maxMs: number, wallMs: number, readCpuMs: number | undefined, verifiedOk: boolean, idleDeadlineFetches: number, perNode: Array<{ completionMs: number, mountMs?: number, registryBytes: number, peerBytes: number }> }
  model: { egress: number, p50Ms: number, maxMs: number, idleTimeouts: number, cpuBusyShare: number }
  /** the model without the machine's CPU */
  modelNoCpu: { egress: number, p50Ms: number, maxMs: number }
  figures: FigureComparison[]
  cpu: CpuUse
}

export interface CredibilityBenchResult {
  imageBytes: number
  blobBytes: number
  directory: 'blobs' | 'chunks'
  prefetch: 'none' | 'all'
  chunkSize: number
  rttMs: number
  cores: number
  /** per cap: one real node alone (its completion, its reading phase's CPU) and the model's one node alone */
  alone: Array<{ bandwidth: number, realMs: number, modelMs: number, ratio: number, cpu: CpuUse, readCpuMs: number | undefined }>
  /** the calibration runs besides the runs alone: per cap one node reading everything from another that finished (staggerMs > 0), and swarms of the calibration sizes */
  calibration: Array<{ kind: 'relay' | 'swarm', bandwidth: number, nodes: number, staggerMs: number, realMs: number, registryBytes: number, peerBytes: number, readCpuMs: number | undefined }>
  /** how the calibration ran: beside idle-priority loops keeping the cores warm ('idle', or 'nice' without `chrt`), or on a machine left idle ('off') */
  warmCalibration: 'idle' | 'nice' | 'off'
  /** the machine's CPU as the model was given it, fitted from the runs alone and the calibration runs, with a request's cost measured apart (undefined: not measured, not modelled) */
  machineCpu: ModelCpu | undefined
  rows: CredibilityRow[]
  withinBounds: { egress: number, p50: number, max: number, of: number }
}

const MiB = 1 << 20
/**
 * a fetch batch this long took as long as the fetcher's idle deadline (10 s): stuck on a source until the deadline,
 * or slow on a loaded machine (under two busy loops and a disk writer, 8 × 24 MiB prefetching: fetches of 10–11 s,
 * no idle deadline reached); the column counts the nodes with one
 */
const IDLE_DEADLINE_MS = 10_000

/**
 * utime + stime of this process and of its reaped children, and the machine's busy and total jiffies (busy leaves out
 * niced work when `exceptNice`: the idle-priority loops that keep the cores warm run niced)
 */
async function cpuSnapshot (exceptNice: boolean): Promise<{ own: number, busy: number, total: number }> {
  const self = (await readFile('/proc/self/stat', 'utf8')).split(') ')[1]!.split(' ')
  // fields 14–17 of proc(5) (utime stime cutime cstime) are 11–14 after the command's closing parenthesis
  const own = [11, 12, 13, 14].reduce((a, i) => a + Number(self[i]), 0)
  const cpu = (await readFile('/proc/stat', 'utf8')).split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number)
  const total = cpu.reduce((a, b) => a + b, 0)
  // idle and iowait, and nice
  return { own, busy: total - cpu[3]! - cpu[4]! - (exceptNice ? cpu[1]! : 0), total }
}

async function measured<T> (cores: number, fn: () => Promise<T>, exceptNice = false): Promise<{ value: T, cpu: CpuUse }> {
  const t0 = performance.now()
  const a = await cpuSnapshot(exceptNice)
  const value = await fn()
  const b = await cpuSnapshot(exceptNice)
  const wallS = (performance.now() - t0) / 1000
  // USER_HZ is 100 on Linux, whatever the kernel's own tick
  const swarmCpuS = (b.own - a.own) / 100
  return { value, cpu: { swarmCpuS, swarmShare: swarmCpuS / (wallS * cores), machineBusy: (b.busy - a.busy) / Math.max(1, b.total - a.total) } }
}

export async function benchCredibility (opts: CredibilityBenchOptions = {}): Promise<CredibilityBenchResult> {
  const nodes = opts.nodes ?? [2, 4, 8]
  const bandwidths = opts.bandwidths ?? [4 * MiB, 16 * MiB]
  const imageBytes = opts.imageBytes ?? 64 * MiB
  const directory = opts.directory ?? 'blobs'
  const prefetch = opts.prefetch ?? 'none'
  const rttMs = opts.rttMs ?? 1
  const log = opts.log ?? (() => {})
  const { availableParallelism } = await import('node:os')
  const cores = availableParallelism()
  if (directory === 'chunks') log('note: the model indexes blobs (who works on which blob) whatever the real run does: a chunk-level real run is compared with the blob-level model')
  const calibrationNodes = (opts.calibrationNodes ?? [3, 6]).filter(n => !nodes.includes(n))
  if (!calibrationNodes.every(n => Number.isInteger(n) && n >= 2 && n <= 64)) throw new RangeError(`calibration swarms of 2–64 nodes, got ${calibrationNodes.join(', ')}`)
  const alone: CredibilityBenchResult['alone'] = []
  const calibration: CredibilityBenchResult['calibration'] = []
  const rows: CredibilityRow[] = []
  let blobBytes = 0
  const samples: Array<CpuSample | undefined> = []
  // the calibration runs beside a busy loop per core at idle priority: the model needs the CPU work costs on a
  // machine the swarm keeps busy, and on this VM work costs more on an idle one (warm-cores.ts)
  let warm = opts.warmCalibration === false ? undefined : await warmCores(cores)
  const warmCalibration = warm?.policy ?? 'off'
  const run = async (bandwidth: number, n: number, staggerMs = opts.staggerMs): Promise<{ init: SwarmInit, real: SwarmReport, cpu: CpuUse }> => {
    const init: SwarmInit = {
      nodes: n,
      imageBytes,
      bandwidth,
      directory,
      prefetch,
      ...(opts.chunkSize !== undefined ? { chunkSize: opts.chunkSize } : {}),
      ...(staggerMs !== undefined ? { staggerMs } : {}),
      log
    }
    log(`real: ${n} node(s) at ${bandwidth / MiB} MiB/s${warm !== undefined ? ' (cores kept warm)' : ''}`)
    const { value: real, cpu } = await measured(cores, async () => await runSwarm(init), warm !== undefined)
    blobBytes = real.blobBytes
    return { init, real, cpu }
  }
  let msPerRequest: number
  let msPerConnection: number
  try {
    for (const bandwidth of bandwidths) {
      const one = await run(bandwidth, 1)
      const oneModel = runModel(modelInitFor(one.init, one.real, { rttMs }))
      alone.push({ bandwidth, realMs: one.real.maxMs, modelMs: oneModel.nativeReadMs, ratio: oneModel.nativeReadMs / one.real.maxMs, cpu: one.cpu, readCpuMs: one.real.readCpuMs })
      samples.push(cpuSampleOf(one.real))
    }
    // the machine's CPU, before any run it is held against: the runs alone, and at each cap one node reading
    // everything from another that finished (started once the first is done: the neighbour path's cost, without a
    // swarm). One relay alone left the neighbour's cost to a single 4 s run (fitted 25.7 and 34.1 ms per MiB in two
    // runs of this bench); one per cap gives the fit more samples than unknowns
    for (const bandwidth of bandwidths) {
      const aloneMs = alone.find(a => a.bandwidth === bandwidth)!.realMs
      const relay = await run(bandwidth, 2, Math.ceil(aloneMs * 1.25) + 1000)
      calibration.push({ kind: 'relay', bandwidth, nodes: 2, staggerMs: relay.init.staggerMs ?? 0, realMs: relay.real.maxMs, registryBytes: relay.real.nodes.reduce((a, n) => a + n.registryBytes, 0), peerBytes: relay.real.peerBytes, readCpuMs: relay.real.readCpuMs })
      samples.push(cpuSampleOf(relay.real))
    }
    // swarms of sizes not compared: the machine as loaded as the compared swarms load it (one node at a time keeps it
    // 11–27% busy, 8 nodes 80–99%, and what work costs differs with that on this VM)
    for (const bandwidth of bandwidths) {
      for (const n of calibrationNodes) {
        const sw = await run(bandwidth, n)
        calibration.push({ kind: 'swarm', bandwidth, nodes: n, staggerMs: sw.init.staggerMs ?? 0, realMs: sw.real.maxMs, registryBytes: sw.real.nodes.reduce((a, x) => a + x.registryBytes, 0), peerBytes: sw.real.peerBytes, readCpuMs: sw.real.readCpuMs })
        samples.push(cpuSampleOf(sw.real))
      }
    }
    // what a request costs apart from its bytes, both ends, on streams kept open as a swarm's mostly are
    // and a first contact's handshakes, less the request it carried
    const requestCost = await benchChunkRequests({ requests: 1000, runs: 3, contacts: 20 })
    msPerRequest = requestCost.keptCpuUs / 1000
    msPerConnection = Math.max(0, requestCost.contactCpuUs - requestCost.keptCpuUs) / 1000
    log(`a request to a neighbour: ${msPerRequest.toFixed(2)} ms of CPU, both ends; a connection ${msPerConnection.toFixed(1)} ms`)
  } finally {
    // reaped here, between measurements
    await warm?.stop()
    warm = undefined
  }
  const measuredCpu = samples.filter((x): x is CpuSample => x !== undefined)
  const machineCpu = measuredCpu.length === samples.length ? { ...fitMachineCpu(cores, measuredCpu, msPerRequest), msPerConnection } : undefined
  if (machineCpu !== undefined) log(`machine CPU for the model: ${formatCpu(machineCpu)}`)
  for (const bandwidth of bandwidths) {
    for (const n of nodes) {
      const { init, real, cpu } = await run(bandwidth, n)
      const model: ModelReport = runModel(modelInitFor(init, real, { rttMs, window: 'reader', ...(machineCpu !== undefined ? { cpu: machineCpu } : {}) }))
      const noCpu: ModelReport = runModel(modelInitFor(init, real, { rttMs, window: 'reader' }))
      rows.push({
        nodes: n,
        bandwidth,
        real: {
          egress: real.registryBytes / real.blobBytes,
          p50Ms: real.p50Ms,
          maxMs: real.maxMs,
          wallMs: real.wallMs,
          readCpuMs: real.readCpuMs,
          verifiedOk: real.verifiedOk,
          idleDeadlineFetches: real.nodes.filter(x => x.fetchMs.max >= IDLE_DEADLINE_MS).length,
          perNode: real.nodes.map(x => ({ completionMs: x.completionMs, ...(x.mountMs !== undefined ? { mountMs: x.mountMs } : {}), registryBytes: x.registryBytes, peerBytes: x.peerBytes }))
        },
        model: { egress: model.model.registryRatio, p50Ms: model.p50Ms, maxMs: model.maxMs, idleTimeouts: model.model.peerRequests.idleTimeouts, cpuBusyShare: model.model.cpu?.busyShare ?? 0 },
        modelNoCpu: { egress: noCpu.model.registryRatio, p50Ms: noCpu.p50Ms, maxMs: noCpu.maxMs },
        figures: compareRuns(real, model),
        cpu
      })
      log(formatRow(rows[rows.length - 1]!))
    }
  }
  const count = (f: FigureComparison['figure']): number => rows.filter(r => r.figures.find(x => x.figure === f)!.within).length
  return {
    imageBytes,
    blobBytes,
    directory,
    prefetch,
    chunkSize: opts.chunkSize ?? 1 << 20,
    rttMs,
    cores,
    alone,
    calibration,
    warmCalibration,
    machineCpu,
    rows,
    withinBounds: { egress: count('egress'), p50: count('p50Ms'), max: count('maxMs'), of: rows.length }
  }
}

const s = (ms: number): string => (ms / 1000).toFixed(1)
const formatCpu = (c: ModelCpu): string => `${c.cores} cores, ${c.msPerMiB.toFixed(1)} ms per MiB from the registry, ` +
  `${(c.peerMsPerMiB ?? c.msPerMiB).toFixed(1)} ms per MiB from a neighbour, ${(c.msPerRequest ?? 0).toFixed(2)} ms per request to a neighbour, ` +
  `${(c.msPerConnection ?? 0).toFixed(1)} ms per connection, ` +
  `${((c.busyPerNode ?? 0) * 100).toFixed(1)}% of a core per reading node`
const flagged = (f: FigureComparison): string => `${f.ratio.toFixed(2)}${f.within ? '' : ' ✗'}`

function formatRow (r: CredibilityRow): string {
  const [e, p, m] = r.figures as [FigureComparison, FigureComparison, FigureComparison]
  return `| ${r.nodes} | ${r.bandwidth / MiB} MiB/s | ${r.real.egress.toFixed(3)} / ${r.model.egress.toFixed(3)} (${flagged(e)}) | ` +
    `${s(r.real.p50Ms)} / ${s(r.model.p50Ms)} (${flagged(p)}) | ${s(r.real.maxMs)} / ${s(r.model.maxMs)} (${flagged(m)}) | ` +
    `${r.modelNoCpu.egress.toFixed(3)}, ${s(r.modelNoCpu.p50Ms)} / ${s(r.modelNoCpu.maxMs)} | ${r.real.idleDeadlineFetches} | ` +
    `${r.real.readCpuMs !== undefined ? s(r.real.readCpuMs) : '?'} | ${(r.cpu.swarmShare * 100).toFixed(0)}% / ${(r.cpu.machineBusy * 100).toFixed(0)}% / ${(r.model.cpuBusyShare * 100).toFixed(0)}% |`
}

export function formatCredibilityBench (r: CredibilityBenchResult): string {
  return [
    `credibility: real \`rafspeer sim\` vs the model, ${(r.imageBytes / MiB).toFixed(0)} MiB image (${(r.blobBytes / MiB).toFixed(1)} MiB of blobs), ` +
      `${(r.chunkSize / MiB).toFixed(2)} MiB chunks, directory ${r.directory}, ${r.prefetch === 'all' ? 'every node prefetching all, ' : ''}model RTT ${r.rttMs} ms; ✗ outside ±${ISSUE_BOUNDS.egress * 100}% (egress) / ±${ISSUE_BOUNDS.times * 100}% (times)`,
    '',
    '| alone | real | model | model / real | reading CPU s | swarm CPU / machine busy |',
    '|---|---|---|---|---|---|',
    ...r.alone.map(a => `| 1 node at ${a.bandwidth / MiB} MiB/s | ${s(a.realMs)} s | ${s(a.modelMs)} s | ${a.ratio.toFixed(2)} | ${a.readCpuMs !== undefined ? s(a.readCpuMs) : '?'} | ${(a.cpu.swarmShare * 100).toFixed(0)}% / ${(a.cpu.machineBusy * 100).toFixed(0)}% |`),
    '',
    ...r.calibration.map(c => `calibration: ${c.nodes} nodes at ${c.bandwidth / MiB} MiB/s, ${c.kind === 'relay' ? `the second ${s(c.staggerMs)} s after the first` : 'a swarm'}: slowest ${s(c.realMs)} s, ` +
      `${(c.registryBytes / MiB).toFixed(1)} MiB from the registry, ${(c.peerBytes / MiB).toFixed(1)} MiB from neighbours, reading CPU ${c.readCpuMs !== undefined ? s(c.readCpuMs) : '?'} s`),
    r.machineCpu !== undefined
      ? `the machine's CPU as the model has it (fitted from the runs alone and the calibration${r.warmCalibration !== 'off' ? ', all beside idle-priority loops keeping the cores warm' : ''}): ${formatCpu(r.machineCpu)}`
      : 'the machine\'s CPU: not measured (no /proc), not modelled',
    '',
    '| nodes | cap | egress real / model (model/real) | p50 s real / model | max s real / model | model without CPU: egress, p50 / max s | real nodes with a fetch of ≥ 10 s (as long as the idle deadline) | real reading CPU s | swarm CPU / machine busy / model CPU busy |',
    '|---|---|---|---|---|---|---|---|---|',
    ...r.rows.map(formatRow),
    '',
    `within bounds: egress ${r.withinBounds.egress}/${r.withinBounds.of}, p50 ${r.withinBounds.p50}/${r.withinBounds.of}, max ${r.withinBounds.max}/${r.withinBounds.of}`
  ].join('\n')
}
