/** `rafspeer scheduler`: the standalone scheduler (who holds which chunk) as a libp2p service; libp2p loads only when it runs. */
import { InvalidArgumentError, type Command } from 'commander'
import { createLogger } from '../base/index.js'
import { parseLogLevel } from './daemon-commands.js'
import { untilSignal } from './util.js'

const DEFAULT_LISTEN = '/ip4/127.0.0.1/tcp/8002'

/** Seams for tests: where lines go, and what ends the run (default: SIGINT or SIGTERM). */
export interface SchedulerCommandDeps {
  print?: (line: string) => void
  untilStopped?: () => Promise<void>
}

function positiveInt (v: string): number {
  const n = Number(v)
  if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError(`expected a positive integer, got ${JSON.stringify(v)}`)
  return n
}

/** The global `--log-level`, when given on the command line. */
function cliLogLevel (cmd: Command): ReturnType<typeof parseLogLevel> | undefined {
  for (let c: Command | null = cmd; c !== null; c = c.parent) {
    const src = c.getOptionValueSource('logLevel')
    if (src === 'cli' || src === 'env') return parseLogLevel(String(c.getOptionValue('logLevel')))
  }
  return undefined
}

export function registerSchedulerCommand (program: Command, deps: SchedulerCommandDeps = {}): void {
  const print = deps.print ?? ((line: string) => { process.stdout.write(line + '\n') })
  program.command('scheduler')
    .description('run the scheduler (chunk digest → holders, peer load and health, ranking) on /rafspeer/scheduler/1.0.0 until SIGINT/SIGTERM')
    .option('--listen <multiaddr>', `listen multiaddr, repeatable (default ${DEFAULT_LISTEN})`, (v: string, prev: string[] = []) => [...prev, v])
    .option('--key-file <file>', 'peer identity: loaded, or created (mode 0600) when missing, so the peer id survives restarts')
    .option('--max-peers <n>', 'peers registered at once (default 10000); a full table lets a newcomer displace an unproven peer', positiveInt)
    .option('--max-entries <n>', '(digest, holder) entries kept, the memory bound: about 100 bytes each (default 10000000)', positiveInt)
    .option('--max-digests-per-peer <n>', 'digests one peer may hold while the index is less than half full (default 4000000)', positiveInt)
    .option('--redis <address>', 'keep the swarm directory (blob level) on Redis: cluster seeds host:port or a redis:// URL, repeatable; several schedulers may share it', (v: string, prev: string[] = []) => [...prev, v])
    .option('--json', 'print the addresses and the final stats as JSON lines; logs as JSON on stderr')
    .action(async (f: { listen?: string[], keyFile?: string, json?: boolean, maxPeers?: number, maxEntries?: number, maxDigestsPerPeer?: number, redis?: string[] }, cmd: Command) => {
      const { loadOrCreatePeerKey, startSchedulerNode, startDirectorySchedulerNode, createDirectory } = await import('../scheduler/index.js')
      const logger = createLogger({ level: cliLogLevel(cmd) ?? 'info', format: f.json === true ? 'json' : 'text' })
      const privateKey = f.keyFile !== undefined ? await loadOrCreatePeerKey(f.keyFile) : undefined
      if (f.redis !== undefined) {
        const directory = await createDirectory({ redis: f.redis }, { logger })
        const sched = await startDirectorySchedulerNode(directory, { listen: f.listen ?? [DEFAULT_LISTEN], ...(privateKey !== undefined ? { privateKey } : {}), logger })
        try {
          if (f.json === true) print(JSON.stringify({ scheduler: sched.multiaddrs[0], multiaddrs: sched.multiaddrs, peerId: sched.peerId, directory: directory.kind }))
          else for (const ma of sched.multiaddrs) print(`scheduler: ${ma}`)
          await (deps.untilStopped ?? untilSignal)()
        } finally {
          const stats = await directory.stats().catch(() => undefined)
          await sched.stop()
          if (f.json === true) print(JSON.stringify({ stopped: true, ...stats }))
          else print(`scheduler stopped (directory on ${directory.kind})${stats !== undefined ? `: ${stats.peers} peers, ${stats.blobs} blobs, ${stats.entries} holdings` : ''}`)
        }
        return
      }
      const sched = await startSchedulerNode({
        listen: f.listen ?? [DEFAULT_LISTEN],
        privateKey,
        logger,
        ...(f.maxPeers !== undefined ? { maxPeers: f.maxPeers } : {}),
        ...(f.maxEntries !== undefined ? { maxEntries: f.maxEntries } : {}),
        ...(f.maxDigestsPerPeer !== undefined ? { maxDigestsPerPeer: f.maxDigestsPerPeer } : {})
      })
      try {
        if (f.json === true) {
          print(JSON.stringify({ scheduler: sched.multiaddrs[0], multiaddrs: sched.multiaddrs, peerId: sched.peerId }))
        } else {
          for (const ma of sched.multiaddrs) print(`scheduler: ${ma}`)
        }
        await (deps.untilStopped ?? untilSignal)()
      } finally {
        const stats = sched.service.index.stats()
        await sched.stop()
        if (f.json === true) print(JSON.stringify({ stopped: true, ...stats }))
        else print(`scheduler stopped: ${stats.peers} peers, ${stats.digests} digests, ${stats.entries} holdings, ${stats.banned} banned`)
      }
    })
}
