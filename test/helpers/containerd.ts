/**
 * A real containerd (Debian's 1.6) for end-to-end pull tests: one throwaway daemon with its own root, state, temp
 * and grpc socket under a temporary directory, the CRI plugin and the snapshotters this machine cannot use turned
 * off (startup takes ~30 ms and logs only warnings), driven with `ctr`. `stop()` kills it, unmounts whatever it
 * left mounted under its directory and removes the directory.
 *
 * @example
 * const skip = containerdSkipReason()
 * const c = await startContainerd()
 * try {
 *   const r = await c.pull(`${reg.host}/kit/layered:1`, { plainHttp: true, user: 'u:p' })
 *   assert.equal(r.code, 0, r.stderr)
 *   console.log(await contentDigests(c, `${reg.host}/kit/layered:1`))
 * } finally { await c.stop() }
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync, rmSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)

export const CONTAINERD_BIN = process.env.RAFSPEER_CONTAINERD_BIN ?? '/usr/bin/containerd'
export const CTR_BIN = process.env.RAFSPEER_CTR_BIN ?? '/usr/bin/ctr'
const START_TIMEOUT_MS = 20_000
const STOP_GRACE_MS = 5_000
const PULL_TIMEOUT_MS = 120_000
const OUTPUT_TAIL = 64 * 1024
// sun_path is 108 bytes including the NUL; containerd adds `.ttrpc` for its second socket
const MAX_SOCKET_PATH = 100

/** plugins a pull test does not need: CRI (slow, noisy, wants CNI) and snapshotters that only log why they skip */
const DISABLED_PLUGINS = [
  'io.containerd.grpc.v1.cri',
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
  /** any `ctr` command against this daemon (global flags are added) */
  ctr: (args: string[], opts?: { timeoutMs?: number }) => Promise<CtrResult>
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

function configToml (dir: string, address: string, logLevel: string): string {
  const q = JSON.stringify
  return [
    'version = 2',
    `root = ${q(join(dir, 'root'))}`,
    `state = ${q(join(dir, 'state'))}`,
    `temp = ${q(join(dir, 'tmp'))}`,
    `disabled_plugins = [${DISABLED_PLUGINS.map(p => q(p)).join(', ')}]`,
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
  ].join('\n')
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

async function kill (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>(resolve => child.once('exit', () => resolve()))
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS)
  await exited
  clearTimeout(timer)
}

async function unmountAll (dir: string): Promise<void> {
  for (const m of mountsUnder(dir)) {
    try {
      await run('umount', [m])
    } catch {
      await run('umount', ['-l', m]).catch(() => {})
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
  await Promise.all(['root', 'state', 'tmp', 'opt'].map(async d => await mkdir(join(dir, d))))
  const config = join(dir, 'config.toml')
  await writeFile(config, configToml(dir, address, opts.logLevel ?? 'warn'))
  // TMPDIR too: containerd's own temp files (mount helpers, downloads) stay under dir
  const child = spawn(CONTAINERD_BIN, ['--config', config], {
    stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, TMPDIR: join(dir, 'tmp') }
  })
  live.set(child, dir)
  let err = ''
  child.stderr?.setEncoding('utf8').on('data', (s: string) => { err = (err + s).slice(-OUTPUT_TAIL) })
  let stopped: Promise<void> | undefined
  const stop = async (): Promise<void> => {
    stopped ??= (async () => {
      await kill(child)
      live.delete(child)
      await unmountAll(dir)
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
  } catch (e) {
    await stop()
    throw e
  }
  const ctr = async (args: string[], o: { timeoutMs?: number } = {}): Promise<CtrResult> =>
    await ctrRun(globals, args, o.timeoutMs ?? PULL_TIMEOUT_MS)
  const pull = async (ref: string, o: PullOptions = {}): Promise<CtrResult> => await ctr(['images', 'pull',
    ...(o.hostsDir !== undefined ? ['--hosts-dir', o.hostsDir] : []),
    ...(o.plainHttp === true ? ['--plain-http'] : []),
    ...(o.user !== undefined ? ['--user', o.user] : []),
    ...(o.platform !== undefined ? ['--platform', o.platform] : []),
    ...(o.snapshotter !== undefined ? ['--snapshotter', o.snapshotter] : []),
    ...(o.httpDump === true ? ['--http-dump'] : []),
    ref
  ], { timeoutMs: o.timeoutMs })
  return { address, root: join(dir, 'root'), dir, namespace, pull, ctr, logs: () => err, stop }
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
