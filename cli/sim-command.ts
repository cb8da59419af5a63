/**
 * `rafspeer sim`: N real daemons, a scheduler and the embedded registry on this machine, every node reading a whole
 * generated image; prints registry egress, bytes from peers and completion times (or one JSON object).
 * `rafspeer sim --model`: the same question asked of the discrete-event model instead (10 to 100 000 modelled
 * nodes in this process, the daemon's own policy code over modelled links); same report, plus what only a model
 * counts, and optionally an SVG chart. The swarm module loads only when the command runs.
 */
import { writeFile } from 'node:fs/promises'
import { InvalidArgumentError, Option, type Command } from 'commander'
import { parseByteSize } from '../base/index.js'

interface SimFlags {
  model?: boolean
  nodes?: number
  imageSize?: number
  bandwidth?: number
  prefetch?: 'all' | 'none'
  staggerMs?: number
  mode?: 'auto' | 'fuse' | 'erofs-lazy'
  directory?: 'chunks' | 'blobs'
  chunkSize?: number
  workDir?: string
  keep?: boolean
  json?: boolean
  // model mode
  registryBandwidth?: number
  caps?: 'links' | 'limiters'
  rttMs?: number
  failRate?: number
  rejoinAfterMs?: number
  seed?: number
  blobs?: number
  heartbeatMs?: number
  busyRetries?: number
  maxUploads?: number
  urgentUploads?: number
  holdersPerLookup?: number
  nodesDetail?: 'all' | 'none'
  chart?: string
}

const REAL_MAX_NODES = 64
const MODEL_MAX_NODES = 100_000
const REAL_DEFAULT_NODES = 4
const MODEL_DEFAULT_NODES = 1000
const REAL_DEFAULT_IMAGE = 64 << 20

const size = (what: string) => (v: string): number => {
  const n = parseByteSize(v)
  if (n === undefined || n <= 0) throw new InvalidArgumentError(`${what}: expected a size such as 256MiB, got ${JSON.stringify(v)}`)
  return n
}

const whole = (min: number, max: number) => (v: string): number => {
  const n = Number(v)
  if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`expected a whole number from ${min} to ${max}, got ${JSON.stringify(v)}`)
  return n
}

const millis = (v: string): number => {
  const n = Number(v)
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`expected milliseconds ≥ 0, got ${JSON.stringify(v)}`)
  return n
}

const nonNegative = (v: string): number => {
  const n = Number(v)
  if (v.trim() === '' || !Number.isFinite(n) || n < 0) throw new InvalidArgumentError(`expected a number ≥ 0, got ${JSON.stringify(v)}`)
  return n
}

const share = (v: string): number => {
  const n = nonNegative(v)
  if (n > 1) throw new InvalidArgumentError(`expected a share from 0 to 1, got ${JSON.stringify(v)}`)
  return n
}


/** flags that only one of the two modes reads */
const REAL_ONLY = ['mode', 'directory', 'workDir', 'keep'] as const
const MODEL_ONLY = ['registryBandwidth', 'caps', 'rttMs', 'failRate', 'rejoinAfterMs', 'seed', 'blobs', 'heartbeatMs', 'busyRetries', 'maxUploads', 'urgentUploads', 'holdersPerLookup', 'nodesDetail', 'chart'] as const
const flagName = (k: string): string => `--${k.replace(/[A-Z]/g, c => `-${c.toLowerCase()}`)}`

export function registerSimCommand (program: Command): void {
  program.command('sim')
    .description('simulate a swarm on this machine: N real daemons (P2P on loopback), a scheduler and the embedded registry; every node reads the whole image; reports registry egress, peer bytes and completion times (root: FUSE). ' +
      'With --model: a deterministic discrete-event model of up to 100 000 nodes running the daemon\'s own scheduler and exchange policy over modelled links, in this process')
    .option('--model', 'run the discrete-event model instead of real daemons')
    .option('--nodes <n>', `daemons (1–${REAL_MAX_NODES}, default ${REAL_DEFAULT_NODES}); with --model, modelled nodes (1–${MODEL_MAX_NODES}, default ${MODEL_DEFAULT_NODES})`, whole(1, MODEL_MAX_NODES))
    .option('--image-size <size>', 'bytes of file data in the generated image (default 64MiB; with --model 1GiB)', size('--image-size'))
    .option('--bandwidth <size>', 'per second: the registry\'s egress and each node\'s upload and download (e.g. 50MiB); with --model each node\'s upload and download (default 1.25GB: 10 Gbit/s)', size('--bandwidth'))
    .option('--prefetch <policy>', 'all: each node also prefetches the whole image; none: only what its reader reads', (v: string) => {
      if (v !== 'all' && v !== 'none') throw new InvalidArgumentError('expected all or none')
      return v
    })
    .option('--stagger-ms <ms>', 'start node i\'s reader i × this after the first', millis)
    .addOption(new Option('--mode <mode>', 'how nodes mount the image (auto: erofs-lazy where the host can, else fuse)').choices(['auto', 'fuse', 'erofs-lazy']))
    .addOption(new Option('--directory <level>', 'what the scheduler indexes: each chunk (chunks) or who works on which blob, with have-bitfields between neighbours (blobs)').choices(['chunks', 'blobs']))
    .option('--chunk-size <size>', 'chunk size of the image (power of two, 4KiB–16MiB; default 1MiB)', size('--chunk-size'))
    .option('--work-dir <dir>', 'parent of the run directory (default the temp dir)')
    .option('--keep', 'keep the run directory (images, caches, logs)')
    .option('--registry-bandwidth <size>', 'model: per second, the registry\'s egress (default twice --bandwidth)', size('--registry-bandwidth'))
    .addOption(new Option('--caps <kind>', 'model: what --bandwidth caps are (default links: every byte at the rate; limiters: the rate limits real daemons and the registry have, whose burst an idle side sends at once, as in `rafspeer sim`)').choices(['links', 'limiters']))
    .option('--rtt-ms <ms>', 'model: round-trip time between any two parties (default 1)', nonNegative)
    .option('--fail-rate <p>', 'model: share of nodes that die once, at a random time (default 0)', share)
    .option('--rejoin-after-ms <ms>', 'model: a dead node restarts with an empty cache this long after (default: never)', millis)
    .option('--seed <n>', 'model: the run\'s seed; the same seed gives the same report (default 1)', whole(0, 0xffffffff))
    .option('--blobs <n>', 'model: data blobs the image is cut into, each its own swarm (default 1)', whole(1, 1024))
    .option('--heartbeat-ms <ms>', 'model: each node\'s heartbeat to the scheduler (default 1000)', whole(50, 3_600_000))
    .option('--busy-retries <n>', 'model: times a BUSY holder nobody can stand in for is asked again before the registry (default 0, the daemon\'s)', whole(0, 100))
    .option('--max-uploads <n>', 'model: requests each chunk server answers at once (default 16, the daemon\'s)', whole(1, 65535))
    .option('--urgent-uploads <n>', 'model: requests a read waits for answered past --max-uploads (default a quarter of it, the daemon\'s; 0: none)', whole(0, 65535))
    .option('--holders-per-lookup <n>', 'model: holders one scheduler look-up of a blob returns (default 4, what the scheduler client asks)', whole(1, 16))
    .addOption(new Option('--nodes-detail <detail>', 'model: per-node entries in the report (default all up to 1000 nodes, else none)').choices(['all', 'none']))
    .option('--chart <file>', 'model: write an SVG chart (completion CDF, registry egress over time)')
    .option('--json', 'print the report as one JSON object')
    .action(async (f: SimFlags, cmd: Command) => {
      if (f.model === true) {
        const stray = REAL_ONLY.filter(k => f[k] !== undefined)
        if (stray.length > 0) cmd.error(`error: ${stray.map(flagName).join(', ')} ${stray.length === 1 ? 'applies' : 'apply'} to real daemons, not to --model`)
        await runModelMode(f)
        return
      }
      const stray = MODEL_ONLY.filter(k => f[k] !== undefined)
      if (stray.length > 0) cmd.error(`error: ${stray.map(flagName).join(', ')} ${stray.length === 1 ? 'applies' : 'apply'} to --model only`)
      if (f.nodes !== undefined && f.nodes > REAL_MAX_NODES) cmd.error(`error: --nodes: at most ${REAL_MAX_NODES} real daemons (up to ${MODEL_MAX_NODES} with --model)`)
      await runRealMode(f)
    })
}

async function runModelMode (f: SimFlags): Promise<void> {
  const { runModel, formatModelReport, modelChartSvg } = await import('../sim/index.js')
  const log = f.json === true ? (line: string) => { process.stderr.write(line + '\n') } : (line: string) => { process.stdout.write(line + '\n') }
  const report = runModel({
    nodes: f.nodes ?? MODEL_DEFAULT_NODES,
    ...(f.imageSize !== undefined ? { imageBytes: f.imageSize } : {}),
    ...(f.chunkSize !== undefined ? { chunkSize: f.chunkSize } : {}),
    ...(f.bandwidth !== undefined ? { bandwidth: f.bandwidth } : {}),
    ...(f.registryBandwidth !== undefined ? { registryBandwidth: f.registryBandwidth } : {}),
    ...(f.rttMs !== undefined ? { rttMs: f.rttMs } : {}),
    ...(f.staggerMs !== undefined ? { staggerMs: f.staggerMs } : {}),
    ...(f.failRate !== undefined ? { failRate: f.failRate } : {}),
    ...(f.rejoinAfterMs !== undefined ? { rejoinAfterMs: f.rejoinAfterMs } : {}),
    ...(f.seed !== undefined ? { seed: f.seed } : {}),
    ...(f.blobs !== undefined ? { blobs: f.blobs } : {}),
    ...(f.heartbeatMs !== undefined ? { heartbeatMs: f.heartbeatMs } : {}),
    ...(f.busyRetries !== undefined ? { busyRetries: f.busyRetries } : {}),
    ...(f.maxUploads !== undefined ? { maxUploads: f.maxUploads } : {}),
    ...(f.urgentUploads !== undefined ? { urgentUploads: f.urgentUploads } : {}),
    ...(f.holdersPerLookup !== undefined ? { holdersPerLookup: f.holdersPerLookup } : {}),
    ...(f.nodesDetail !== undefined ? { nodesDetail: f.nodesDetail } : {}),
    ...(f.prefetch !== undefined ? { prefetch: f.prefetch } : {}),
    ...(f.caps !== undefined ? { caps: f.caps } : {}),
    log
  })
  if (f.chart !== undefined) {
    await writeFile(f.chart, modelChartSvg(report))
    log(`chart written to ${f.chart}`)
  }
  process.stdout.write((f.json === true ? JSON.stringify(report) : formatModelReport(report)) + '\n')
  if (!report.verifiedOk) process.exitCode = 1
}

async function runRealMode (f: SimFlags): Promise<void> {
  const { runSwarm, formatSwarmReport } = await import('../sim/index.js')
  const controller = new AbortController()
  const onSignal = (): void => { controller.abort(new Error('interrupted: stopping the swarm')) }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  try {
    const report = await runSwarm({
      nodes: f.nodes ?? REAL_DEFAULT_NODES,
      imageBytes: f.imageSize ?? REAL_DEFAULT_IMAGE,
      ...(f.bandwidth !== undefined ? { bandwidth: f.bandwidth } : {}),
      ...(f.prefetch !== undefined ? { prefetch: f.prefetch } : {}),
      ...(f.staggerMs !== undefined ? { staggerMs: f.staggerMs } : {}),
      ...(f.mode !== undefined ? { mode: f.mode } : {}),
      ...(f.directory !== undefined ? { directory: f.directory } : {}),
      ...(f.chunkSize !== undefined ? { chunkSize: f.chunkSize } : {}),
      ...(f.workDir !== undefined ? { workDir: f.workDir } : {}),
      ...(f.keep === true ? { keep: true } : {}),
      signal: controller.signal,
      log: f.json === true ? (line) => { process.stderr.write(line + '\n') } : (line) => { process.stdout.write(line + '\n') }
    })
    process.stdout.write((f.json === true ? JSON.stringify(report) : formatSwarmReport(report)) + '\n')
    if (!report.verifiedOk) process.exitCode = 1
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
}
