/**
 * A real containerd (Debian's 1.6) for end-to-end pull tests: one throwaway daemon with its own root, state, temp
 * and grpc socket under a temporary directory, the CRI plugin and the snapshotters this machine cannot use turned
 * off (startup takes ~30 ms and logs only warnings), driven with `ctr`. `stop()` kills every container left
 * running, then containerd, unmounts whatever it left mounted under its directory and removes the directory.
 * Containers `run` starts keep their FIFOs and runc state under that directory and their cgroups under a parent
 * named after it, which `stop()` removes; only shim sockets go to containerd's fixed `/run/containerd/s`.
 *
 * With `cri`, the CRI plugin stays on, the way a remote snapshotter needs it: `disable_snapshot_annotations = false`,
 * the chosen CRI snapshotter, `registry.config_path` when given, its CNI directories empty ones of its own (it logs
 * that it found no network config and serves images all the same; pods are not for these tests) and its streaming
 * server on a free loopback port. Startup then waits until the CRI image service answers. `proxyPlugins` declares
 * remote snapshotters (`[proxy_plugins.NAME] type = "snapshot"`).
 *
 * @example
 * const skip = containerdSkipReason()
 * const c = await startContainerd()
 * try {
 *   const r = await c.pull(`${reg.host}/kit/layered:1`, { plainHttp: true, user: 'u:p' })
 *   assert.equal(r.code, 0, r.stderr)
 *   console.log(await contentDigests(c, `${reg.host}/kit/layered:1`))
 * } finally { await c.stop() }
 *
 * const cri = await startContainerd({ cri: { snapshotter: 'rafspeer', configPath: hostsDir }, proxyPlugins: { rafspeer: sock } })
 * // pull with `new CriImageClient({ address: cri.address })`, then:
 * const r = await cri.run(ref, 'c1', ['/bin/busybox', 'echo', 'hi'], { snapshotter: 'rafspeer', namespace: 'k8s.io' })
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync, rmSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, rm, rmdir, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, join } from 'node:path'
import { promisify } from 'node:util'
import { CriImageClient } from '../../cri/index.js'
import { stopChild } from './process.js'

const exec = promisify(execFile)

export const CONTAINERD_BIN = process.env.RAFSPEER_CONTAINERD_BIN ?? '/usr/bin/containerd'
export const CTR_BIN = process.env.RAFSPEER_CTR_BIN ?? '/usr/bin/ctr'
const START_TIMEOUT_MS = 20_000
const STOP_GRACE_MS = 5_000
const PULL_TIMEOUT_MS = 120_000
const RUN_TIMEOUT_MS = 60_000
const CLEANUP_TIMEOUT_MS = 10_000
/** CRI's namespace: containerd puts every CRI image and container there */
export const CRI_NAMESPACE = 'k8s.io'
const CRI_PLUGIN = 'io.containerd.grpc.v1.cri'
const OUTPUT_TAIL = 64 * 1024
// sun_path is 108 bytes including the NUL; containerd adds `.ttrpc` for its second socket
const MAX_SOCKET_PATH = 100

/** plugins a pull test does not need: CRI (slow, noisy, wants CNI) and snapshotters that only log why they skip */
const DISABLED_PLUGINS = [
  CRI_PLUGIN,
  'io.containerd.snapshotter.v1.aufs',
  'io.containerd.snapshotter.v1.btrfs',
  'io.containerd.snapshotter.v1.devmapper',
  'io.containerd.snapshotter.v1.zfs',
  'io.containerd.internal.v1.tracing',
  'io.containerd.tracing.processor.v1.otlp'
]

export interface ContainerdOptions {
  /** parent of the temporary directory; default the OS temp dir */
  dir?: string
  /** default `default` */
  namespace?: string
  /** containerd's log level, default `warn` */
  logLevel?: 'debug' | 'info' | 'warn' | 'error'
  /** keep the CRI plugin on (see the module's comment) */
  cri?: CriOptions
  /** remote snapshotters: name → the socket they serve `containerd.services.snapshots.v1.Snapshots` on */
  proxyPlugins?: Record<string, string>
}

export interface CriOptions {
  /** the snapshotter CRI pulls into and runs on; default `overlayfs` */
  snapshotter?: string
  /** `registry.config_path`: a directory of `<registry>/hosts.toml` */
  configPath?: string
}

export interface RunOptions {
  /** default the snapshotter containerd's `ctr run` defaults to (overlayfs) */
  snapshotter?: string
  /** default this daemon's namespace */
  namespace?: string
  /** default 60 s; then the container is killed and `code` is null */
  timeoutMs?: number
}

export interface PullOptions {
  /** a `config_path`-style directory of `<registry>/hosts.toml` (`ctr` reads no config.toml) */
  hostsDir?: string
  plainHttp?: boolean
  /** `user:password` */
  user?: string
  /** e.g. `linux/amd64`; default the host's platform */
  platform?: string
  /** `overlayfs` (containerd's default) or `native` */
  snapshotter?: string
  /** log every request and response to stderr (`--http-dump`) */
  httpDump?: boolean
  timeoutMs?: number
}

export interface CtrResult {
  /** exit code; null when killed (timeout) */
  code: number | null
  /** the last 64 KiB of each stream: ctr redraws its progress table on stdout */
  stdout: string
  stderr: string
  ms: number
  timedOut: boolean
}

export interface Containerd {
  /** the grpc socket */
  address: string
  /** containerd's `root` (content store, snapshots, metadata) */
  root: string
  /** the temporary directory holding everything */
  dir: string
  namespace: string
  /** `ctr images pull …`; never throws on a failed pull */
  pull: (ref: string, opts?: PullOptions) => Promise<CtrResult>
  /** any `ctr` command against this daemon (global flags are added; `namespace` overrides the daemon's) */
  ctr: (args: string[], opts?: { timeoutMs?: number, namespace?: string }) => Promise<CtrResult>
  /**
   * `ctr run --rm` of `image` as container `id` running `cmd`; never throws on a failed run. A run past its timeout
   * has its container killed and removed.
   */
  run: (image: string, id: string, cmd: string[], opts?: RunOptions) => Promise<CtrResult>
  /**
   * Runs containerd's garbage collector now and waits for it (`ctr leases delete --sync` of a fresh lease). Its
   * scheduler drops a deletion whose event is older than the end of the collection running at that moment: a
   * snapshot removed while the collector walked the snapshotter is left to the backend until something else
   * starts a collection. Users see that as a mount that outlives its container for a while; tests must not wait.
   */
  nudgeGc: (namespace?: string) => Promise<void>
  /**
   * Waits until containerd reaches the proxy snapshotter `name`: a probe snapshot is prepared through it (and
   * removed). A plugin whose socket appeared after containerd started is dialled again only when its connection's
   * backoff allows; `ctr snapshots ls` would not tell (an empty list never reaches the plugin).
   */
  waitForSnapshotter: (name: string, opts?: { namespace?: string, timeoutMs?: number }) => Promise<void>
  /** whether the CRI plugin is on (then its image service answers on `address`) */
  cri: boolean
  /** containerd's stderr so far (tail) */
  logs: () => string
  stop: () => Promise<void>
}

/** Why a real containerd cannot run here, or undefined when it can. */
export function containerdSkipReason (): string | undefined {
  for (const bin of [CONTAINERD_BIN, CTR_BIN]) if (!existsSync(bin)) return `${bin} missing (apt-get install containerd)`
  if (process.getuid?.() !== 0) return 'containerd needs root'
  try {
    if (!/\toverlay$/m.test(readFileSync('/proc/filesystems', 'utf8'))) return 'the kernel has no overlay filesystem'
  } catch {
    return '/proc/filesystems is unreadable'
  }
  return undefined
}

/** Why containers cannot be run here (containerd, runc, and busybox-static for the test images), or undefined. */
export function containerRunSkipReason (): string | undefined {
  return containerdSkipReason() ??
    (existsSync('/usr/sbin/runc') || existsSync('/usr/bin/runc') ? undefined : 'runc missing (apt-get install runc)') ??
    (existsSync('/usr/bin/busybox') ? undefined : 'busybox-static missing (apt-get install busybox-static)')
}

// Every containerd this process starts, so a test that crashes before its finally still leaves no daemon or mount.
const live = new Map<ChildProcess, string>()
process.once('exit', () => {
  for (const [child, dir] of live) {
    child.kill('SIGKILL')
    try { for (const m of mountsUnder(dir)) execFileSync('umount', ['-l', m], { stdio: 'ignore' }) } catch {}
    try { rmSync(dir, { recursive: true, force: true }) } catch {}
  }
})

/** Mount points at or below `dir`, deepest first (/proc/mounts escapes space, tab, newline and backslash). */
export function mountsUnder (dir: string): string[] {
  const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
  return readFileSync('/proc/mounts', 'utf8').split('\n')
    .map(l => unescape(l.split(' ')[1] ?? ''))
    .filter(m => m === dir || m.startsWith(dir + '/'))
    .sort((a, b) => b.length - a.length)
}

function configToml (dir: string, address: string, logLevel: string, opts: ContainerdOptions): string {
  // JSON strings are TOML basic strings for every path and name used here
  const q = JSON.stringify
  const cri = opts.cri
  const disabled = cri === undefined ? DISABLED_PLUGINS : DISABLED_PLUGINS.filter(p => p !== CRI_PLUGIN)
  const lines = [
    'version = 2',
    `root = ${q(join(dir, 'root'))}`,
    `state = ${q(join(dir, 'state'))}`,
    `temp = ${q(join(dir, 'tmp'))}`,
    `disabled_plugins = [${disabled.map(p => q(p)).join(', ')}]`,
    '',
    '[grpc]',
    `  address = ${q(address)}`,
    '',
    '[debug]',
    `  level = ${q(logLevel)}`,
    '',
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${q(join(dir, 'opt'))}`,
    ''
  ]
  if (cri !== undefined) {
    lines.push(
      `[plugins.${q(CRI_PLUGIN)}]`,
      // port 0: a free port, so two daemons (or a host containerd) never clash on 10010
      '  stream_server_address = "127.0.0.1"',
      '  stream_server_port = "0"',
      // its own empty CNI dirs: CRI creates conf_dir when missing, and /etc/cni/net.d is not the tests' to make
      `  [plugins.${q(CRI_PLUGIN)}.cni]`,
      `    bin_dir = ${q(join(dir, 'cni', 'bin'))}`,
      `    conf_dir = ${q(join(dir, 'cni', 'net.d'))}`,
      `  [plugins.${q(CRI_PLUGIN)}.containerd]`,
      `    snapshotter = ${q(cri.snapshotter ?? 'overlayfs')}`,
      '    disable_snapshot_annotations = false',
      ...(cri.configPath !== undefined ? [`  [plugins.${q(CRI_PLUGIN)}.registry]`, `    config_path = ${q(cri.configPath)}`] : []),
      ''
    )
  }
  for (const [name, socket] of Object.entries(opts.proxyPlugins ?? {})) {
    lines.push(`[proxy_plugins.${q(name)}]`, '  type = "snapshot"', `  address = ${q(socket)}`, '')
  }
  return lines.join('\n')
}

/** Runs ctr; the result carries the exit code instead of throwing. */
async function ctrRun (globals: string[], args: string[], timeoutMs: number): Promise<CtrResult> {
  const started = Date.now()
  const child = spawn(CTR_BIN, [...globals, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (s: string) => { stdout = (stdout + s).slice(-OUTPUT_TAIL) })
  child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr = (stderr + s).slice(-OUTPUT_TAIL) })
  let timedOut = false
  const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL') }, timeoutMs)
  const code = await new Promise<number | null>((resolve) => {
    child.once('error', (err) => { stderr += String(err); resolve(null) })
    child.once('close', (c) => resolve(c))
  })
  clearTimeout(timer)
  return { code, stdout, stderr, ms: Date.now() - started, timedOut }
}

const kill = async (child: ChildProcess): Promise<void> => { await stopChild(child, STOP_GRACE_MS) }

async function unmountAll (dir: string): Promise<void> {
  for (const m of mountsUnder(dir)) {
    try {
      await exec('umount', [m])
    } catch {
      await exec('umount', ['-l', m]).catch(() => {})
    }
  }
}

/** Starts a fresh containerd and waits until `ctr version` answers; `stop()` undoes everything. */
export async function startContainerd (opts: ContainerdOptions = {}): Promise<Containerd> {
  const skip = containerdSkipReason()
  if (skip !== undefined) throw new Error(skip)
  const dir = await mkdtemp(join(opts.dir ?? tmpdir(), 'rafspeer-containerd-'))
  const address = join(dir, 'containerd.sock')
  const namespace = opts.namespace ?? 'default'
  const globals = ['--address', address, '--namespace', namespace]
  if (Buffer.byteLength(address) > MAX_SOCKET_PATH) {
    await rm(dir, { recursive: true, force: true })
    throw new Error(`socket path ${address} is too long for a unix socket; pass a shorter dir`)
  }
  const dirs = ['root', 'state', 'tmp', 'opt', ...(opts.cri !== undefined ? ['cni', 'cni/bin', 'cni/net.d'] : [])]
  for (const d of dirs) await mkdir(join(dir, d))
  const config = join(dir, 'config.toml')
  await writeFile(config, configToml(dir, address, opts.logLevel ?? 'warn', opts))
  // TMPDIR too: containerd's own temp files (mount helpers, downloads) stay under dir
  const child = spawn(CONTAINERD_BIN, ['--config', config], {
    stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, TMPDIR: join(dir, 'tmp') }
  })
  live.set(child, dir)
  let err = ''
  child.stderr?.setEncoding('utf8').on('data', (s: string) => { err = (err + s).slice(-OUTPUT_TAIL) })
  const ctr = async (args: string[], o: { timeoutMs?: number, namespace?: string } = {}): Promise<CtrResult> =>
    await ctrRun(['--address', address, '--namespace', o.namespace ?? namespace], args, o.timeoutMs ?? PULL_TIMEOUT_MS)
  const removeContainer = async (ns: string, id: string): Promise<void> => {
    const o = { namespace: ns, timeoutMs: CLEANUP_TIMEOUT_MS }
    await ctr(['tasks', 'kill', '--signal', 'SIGKILL', id], o)
    await ctr(['tasks', 'delete', '--force', id], o)
    await ctr(['containers', 'delete', id], o)
  }
  // a container's shim outlives containerd (and keeps the container running): end every task first
  const removeAllTasks = async (): Promise<void> => {
    const o = { timeoutMs: CLEANUP_TIMEOUT_MS }
    const nss = await ctr(['namespaces', 'ls', '-q'], o)
    for (const ns of lines(nss.stdout)) {
      const tasks = await ctr(['tasks', 'ls', '-q'], { ...o, namespace: ns })
      for (const id of lines(tasks.stdout)) await removeContainer(ns, id)
    }
  }
  let stopped: Promise<void> | undefined
  const stop = async (): Promise<void> => {
    stopped ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) await removeAllTasks()
      await kill(child)
      live.delete(child)
      await unmountAll(dir)
      await removeCgroups(basename(dir))
      await rm(dir, { recursive: true, force: true })
    })()
    await stopped
  }
  try {
    const deadline = Date.now() + START_TIMEOUT_MS
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`containerd exited (${child.exitCode ?? child.signalCode}): ${err.trim()}`)
      }
      const v = await ctrRun(globals, ['version'], 2000)
      if (v.code === 0) break
      if (Date.now() > deadline) {
        throw new Error(`containerd did not answer on ${address} within ${START_TIMEOUT_MS} ms: ${err.trim()} ${v.stderr.trim()}`)
      }
      await new Promise(resolve => setTimeout(resolve, 50))
    }
    if (opts.cri !== undefined) await waitForCri(address, deadline, () => child.exitCode !== null || child.signalCode !== null, () => err)
  } catch (e) {
    await stop()
    throw e
  }
  const run = async (image: string, id: string, cmd: string[], o: RunOptions = {}): Promise<CtrResult> => {
    const ns = o.namespace ?? namespace
    const r = await ctr(['run', '--rm',
      // FIFOs, runc state and the cgroup where stop() finds them, instead of /run/containerd and /<namespace>/<id>
      '--fifo-dir', join(dir, 'fifo'), '--runc-root', join(dir, 'runc'), '--cgroup', `/${basename(dir)}/${id}`,
      ...(o.snapshotter !== undefined ? ['--snapshotter', o.snapshotter] : []), image, id, ...cmd
    ], { namespace: ns, timeoutMs: o.timeoutMs ?? RUN_TIMEOUT_MS })
    // a killed ctr leaves its container running; a finished `--rm` run removed it
    if (r.timedOut || r.code === null) await removeContainer(ns, id)
    return r
  }
  const pull = async (ref: string, o: PullOptions = {}): Promise<CtrResult> => await ctr(['images', 'pull',
    ...(o.hostsDir !== undefined ? ['--hosts-dir', o.hostsDir] : []),
    ...(o.plainHttp === true ? ['--plain-http'] : []),
    ...(o.user !== undefined ? ['--user', o.user] : []),
    ...(o.platform !== undefined ? ['--platform', o.platform] : []),
    ...(o.snapshotter !== undefined ? ['--snapshotter', o.snapshotter] : []),
    ...(o.httpDump === true ? ['--http-dump'] : []),
    ref
  ], { timeoutMs: o.timeoutMs })
  const nudgeGc = async (ns = namespace): Promise<void> => {
    const o = { namespace: ns, timeoutMs: CLEANUP_TIMEOUT_MS }
    const id = `gc-nudge-${process.pid}-${Date.now()}`
    for (const args of [['leases', 'create', '--id', id], ['leases', 'delete', '--sync', id]]) {
      const r = await ctr(args, o)
      if (r.code !== 0) throw new Error(`ctr ${args.join(' ')}: ${r.stderr.trim()}`)
    }
  }
  const waitForSnapshotter = async (name: string, o: { namespace?: string, timeoutMs?: number } = {}): Promise<void> => {
    const deadline = Date.now() + (o.timeoutMs ?? 60_000)
    const ns = { namespace: o.namespace ?? namespace, timeoutMs: 10_000 }
    for (let i = 0; ; i++) {
      const key = `snapshotter-probe-${process.pid}-${i}`
      const r = await ctr(['snapshots', '--snapshotter', name, 'prepare', key], ns)
      if (r.code === 0) {
        await ctr(['snapshots', '--snapshotter', name, 'rm', key], ns)
        return
      }
      if (Date.now() > deadline) throw new Error(`containerd does not reach the snapshotter ${name}: ${r.stderr.trim()}`)
      await new Promise(resolve => setTimeout(resolve, 250))
    }
  }
  return { address, root: join(dir, 'root'), dir, namespace, pull, ctr, run, nudgeGc, waitForSnapshotter, cri: opts.cri !== undefined, logs: () => err, stop }
}

const lines = (text: string): string[] => text.split('\n').map(l => l.trim()).filter(l => l !== '')

/** Removes the (empty, once its containers are gone) cgroup `name` and its children from every hierarchy. */
async function removeCgroups (name: string): Promise<void> {
  const roots = ['/sys/fs/cgroup', ...(await readdir('/sys/fs/cgroup').catch(() => [])).map(h => join('/sys/fs/cgroup', h))]
  for (const root of roots) {
    const parent = join(root, name)
    const children = await readdir(parent, { withFileTypes: true }).catch(() => [])
    for (const c of children) if (c.isDirectory()) await rmdir(join(parent, c.name)).catch(() => {})
    await rmdir(parent).catch(() => {})
  }
}

/** Polls CRI's image service until it answers: the CRI plugin starts serving a moment after containerd's own API. */
async function waitForCri (address: string, deadline: number, exited: () => boolean, logs: () => string): Promise<void> {
  const cri = new CriImageClient({ address, timeoutMs: 2000 })
  try {
    for (;;) {
      if (exited()) throw new Error(`containerd exited while its CRI plugin started: ${logs().trim()}`)
      try {
        await cri.list()
        return
      } catch (e) {
        if (Date.now() > deadline) throw new Error(`containerd's CRI image service did not answer on ${address}: ${(e as Error).message}\n${logs().trim()}`)
      }
      await new Promise(resolve => setTimeout(resolve, 50))
    }
  } finally {
    cri.close()
  }
}

/** The image names containerd knows (`ctr images ls -q`). */
export async function imageNames (c: Containerd): Promise<string[]> {
  const r = await c.ctr(['images', 'ls', '-q'], { timeoutMs: 10_000 })
  if (r.code !== 0) throw new Error(`ctr images ls failed: ${r.stderr.trim()}`)
  return r.stdout.split('\n').map(l => l.trim()).filter(l => l !== '')
}

/**
 * The layer digests of `ref` that are in containerd's content store, bottom first. `ref` is the name containerd
 * stored (`host:port/repo:tag`; Docker Hub names are normalised as `docker.io/library/…`). For an index, the
 * linux/amd64 manifest is followed.
 */
export async function contentDigests (c: Containerd, ref: string): Promise<string[]> {
  const get = async (digest: string): Promise<{ layers?: Array<{ digest: string }>, manifests?: Array<{ digest: string, platform?: { os?: string, architecture?: string } }> }> => {
    const r = await c.ctr(['content', 'get', digest], { timeoutMs: 10_000 })
    if (r.code !== 0) throw new Error(`ctr content get ${digest} failed: ${r.stderr.trim()}`)
    return JSON.parse(r.stdout)
  }
  const ls = await c.ctr(['images', 'ls'], { timeoutMs: 10_000 })
  // REF TYPE DIGEST SIZE PLATFORMS LABELS
  const line = ls.stdout.split('\n').map(l => l.split(/\s+/)).find(cols => cols[0] === ref)
  if (line === undefined) throw new Error(`containerd has no image ${ref}: ${ls.stdout.trim()}`)
  let doc = await get(line[2]!)
  if (doc.manifests !== undefined) {
    const m = doc.manifests.find(d => d.platform?.os === 'linux' && d.platform.architecture === 'amd64') ?? doc.manifests[0]
    if (m === undefined) return []
    doc = await get(m.digest)
  }
  const have = await c.ctr(['content', 'ls', '-q'], { timeoutMs: 10_000 })
  const present = new Set(have.stdout.split('\n').map(l => l.trim()))
  return (doc.layers ?? []).map(l => l.digest).filter(d => present.has(d))
}
