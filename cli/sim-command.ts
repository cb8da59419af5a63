/**
 * `rafspeer sim`: N real daemons, a scheduler and the embedded registry on this machine, every node reading a whole
 * generated image; prints registry egress, bytes from peers and completion times (or one JSON object).
 * The swarm module loads only when the command runs.
 */
import { InvalidArgumentError, Option, type Command } from 'commander'
import { parseByteSize } from '../base/index.js'

interface SimFlags {
  nodes: number
  imageSize: number
  bandwidth?: number
  prefetch?: 'all' | 'none'
  staggerMs?: number
  mode?: 'auto' | 'fuse' | 'erofs-lazy'
  directory?: 'chunks' | 'blobs'
  chunkSize?: number
  workDir?: string
  keep?: boolean
  json?: boolean
}

const size = (what: string) => (v: string): number => {
  const n = parseByteSize(v)
  if (n === undefined || n <= 0) throw new InvalidArgumentError(`${what}: expected a size such as 256MiB, got ${JSON.stringify(v)}`)
  return n
}

const count = (v: string): number => {
  const n = Number(v)
  if (!Number.isInteger(n) || n < 1 || n > 64) throw new InvalidArgumentError(`expected a whole number from 1 to 64, got ${JSON.stringify(v)}`)
  return n
}

const millis = (v: string): number => {
  const n = Number(v)
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`expected milliseconds ≥ 0, got ${JSON.stringify(v)}`)
  return n
}

export function registerSimCommand (program: Command): void {
  program.command('sim')
    .description('simulate a swarm on this machine: N real daemons (P2P on loopback), a scheduler and the embedded registry; every node reads the whole image; reports registry egress, peer bytes and completion times (root: FUSE)')
    .option('--nodes <n>', 'daemons (1–64)', count, 4)
    .option('--image-size <size>', 'bytes of file data in the generated image', size('--image-size'), 64 << 20)
    .option('--bandwidth <size>', 'per second: the registry\'s egress and each node\'s upload and download (e.g. 50MiB)', size('--bandwidth'))
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
    .option('--json', 'print the report as one JSON object')
    .action(async (f: SimFlags) => {
      const { runSwarm, formatSwarmReport } = await import('../sim/index.js')
      const controller = new AbortController()
      const onSignal = (): void => { controller.abort(new Error('interrupted: stopping the swarm')) }
      process.once('SIGINT', onSignal)
      process.once('SIGTERM', onSignal)
      try {
        const report = await runSwarm({
          nodes: f.nodes,
          imageBytes: f.imageSize,
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
    })
}
