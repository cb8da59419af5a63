/**
 * containerd's registry host configuration (`<hostsDir>/<registry>/hosts.toml`, the `config_path` scheme of
 * containerd 1.5+), written so containerd pulls through the rafspeer mirror first and falls back to the registry
 * itself — what Spegel's `configuration` command does. A hosts.toml someone else wrote is kept as
 * `hosts.toml.rafspeer-backup-<timestamp>` before ours replaces it; ours is recognised by its first line and simply
 * rewritten, so re-running is harmless. {@link removeHostsToml} undoes it.
 *
 * @example
 * ```ts
 * const results = await writeHostsToml({
 *   hostsDir: '/etc/containerd/certs.d', mirror: 'http://127.0.0.1:5002', registries: ['docker.io', 'ghcr.io']
 * })
 * for (const r of results) console.log(r.action, r.path, r.backup ?? '')
 * console.log(criConfigHint('/etc/containerd/certs.d'))
 * ```
 */
import { randomBytes } from 'node:crypto'
import { copyFile, constants, mkdir, readdir, readFile, rename, rm, rmdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { RafspeerError, errorCode } from '../base/index.js'

/** The first line of every hosts.toml we write: how we tell ours from the operator's. */
export const HOSTS_TOML_MARKER = '# written by rafspeer proxy configure-containerd'
/** containerd's directory for "any registry without a directory of its own". */
export const DEFAULT_REGISTRY = '_default'
const BACKUP_PREFIX = 'hosts.toml.rafspeer-backup-'
// Docker Hub's name in image references is not the host that serves its API
const SERVER_OVERRIDES: Record<string, string> = { 'docker.io': 'https://registry-1.docker.io' }

export class ContainerdHostsError extends RafspeerError<'RAFSPEER_ERR_HOSTS_INVALID' | 'RAFSPEER_ERR_HOSTS_WRITE'> {}

export interface HostsWriteOptions {
  /** containerd's `config_path`, e.g. `/etc/containerd/certs.d` */
  hostsDir: string
  /** the rafspeer mirror, `http(s)://host[:port]` */
  mirror: string
  /** registries to route through the mirror: `docker.io`, `ghcr.io`, `127.0.0.1:5000` */
  registries: string[]
  /** also write `_default`, which containerd uses for every registry without a directory */
  all?: boolean
  /** compute the results and the file texts, touch nothing */
  dryRun?: boolean
  /** the clock of backup names */
  now?: () => Date
  signal?: AbortSignal
}

export interface HostsWriteResult {
  registry: string
  /** `<hostsDir>/<registry>/hosts.toml` */
  path: string
  /** created: there was none; replaced: ours was rewritten; backed-up: someone else's was saved first */
  action: 'created' | 'replaced' | 'unchanged' | 'backed-up'
  /** where someone else's file went */
  backup?: string
  content: string
}

export interface HostsRemoveOptions {
  hostsDir: string
  registries: string[]
  all?: boolean
  dryRun?: boolean
  signal?: AbortSignal
}

export interface HostsRemoveResult {
  registry: string
  path: string
  /** restored: the newest backup is back; removed: ours is gone; kept: not ours, left alone; absent: nothing there */
  action: 'restored' | 'removed' | 'kept' | 'absent'
  backup?: string
}

/** `http(s)://host[:port]` of a mirror URL; throws with every problem when it is not one. */
export function parseMirrorUrl (mirror: string): string {
  let url: URL
  try {
    url = new URL(mirror)
  } catch (cause) {
    throw new ContainerdHostsError('RAFSPEER_ERR_HOSTS_INVALID', `mirror ${JSON.stringify(mirror)} is not a URL (want http://host:port)`, { cause })
  }
  const problems: string[] = []
  if (url.protocol !== 'http:' && url.protocol !== 'https:') problems.push(`scheme ${url.protocol} is not http: or https:`)
  if (url.username !== '' || url.password !== '') problems.push('credentials do not belong in the mirror URL')
  if (url.pathname !== '/' && url.pathname !== '') problems.push(`path ${url.pathname} is not allowed`)
  if (/[?#]/.test(mirror)) problems.push('a query or fragment is not allowed')
  if (problems.length > 0) throw new ContainerdHostsError('RAFSPEER_ERR_HOSTS_INVALID', `mirror ${mirror}: ${problems.join('; ')}`)
  return `${url.protocol}//${url.host}`
}

const LABEL = '[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?'
const REGISTRY_NAME = new RegExp(`^(?:${LABEL}(?:\\.${LABEL})*|\\[[0-9a-f:.]+\\])(?::(\\d{1,5}))?$`)

/** Why `name` is not a registry directory name (`host[:port]`, lowercase, or `_default`), or undefined. */
export function registryNameProblem (name: string): string | undefined {
  if (name === DEFAULT_REGISTRY) return undefined
  const m = REGISTRY_NAME.exec(name)
  if (m === null) return `registry ${JSON.stringify(name)} is not host[:port] in lowercase (or ${DEFAULT_REGISTRY})`
  if (m[1] !== undefined && (Number(m[1]) < 1 || Number(m[1]) > 65535)) return `registry ${name}: port ${m[1]} is out of range`
  return undefined
}

function isLoopback (host: string): boolean {
  return host === 'localhost' || host === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host)
}

/** The registry's own endpoint, containerd's fallback after the mirror; undefined for `_default`. */
export function registryServer (registry: string): string | undefined {
  if (registry === DEFAULT_REGISTRY) return undefined
  const override = SERVER_OVERRIDES[registry]
  if (override !== undefined) return override
  const host = registry.replace(/:\d+$/, '')
  return `${isLoopback(host) ? 'http' : 'https'}://${registry}`
}

/** The text of one hosts.toml; `mirror` must already be valid (see {@link parseMirrorUrl}). */
export function hostsTomlText (registry: string, mirror: string): string {
  const server = registryServer(registry)
  return [
    HOSTS_TOML_MARKER,
    ...(server === undefined ? [] : [`server = ${JSON.stringify(server)}`]),
    '',
    `[host.${JSON.stringify(mirror)}]`,
    '  capabilities = ["pull", "resolve"]',
    ''
  ].join('\n')
}

/** The part of /etc/containerd/config.toml that makes the CRI plugin read `hostsDir`. */
export function criConfigHint (hostsDir: string): string {
  return [
    '# add to /etc/containerd/config.toml (config version 2), then restart containerd:',
    '[plugins."io.containerd.grpc.v1.cri".registry]',
    `  config_path = ${JSON.stringify(hostsDir)}`,
    '# containerd refuses config_path next to the older registry.mirrors / registry.configs tables: remove those.',
    `# ctr does not read config_path: pull with \`ctr images pull --hosts-dir ${hostsDir} ...\`.`,
    ''
  ].join('\n')
}

function registryList (registries: string[], all: boolean | undefined): string[] {
  const names = [...new Set([...registries, ...(all === true ? [DEFAULT_REGISTRY] : [])])]
  const problems = names.map(registryNameProblem).filter((p): p is string => p !== undefined)
  if (problems.length > 0) throw new ContainerdHostsError('RAFSPEER_ERR_HOSTS_INVALID', problems.join('; '))
  if (names.length === 0) throw new ContainerdHostsError('RAFSPEER_ERR_HOSTS_INVALID', 'no registries given (name some, or pass all)')
  return names
}

async function readIfExists (path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8')
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return undefined
    throw err
  }
}

const isOurs = (text: string): boolean => text.split('\n', 1)[0]?.trimEnd() === HOSTS_TOML_MARKER

/** Writes next to `path` and renames over it, so containerd never reads half a file. */
async function atomicWrite (path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`
  try {
    await writeFile(tmp, text, { mode: 0o644 })
    await rename(tmp, path)
  } catch (err) {
    await rm(tmp, { force: true })
    throw err
  }
}

/** Copies someone else's hosts.toml aside under a name no other backup has; returns the backup's path. */
async function backUp (dir: string, now: Date): Promise<string> {
  const path = join(dir, 'hosts.toml')
  const stamp = now.toISOString().replace(/[:.]/g, '-')
  for (let i = 0; ; i++) {
    const backup = join(dir, `${BACKUP_PREFIX}${stamp}${i === 0 ? '' : `-${i}`}`)
    try {
      await copyFile(path, backup, constants.COPYFILE_EXCL)
      return backup
    } catch (err) {
      if (errorCode(err) !== 'EEXIST' || i > 100) throw err
    }
  }
}

const writeError = (what: string, cause: unknown): ContainerdHostsError =>
  new ContainerdHostsError('RAFSPEER_ERR_HOSTS_WRITE', `${what}: ${(cause as Error).message}`, { cause })

/** Writes `<hostsDir>/<registry>/hosts.toml` for every registry (and `_default` with `all`). */
export async function writeHostsToml (opts: HostsWriteOptions): Promise<HostsWriteResult[]> {
  const mirror = parseMirrorUrl(opts.mirror)
  const registries = registryList(opts.registries, opts.all)
  const now = opts.now ?? (() => new Date())
  const results: HostsWriteResult[] = []
  for (const registry of registries) {
    opts.signal?.throwIfAborted()
    const dir = join(opts.hostsDir, registry)
    const path = join(dir, 'hosts.toml')
    const content = hostsTomlText(registry, mirror)
    try {
      const existing = await readIfExists(path)
      const result: HostsWriteResult = { registry, path, content, action: 'created' }
      if (existing === content) result.action = 'unchanged'
      else if (existing !== undefined && isOurs(existing)) result.action = 'replaced'
      else if (existing !== undefined) result.action = 'backed-up'
      if (opts.dryRun !== true && result.action !== 'unchanged') {
        await mkdir(dir, { recursive: true, mode: 0o755 })
        if (result.action === 'backed-up') result.backup = await backUp(dir, now())
        await atomicWrite(path, content)
      }
      results.push(result)
    } catch (err) {
      throw writeError(`cannot write ${path}`, err)
    }
  }
  return results
}

/** Undoes {@link writeHostsToml}: puts the newest backup back, or deletes our file (and its directory when empty). */
export async function removeHostsToml (opts: HostsRemoveOptions): Promise<HostsRemoveResult[]> {
  const registries = registryList(opts.registries, opts.all)
  const results: HostsRemoveResult[] = []
  for (const registry of registries) {
    opts.signal?.throwIfAborted()
    const dir = join(opts.hostsDir, registry)
    const path = join(dir, 'hosts.toml')
    try {
      const existing = await readIfExists(path)
      if (existing !== undefined && !isOurs(existing)) { results.push({ registry, path, action: 'kept' }); continue }
      const entries = await readdir(dir).catch((err: unknown) => { if (errorCode(err) === 'ENOENT') return []; throw err })
      // ISO timestamps sort as text; a `-N` suffix (same millisecond) sorts after its plain twin
      const newest = entries.filter(e => e.startsWith(BACKUP_PREFIX)).sort().at(-1)
      if (newest !== undefined) {
        const backup = join(dir, newest)
        if (opts.dryRun !== true) await rename(backup, path)
        results.push({ registry, path, action: 'restored', backup })
      } else if (existing !== undefined) {
        if (opts.dryRun !== true) {
          await rm(path, { force: true })
          await rmdir(dir).catch(() => {})
        }
        results.push({ registry, path, action: 'removed' })
      } else {
        results.push({ registry, path, action: 'absent' })
      }
    } catch (err) {
      throw writeError(`cannot remove ${path}`, err)
    }
  }
  return results
}
