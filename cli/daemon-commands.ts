/**
 * `daemon`, `mount`, `umount` and `status`: run the node daemon, and talk to it over its admin socket. The node
 * lives in `peer/` (loaded when a command runs, so `--help` stays quick).
 *
 * Where the admin socket is, for `mount`, `umount` and `status`: `--socket`, else `$RAFSPEER_SOCKET`, else the
 * `socket` of `--config FILE` (or `$RAFSPEER_CONFIG`), else /run/rafspeer/rafspeer.sock.
 */
import { existsSync, fstatSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { type Command, InvalidArgumentError, Option } from 'commander'
import { formatBytes, type LogLevel } from '../base/index.js'
import type { DaemonConfigInput, DaemonInfo, MetricsJson, MountInfo, MountMode, MountRequest, PrefetchPolicy } from '../peer/index.js'

const peer = async (): Promise<typeof import('../peer/index.js')> => await import('../peer/index.js')
/** what the client commands need of a running daemon, without loading the node */
const daemonClient = async (): Promise<typeof import('../peer/client.js')> => await import('../peer/client.js')
const proxy = async (): Promise<typeof import('../proxy/index.js')> => await import('../proxy/index.js')
const snapshotter = async (): Promise<typeof import('../snapshotter/index.js')> => await import('../snapshotter/index.js')

const MODES: readonly MountMode[] = ['auto', 'erofs-lazy', 'fuse', 'kernel']
const LOG_LEVELS = ['error', 'warn', 'info', 'debug', 'trace']

export function parseMode (value: string): MountMode {
  if (!(MODES as readonly string[]).includes(value)) throw new InvalidArgumentError(`mode must be one of ${MODES.join(', ')} (got '${value}')`)
  return value as MountMode
}

/** `all`, `none`, `table`, or a file listing one path per line (made absolute: the daemon has another cwd). */
export function parsePrefetch (value: string, cwd = process.cwd()): PrefetchPolicy {
  if (value === 'all' || value === 'none' || value === 'table') return value
  const file = resolve(cwd, value)
  if (!existsSync(file)) throw new InvalidArgumentError(`'${value}' is neither all, none, table nor an existing file listing paths`)
  return { file }
}

/** The daemon's levels; `trace` (accepted by the global flag) means `debug`. */
export function parseLogLevel (value: string): LogLevel {
  if (!LOG_LEVELS.includes(value)) throw new InvalidArgumentError(`log level must be one of ${LOG_LEVELS.join(', ')} (got '${value}')`)
  return value === 'trace' ? 'debug' : value as LogLevel
}

/** A local bootstrap path is made absolute (the daemon has another cwd); a registry reference is left alone. */
export function resolveSource (ref: string, cwd = process.cwd()): string {
  const local = ref.startsWith('/') || ref.startsWith('./') || ref.startsWith('../') || existsSync(resolve(cwd, ref))
  return local ? resolve(cwd, ref) : ref
}

export interface MountFlags {
  mode?: MountMode
  prefetch?: PrefetchPolicy
  blobDir?: string
  plainHttp?: boolean
  socket?: string
  foreground?: boolean
  cacheDir?: string
  workDir?: string
  config?: string
  json?: boolean
}

export function buildMountRequest (ref: string, mountpoint: string, f: MountFlags, cwd = process.cwd()): MountRequest {
  if (ref.trim() === '') throw new InvalidArgumentError('the image reference is empty')
  const req: MountRequest = { source: resolveSource(ref, cwd), mountpoint: resolve(cwd, mountpoint) }
  if (f.mode !== undefined) req.mode = f.mode
  if (f.prefetch !== undefined) req.prefetch = f.prefetch
  if (f.blobDir !== undefined) req.blobDir = resolve(cwd, f.blobDir)
  if (f.plainHttp === true) req.plainHttp = true
  return req
}

export interface DaemonFlags {
  config?: string
  socket?: string
  cacheDir?: string
  workDir?: string
  logLevel?: LogLevel
  /** the schedulers' multiaddrs (with /p2p/<id>), one used at a time; turns P2P on */
  scheduler?: string[]
  /** run a scheduler inside this daemon; turns P2P on */
  embeddedScheduler?: boolean
  /** P2P listen multiaddrs */
  p2pListen?: string[]
  zone?: string
  /** serve the registry mirror on this host:port */
  proxyListen?: string
  /** the mirror's upstream for requests without ?ns= */
  upstream?: string
  /** plain HTTP to every registry */
  plainHttp?: boolean
  /** serve containerd's snapshotter API on this Unix socket */
  snapshotterAddress?: string
  /** stop when stdin (a pipe from the parent) closes */
  exitWithParent?: boolean
  /** the snapshotter's images are mounted by the daemon on this admin socket */
  daemonSocket?: string
  /** the snapshotter serves CRI's image service here, forwarding to containerd */
  imageServiceAddress?: string
  /** containerd's grpc socket (where the image service forwards) */
  containerdAddress?: string
}

/** Flags laid over the config file; paths made absolute against `cwd`. */
export function daemonOverrides (f: DaemonFlags, cwd = process.cwd()): DaemonConfigInput {
  const o: DaemonConfigInput = {}
  if (f.socket !== undefined) o.socket = resolve(cwd, f.socket)
  if (f.workDir !== undefined) o.workDir = resolve(cwd, f.workDir)
  if (f.cacheDir !== undefined) o.cache = { dir: resolve(cwd, f.cacheDir) }
  if (f.logLevel !== undefined) o.log = { level: f.logLevel }
  if (f.scheduler !== undefined || f.embeddedScheduler === true || f.zone !== undefined) {
    o.scheduler = {
      ...(f.scheduler !== undefined ? { address: f.scheduler } : {}),
      ...(f.embeddedScheduler === true ? { embedded: true } : {}),
      ...(f.zone !== undefined ? { zone: f.zone } : {})
    }
  }
  if (f.p2pListen !== undefined) o.p2p = { listen: f.p2pListen }
  if (f.proxyListen !== undefined || f.upstream !== undefined) {
    o.proxy = { ...(f.proxyListen !== undefined ? { listen: f.proxyListen } : {}), ...(f.upstream !== undefined ? { defaultUpstream: f.upstream } : {}) }
  }
  if (f.plainHttp === true) o.registry = { plainHttp: true }
  const snap = {
    ...(f.snapshotterAddress !== undefined ? { address: resolve(cwd, f.snapshotterAddress) } : {}),
    ...(f.daemonSocket !== undefined ? { daemonSocket: resolve(cwd, f.daemonSocket) } : {}),
    ...(f.imageServiceAddress !== undefined ? { imageServiceAddress: resolve(cwd, f.imageServiceAddress) } : {}),
    ...(f.containerdAddress !== undefined ? { containerdAddress: resolve(cwd, f.containerdAddress) } : {})
  }
  if (Object.keys(snap).length > 0) o.snapshotter = snap
  return o
}

/** The daemon flags the registry mirror adds (`rafspeer daemon --proxy-listen`, `rafspeer proxy --listen`). */
export function addMirrorOptions (cmd: Command, listenFlag: string): Command {
  return cmd
    .option(`${listenFlag} <host:port>`, 'serve the registry mirror here (containerd hosts.toml, docker registry-mirrors, skopeo registries.conf)')
    .option('--upstream <host[:port]>', 'the registry of mirror requests without ?ns= (docker, skopeo), e.g. docker.io')
    .option('--plain-http', 'talk to registries over http (default: only loopback ones)')
}

/**
 * Runs a daemon until a signal: the node, with the registry mirror and the containerd snapshotter when the config
 * or the flags give them an address.
 */
export async function runMirrorDaemon (f: DaemonFlags): Promise<void> {
  const { loadDaemonConfig, runDaemon } = await peer()
  const config = await loadDaemonConfig(configPath(f), daemonOverrides(f))
  const { withMirror } = await proxy()
  const assemble = config.snapshotter.address !== undefined ? (await snapshotter()).withSnapshotter(withMirror()) : withMirror()
  if (f.exitWithParent === true) {
    const st = fstatSync(0)
    if (!st.isFIFO() && !st.isSocket()) throw new Error('--exit-with-parent needs stdin to be a pipe from the process that started the daemon (it is a ' + (st.isCharacterDevice() ? 'terminal or device' : 'file') + ')')
  }
  await runDaemon(config, { assemble }, f.exitWithParent === true ? { stopWhenEnds: process.stdin } : {})
}

/** The config file to read: `--config`, else `$RAFSPEER_CONFIG`, else none (defaults). */
export function configPath (f: { config?: string }, env: NodeJS.ProcessEnv = process.env, cwd = process.cwd()): string | undefined {
  const p = f.config ?? (env.RAFSPEER_CONFIG !== undefined && env.RAFSPEER_CONFIG !== '' ? env.RAFSPEER_CONFIG : undefined)
  return p === undefined ? undefined : resolve(cwd, p)
}

/** The admin socket a client command talks to (see the file comment). */
export async function clientSocket (f: { socket?: string, config?: string }, env: NodeJS.ProcessEnv = process.env, cwd = process.cwd()): Promise<string> {
  if (f.socket !== undefined) return resolve(cwd, f.socket)
  if (env.RAFSPEER_SOCKET !== undefined && env.RAFSPEER_SOCKET !== '') return resolve(cwd, env.RAFSPEER_SOCKET)
  const path = configPath(f, env, cwd)
  if (path === undefined) return (await daemonClient()).DEFAULT_SOCKET
  const { loadDaemonConfig } = await peer()
  return (await loadDaemonConfig(path)).socket
}

/** The `--log-level` given on the command line (here or on a parent command: the global flag takes it first). */
export function cliLogLevel (cmd: Command): LogLevel | undefined {
  for (let c: Command | null = cmd; c !== null; c = c.parent) {
    const src = c.getOptionValueSource('logLevel')
    if (src === 'cli' || src === 'env') return parseLogLevel(String(c.getOptionValue('logLevel')))
  }
  return undefined
}

const short = (digest: string): string => digest.replace(/^sha256:/, '').slice(0, 12)
const pct = (r: number | null): string => r === null ? '-' : `${Math.round(r * 100)}%`

export function formatMountInfo (m: MountInfo): string {
  const present = m.blobs.reduce((a, b) => a + b.chunksPresent, 0)
  const total = m.blobs.reduce((a, b) => a + b.chunksReferenced, 0)
  const p = m.prefetch
  return [
    `mounted ${m.source} at ${m.mountpoint} (${m.mode}${m.requestedMode !== m.mode ? `, asked ${m.requestedMode}` : ''})`,
    ...(m.manifestDigest !== undefined ? [`  manifest   ${m.manifestDigest}`] : []),
    `  bootstrap  ${m.bootstrapDigest} (${m.bootstrapPath})`,
    `  blobs      ${m.blobs.length}, ${m.blobs.filter(b => b.complete).length} complete in the cache (${present}/${total} referenced chunks present)`,
    `  prefetch   ${p.state}${p.state === 'none' ? '' : `: ${p.chunksDone}/${p.chunksTotal} chunks of ${formatBytes(p.bytesTotal)}`}${p.error !== undefined ? ` (${p.error})` : ''}`
  ].join('\n')
}

export function formatStatus (d: DaemonInfo, mounts: MountInfo[], m: MetricsJson): string {
  const c = m.cache
  const l = m.fetchLatencyMs
  const lines = [
    `daemon    ${d.state}, rafspeer ${d.version}, pid ${d.pid}, since ${d.startedAt}`,
    `socket    ${d.socket}${d.metricsListen !== undefined ? ` (metrics on http://${d.metricsListen}/metrics)` : ''}`,
    `cache     ${d.cacheDir}: ${formatBytes(c.diskBytes)}${c.capBytes !== undefined ? ` of ${formatBytes(c.capBytes)}` : ' (no cap)'}, ` +
      `${c.blobs} blobs (${c.completeBlobs} complete), ${c.verifyFailures} verify failures, ${formatBytes(c.evictedBytes)} evicted`,
    `fetches   ${l.count === 0 ? 'none yet' : `last ${l.count}: p50 ${l.p50} ms, p90 ${l.p90} ms, p99 ${l.p99} ms, max ${l.max} ms`}`,
    `read      ${formatBytes(m.totals.readBytes)} in ${m.totals.readCount} reads (${pct(m.totals.cacheHitRatio)} from cache), ` +
      `fetched ${formatBytes(m.totals.bytesBySource.registry)} from the registry, ${formatBytes(m.totals.bytesBySource.peer)} from peers`,
    `mounts    ${mounts.length === 0 ? 'none' : mounts.length}`
  ]
  for (const info of mounts) {
    const im = m.images.find(i => i.mountpoint === info.mountpoint)
    const p = info.prefetch
    lines.push(`  ${info.mountpoint}  ${info.mode}  ${info.source}` +
      (info.manifestDigest !== undefined ? ` (${short(info.manifestDigest)})` : '') +
      (im !== undefined ? `  read ${formatBytes(im.readBytes)} (${pct(im.cacheHitRatio)} cache, longest wait ${im.readWaitMaxMs} ms` +
        (im.readHandOffs > 0 ? `, ${im.readHandOffs} chunks the swarm held past the hand-off` : '') + ')' : '') +
      `  prefetch ${p.state}${p.state === 'none' ? '' : ` ${p.chunksDone}/${p.chunksTotal}`}`)
  }
  return lines.join('\n')
}

const print = (text: string): void => { process.stdout.write(text + '\n') }
const printJson = (value: unknown): void => { print(JSON.stringify(value, null, 2)) }

async function probeFree (socket: string): Promise<boolean> {
  const { AdminClient, AdminClientError } = await daemonClient()
  try {
    await new AdminClient(socket, { timeoutMs: 2000 }).daemon()
    return false
  } catch (err) {
    return err instanceof AdminClientError && err.code === 'RAFSPEER_ERR_NO_DAEMON' && err.status === undefined
  }
}

/** The default admin socket, as the help texts name it (the daemon's config schema holds the value). */
const SOCKET_HELP = '/run/rafspeer/rafspeer.sock'

/** The flags every command that runs a daemon takes (`daemon`, `proxy`, `snapshotter`). */
export function addDaemonOptions (cmd: Command): Command {
  return cmd
    .option('--config <file>', 'daemon config (JSON; default $RAFSPEER_CONFIG, else built-in defaults)')
    .option('--socket <path>', `admin API socket (default ${SOCKET_HELP})`)
    .option('--work-dir <dir>', 'daemon state directory (default /var/lib/rafspeer)')
    .option('--cache-dir <dir>', 'blob cache directory (default <work-dir>/cache)')
    .option('--log-level <level>', 'error, warn, info or debug (overrides the config)', parseLogLevel)
    .option('--scheduler <multiaddr>', 'the scheduler to use, with its peer id (what `rafspeer scheduler` prints); repeatable: schedulers sharing one swarm (over one Redis), one used at a time, the next when it fails; turns P2P on', (v: string, prev: string[] = []) => [...prev, v])
    .option('--embedded-scheduler', 'run a scheduler in this daemon, on its P2P addresses; turns P2P on')
    .option('--p2p-listen <multiaddr>', 'P2P listen multiaddr, repeatable (default /ip4/0.0.0.0/tcp/0)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--zone <label>', 'locality label, wide to narrow: country|region|zone|rack (neighbours in it are preferred)')
}

export function registerDaemonCommands (program: Command): void {
  addDaemonOptions(addMirrorOptions(program.command('daemon'), '--proxy-listen')
    .description('run the node daemon: admin API on a Unix socket, mounts, blob cache, Prometheus metrics, the registry mirror with --proxy-listen; until SIGTERM/SIGINT (then unmounts all and flushes)'))
    .option('--snapshotter-address <socket>', 'serve the containerd remote snapshotter on this Unix socket (see `rafspeer snapshotter`)')
    .option('--exit-with-parent', 'also stop (unmount all, flush) when stdin, a pipe from the process that started the daemon, closes: that process died')
    .action(async (f: DaemonFlags, cmd: Command) => {
      const logLevel = f.logLevel ?? cliLogLevel(cmd)
      await runMirrorDaemon({ ...f, ...(logLevel !== undefined ? { logLevel } : {}) })
    })

  program.command('mount')
    .description('mount an image (registry reference, or a local bootstrap with --blob-dir) through the daemon, or in this process with --foreground')
    .argument('<ref>', 'image reference (host/repo:tag, host/repo@sha256:…) or a bootstrap file')
    .argument('<mountpoint>', 'directory to mount at')
    .addOption(new Option('--mode <mode>', 'fuse; kernel (EROFS over the cache files: pulls what is missing first); auto (kernel when the cache holds the whole image, else fuse)').argParser(parseMode))
    .option('--prefetch <policy>', 'all, none, table (the image\'s prefetch table) or a file listing paths', (v: string) => parsePrefetch(v))
    .option('--blob-dir <dir>', 'with a local bootstrap: the directory holding its blobs')
    .option('--plain-http', 'talk to the registry over http')
    .option('--socket <path>', 'admin socket of the daemon (with --foreground: the socket to serve)')
    .option('--foreground', 'run a daemon in this process with just this mount, until SIGTERM/SIGINT')
    .option('--cache-dir <dir>', 'with --foreground: blob cache directory')
    .option('--work-dir <dir>', 'with --foreground: daemon state directory')
    .option('--config <file>', 'daemon config (finds the socket; with --foreground, configures the daemon)')
    .option('--json', 'print the mount as JSON')
    .action(async (ref: string, mountpoint: string, f: MountFlags, cmd: Command) => {
      const req = buildMountRequest(ref, mountpoint, f)
      const show = (info: MountInfo): void => { f.json === true ? printJson(info) : print(formatMountInfo(info)) }
      if (f.foreground !== true) {
        for (const [flag, v] of [['--cache-dir', f.cacheDir], ['--work-dir', f.workDir]] as const) {
          if (v !== undefined) throw new Error(`${flag} applies with --foreground only (a running daemon has its own)`)
        }
        const { AdminClient } = await daemonClient()
        show(await new AdminClient(await clientSocket(f)).mount(req))
        return
      }
      const { loadDaemonConfig, runDaemon } = await peer()
      const logLevel = cliLogLevel(cmd)
      const overrides = daemonOverrides({
        ...(f.cacheDir !== undefined ? { cacheDir: f.cacheDir } : {}),
        ...(f.workDir !== undefined ? { workDir: f.workDir } : {}),
        ...(logLevel !== undefined ? { logLevel } : {})
      })
      let config = await loadDaemonConfig(configPath(f), overrides)
      // an explicit --socket must be free; otherwise the config's socket if free, else one of our own
      const socket = f.socket !== undefined ? resolve(f.socket)
        : await probeFree(config.socket) ? config.socket : join(config.workDir, `rafspeer-${process.pid}.sock`)
      config = await loadDaemonConfig(configPath(f), { ...overrides, socket })
      await runDaemon(config, {}, {
        mounts: [req],
        onReady: (_daemon, [info]) => {
          if (info !== undefined) show(info)
          if (f.json !== true) print(`serving until SIGINT/SIGTERM (admin socket ${socket})`)
        }
      })
    })

  program.command('umount')
    .alias('unmount')
    .description('unmount an image mounted by the daemon')
    .argument('<mountpoint>')
    .option('--socket <path>', 'admin socket of the daemon')
    .option('--config <file>', 'daemon config (finds the socket)')
    .action(async (mountpoint: string, f: { socket?: string, config?: string }) => {
      const mp = resolve(mountpoint)
      const { AdminClient } = await daemonClient()
      await new AdminClient(await clientSocket(f)).unmount(mp)
      print(`unmounted ${mp}`)
    })

  program.command('access-list')
    .description('the files of a mounted image whose data was read, in first-read order (the input of `convert --prefetch-files`)')
    .argument('<mountpoint>', 'a mount of the daemon (`rafspeer status` lists them)')
    .option('-o, --output <file>', 'write the list to this file instead of stdout')
    .option('--socket <path>', 'admin socket of the daemon')
    .option('--config <file>', 'daemon config (finds the socket)')
    .option('--json', 'JSON output: { mountpoint, source, mode, tracked, files }')
    .action(async (mountpoint: string, f: { output?: string, socket?: string, config?: string, json?: boolean }) => {
      const { AdminClient } = await daemonClient()
      const list = await new AdminClient(await clientSocket(f)).accessList(resolve(mountpoint))
      if (!list.tracked) {
        process.stderr.write(`rafspeer: ${list.mountpoint} is a ${list.mode} mount: the kernel serves its reads and the daemon sees none (mount it with --mode erofs-lazy or fuse to record)\n`)
        process.exitCode = 1
      }
      const text = f.json === true ? JSON.stringify(list, null, 2) + '\n' : list.files.map(p => p + '\n').join('')
      if (f.output !== undefined) {
        await writeFile(f.output, text)
      } else process.stdout.write(text)
    })

  program.command('status')
    .description('daemon state, mounts, cache and read/fetch numbers')
    .option('--socket <path>', 'admin socket of the daemon')
    .option('--config <file>', 'daemon config (finds the socket)')
    .option('--json', 'JSON output: { daemon, mounts, metrics }')
    .action(async (f: { socket?: string, config?: string, json?: boolean }) => {
      const { AdminClient } = await daemonClient()
      const client = new AdminClient(await clientSocket(f))
      const [daemon, mounts, metrics] = await Promise.all([client.daemon(), client.mounts(), client.metricsJson()])
      if (f.json === true) printJson({ daemon, mounts, metrics })
      else print(formatStatus(daemon, mounts, metrics))
    })
}
