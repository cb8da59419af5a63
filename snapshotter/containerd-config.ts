/**
 * containerd's side of the rafspeer snapshotter: the lines of `/etc/containerd/config.toml` (config version 2, the
 * format of containerd 1.x) that declare it as a proxy snapshotter and make it the one the CRI plugin pulls into,
 * with the snapshot labels CRI only sends when `disable_snapshot_annotations = false`:
 *
 * ```toml
 * version = 2
 *
 * [proxy_plugins.rafspeer]
 *   type = "snapshot"
 *   address = "/run/rafspeer/snapshotter.sock"
 *
 * [plugins."io.containerd.grpc.v1.cri".containerd]
 *   snapshotter = "rafspeer"
 *   disable_snapshot_annotations = false
 * ```
 *
 * {@link writeSnapshotterConfig} merges these keys into an existing file and keeps everything else (a registry
 * `config_path`, runtimes, another proxy plugin); the file is parsed and written anew, so its comments survive only
 * in the copy kept beside it as `<file>.rafspeer-backup-<timestamp>`. The write is atomic (a temporary file renamed
 * over the original): containerd never reads half a file. A file of another config version is refused, not
 * converted. {@link unwriteSnapshotterConfig} takes the keys out again. containerd reads the file only at start:
 * restart it afterwards.
 *
 * @example
 * ```ts
 * const r = await writeSnapshotterConfig('/etc/containerd/config.toml', { address: '/run/rafspeer/snapshotter.sock' })
 * console.log(r.action, r.backup ?? '', r.warnings.join('\n'))
 * ```
 */
import { randomBytes } from 'node:crypto'
import { chmod, constants, copyFile, mkdir, readFile, realpath, rename, rm, stat, writeFile } from 'node:fs/promises'
import { dirname, isAbsolute } from 'node:path'
import { isDeepStrictEqual } from 'node:util'
import { parse, stringify, type TomlTable } from 'smol-toml'
import { RafspeerError, errorCode } from '../base/index.js'

export const DEFAULT_SNAPSHOTTER_NAME = 'rafspeer'
/** the CRI plugin's id in a version 2 config */
export const CRI_PLUGIN_ID = 'io.containerd.grpc.v1.cri'
const BACKUP_INFIX = '.rafspeer-backup-'
/** a snapshotter name containerd and `ctr --snapshotter` take without fuss */
const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/
const BARE_KEY = /^[A-Za-z0-9_-]+$/
/** sun_path is 108 bytes with its NUL */
const MAX_SOCKET_PATH = 107

export type ContainerdConfigErrorCode =
  /** the options are wrong (a bad name or socket path) */
  | 'RAFSPEER_ERR_CONTAINERD_CONFIG_OPTIONS'
  /** the file is not TOML, or a key we set is not a table where a table belongs */
  | 'RAFSPEER_ERR_CONTAINERD_CONFIG_INVALID'
  /** the file is not config version 2 */
  | 'RAFSPEER_ERR_CONTAINERD_CONFIG_VERSION'
  /** reading, backing up or writing the file failed */
  | 'RAFSPEER_ERR_CONTAINERD_CONFIG_WRITE'

export class ContainerdConfigError extends RafspeerError<ContainerdConfigErrorCode> {}

export interface SnapshotterConfigOptions {
  /** the socket the snapshotter serves on (an absolute path) */
  address: string
  /** the name containerd knows it by (`ctr --snapshotter NAME`); default `rafspeer` */
  name?: string
  /** make it the CRI plugin's snapshotter and turn CRI's snapshot labels on; default true */
  criSnapshotter?: boolean
}

export interface ConfigFileOptions {
  /** compute the result and the text, touch nothing */
  dryRun?: boolean
  /** the clock of backup names */
  now?: () => Date
  signal?: AbortSignal
}

export interface ConfigWriteResult {
  /** the file written (a symlink's target) */
  path: string
  /** created: there was no file; updated: our keys were merged in; unchanged: they were all there already */
  action: 'created' | 'updated' | 'unchanged'
  /** where the file as it was went */
  backup?: string
  /** the text now in the file */
  content: string
  /** what the operator should know: the CRI plugin disabled, a snapshotter replaced, imports that may override */
  warnings: string[]
}

export interface ConfigUnwriteResult {
  path: string
  /** updated: our keys were taken out; removed: nothing but `version` was left, so the file went; unchanged; absent */
  action: 'updated' | 'removed' | 'unchanged' | 'absent'
  backup?: string
  /** the text now in the file (empty when removed or absent) */
  content: string
}

function checkOptions (opts: SnapshotterConfigOptions): { name: string, address: string, cri: boolean } {
  const name = opts.name ?? DEFAULT_SNAPSHOTTER_NAME
  const problems: string[] = []
  if (!NAME.test(name)) problems.push(`name ${JSON.stringify(name)} is not letters, digits, '_', '.', '-' (starting with a letter or digit)`)
  if (typeof opts.address !== 'string' || !isAbsolute(opts.address)) problems.push(`address ${JSON.stringify(opts.address)} is not an absolute socket path`)
  else if (Buffer.byteLength(opts.address) > MAX_SOCKET_PATH) problems.push(`address ${opts.address} is longer than a unix socket path may be (${MAX_SOCKET_PATH} bytes)`)
  if (problems.length > 0) throw new ContainerdConfigError('RAFSPEER_ERR_CONTAINERD_CONFIG_OPTIONS', problems.join('; '))
  return { name, address: opts.address, cri: opts.criSnapshotter ?? true }
}

const tomlKey = (key: string): string => BARE_KEY.test(key) ? key : JSON.stringify(key)

/** The config version 2 fragment that declares the snapshotter (and, by default, makes it CRI's). */
export function renderSnapshotterConfig (opts: SnapshotterConfigOptions): string {
  const { name, address, cri } = checkOptions(opts)
  const q = JSON.stringify
  return [
    '# the rafspeer snapshotter (rafspeer snapshotter configure-containerd); restart containerd after a change',
    'version = 2',
    '',
    `[proxy_plugins.${tomlKey(name)}]`,
    '  type = "snapshot"',
    `  address = ${q(address)}`,
    '',
    ...(cri
      ? [
          `[plugins.${q(CRI_PLUGIN_ID)}.containerd]`,
          `  snapshotter = ${q(name)}`,
          // CRI passes the image reference and layer digests to the snapshotter only with this off
          '  disable_snapshot_annotations = false',
          ''
        ]
      : [])
  ].join('\n')
}

const isTable = (v: unknown): v is TomlTable =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date)

/** The table at `path` under `doc`, created when absent; throws when something else sits there. */
function tableAt (file: string, doc: TomlTable, path: string[]): TomlTable {
  let t = doc
  for (const [i, key] of path.entries()) {
    const v = t[key]
    if (v === undefined) t[key] = {}
    else if (!isTable(v)) {
      throw new ContainerdConfigError('RAFSPEER_ERR_CONTAINERD_CONFIG_INVALID',
        `${file}: ${path.slice(0, i + 1).map(tomlKey).join('.')} is a ${Array.isArray(v) ? 'list' : typeof v}, where containerd wants a table`)
    }
    t = t[key] as TomlTable
  }
  return t
}

/** The table at `path` when there is one. */
function findTable (doc: TomlTable, path: string[]): TomlTable | undefined {
  let t: unknown = doc
  for (const key of path) {
    if (!isTable(t)) return undefined
    t = t[key]
  }
  return isTable(t) ? t : undefined
}

/** Deletes the tables along `path` that are left empty, deepest first. */
function prune (doc: TomlTable, path: string[]): void {
  for (let n = path.length; n > 0; n--) {
    const parent = findTable(doc, path.slice(0, n - 1))
    const t = parent?.[path[n - 1]!]
    if (parent === undefined || !isTable(t) || Object.keys(t).length > 0) return
    delete parent[path[n - 1]!]
  }
}

interface Loaded {
  /** the path read and written: a symlink's target */
  path: string
  text: string
  mode: number
}

async function load (file: string): Promise<Loaded | undefined> {
  let path = file
  try {
    path = await realpath(file)
    const [text, st] = await Promise.all([readFile(path, 'utf8'), stat(path)])
    return { path, text, mode: st.mode & 0o7777 }
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return undefined
    throw new ContainerdConfigError('RAFSPEER_ERR_CONTAINERD_CONFIG_WRITE', `cannot read ${path}: ${(err as Error).message}`, { cause: err })
  }
}

/** The file parsed, refused unless it is config version 2 (an empty file counts as none). */
function parseConfig (path: string, text: string): TomlTable | undefined {
  let doc: TomlTable
  try {
    // integers as bigint, so that stringify writes 1.0 back as a float and 16777216 as an integer
    doc = parse(text, { integersAsBigInt: true })
  } catch (err) {
    throw new ContainerdConfigError('RAFSPEER_ERR_CONTAINERD_CONFIG_INVALID', `${path} is not valid TOML: ${(err as Error).message}`, { cause: err })
  }
  if (Object.keys(doc).length === 0) return undefined
  const version = doc.version
  if (version === undefined) {
    throw new ContainerdConfigError('RAFSPEER_ERR_CONTAINERD_CONFIG_VERSION', `${path} has no \`version\` key, so containerd reads ` +
      'it as config version 1; rafspeer edits version 2 only. Convert it first (plugin sections become ' +
      `[plugins."${CRI_PLUGIN_ID}"] and so on; \`containerd config default\` prints a version 2 file to start from)`)
  }
  if (version !== 2n) {
    throw new ContainerdConfigError('RAFSPEER_ERR_CONTAINERD_CONFIG_VERSION', `${path} is containerd config version ` +
      `${String(version)}; rafspeer edits version 2 (containerd 1.x) only`)
  }
  return doc
}

/** Copies the file aside under a name no other backup has; returns the backup's path. */
async function backUp (path: string, now: Date): Promise<string> {
  const stamp = now.toISOString().replace(/[:.]/g, '-')
  for (let i = 0; ; i++) {
    const backup = `${path}${BACKUP_INFIX}${stamp}${i === 0 ? '' : `-${i}`}`
    try {
      await copyFile(path, backup, constants.COPYFILE_EXCL)
      return backup
    } catch (err) {
      if (errorCode(err) !== 'EEXIST' || i > 100) throw err
    }
  }
}

/** Writes beside `path` and renames over it, so containerd never reads half a file. */
async function atomicWrite (path: string, text: string, mode: number): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`
  try {
    await writeFile(tmp, text, { mode, flag: 'wx' })
    await chmod(tmp, mode) // the umask narrowed writeFile's mode
    await rename(tmp, path)
  } catch (err) {
    await rm(tmp, { force: true })
    throw err
  }
}

const writeError = (what: string, cause: unknown): ContainerdConfigError =>
  new ContainerdConfigError('RAFSPEER_ERR_CONTAINERD_CONFIG_WRITE', `${what}: ${(cause as Error).message}`, { cause })

function header (backup: string | undefined): string {
  return '# rewritten by rafspeer (snapshotter configure-containerd); restart containerd after a change\n' +
    (backup !== undefined ? `# the file as it was, with its comments: ${backup}\n` : '') + '\n'
}

/** What the operator should hear about the config our keys were merged into. */
function warningsFor (path: string, before: TomlTable, name: string, address: string, cri: boolean): string[] {
  const warnings: string[] = []
  const disabled = Array.isArray(before.disabled_plugins) ? before.disabled_plugins : []
  if (cri && disabled.some(p => p === CRI_PLUGIN_ID || p === 'cri')) {
    warnings.push(`${path} disables the CRI plugin (disabled_plugins): CRI pulls (rafspeer rpull, kubelet) need it; remove it from that list`)
  }
  const old = findTable(before, ['proxy_plugins', name])
  if (old !== undefined && old.address !== undefined && old.address !== address) {
    warnings.push(`proxy_plugins.${name} pointed at ${String(old.address)}; it now points at ${address}`)
  }
  const oldCri = findTable(before, ['plugins', CRI_PLUGIN_ID, 'containerd'])?.snapshotter
  if (cri && typeof oldCri === 'string' && oldCri !== name) {
    warnings.push(`CRI's snapshotter was ${JSON.stringify(oldCri)}: images CRI pulled into it must be pulled again to run on ${name}`)
  }
  if (Array.isArray(before.imports) && before.imports.length > 0) {
    warnings.push(`${path} imports ${before.imports.map(String).join(', ')}: a snapshotter or proxy_plugins.${name} set there overrides this file`)
  }
  return warnings
}

/**
 * Declares the snapshotter in containerd's config `file` (and, by default, makes it CRI's): creates the file when
 * there is none, else merges our keys into it, keeping the original as `<file>.rafspeer-backup-<timestamp>`.
 */
export async function writeSnapshotterConfig (file: string, opts: SnapshotterConfigOptions & ConfigFileOptions): Promise<ConfigWriteResult> {
  const { name, address, cri } = checkOptions(opts)
  opts.signal?.throwIfAborted()
  const loaded = await load(file)
  const path = loaded?.path ?? file
  const before = loaded === undefined ? undefined : parseConfig(path, loaded.text)
  if (loaded === undefined || before === undefined) {
    // no file, or one without a single key: the fragment is the whole config
    const content = renderSnapshotterConfig({ name, address, criSnapshotter: cri })
    const result: ConfigWriteResult = { path, action: loaded === undefined ? 'created' : 'updated', content, warnings: [] }
    if (opts.dryRun === true) return result
    try {
      await mkdir(dirname(path), { recursive: true, mode: 0o755 })
      if (loaded !== undefined) result.backup = await backUp(path, (opts.now ?? (() => new Date()))())
      opts.signal?.throwIfAborted()
      await atomicWrite(path, content, loaded?.mode ?? 0o644)
    } catch (err) {
      throw writeError(`cannot write ${path}`, err)
    }
    return result
  }
  const doc = parseConfig(path, loaded.text)!
  const plugin = tableAt(path, doc, ['proxy_plugins', name])
  plugin.type = 'snapshot'
  plugin.address = address
  if (cri) {
    const containerd = tableAt(path, doc, ['plugins', CRI_PLUGIN_ID, 'containerd'])
    containerd.snapshotter = name
    containerd.disable_snapshot_annotations = false
  }
  const warnings = warningsFor(path, before, name, address, cri)
  if (isDeepStrictEqual(before, doc)) return { path, action: 'unchanged', content: loaded.text, warnings }
  const result: ConfigWriteResult = { path, action: 'updated', content: '', warnings }
  if (opts.dryRun === true) {
    result.content = header(`${path}${BACKUP_INFIX}<timestamp>`) + stringify(doc, { numbersAsFloat: true })
    return result
  }
  try {
    result.backup = await backUp(path, (opts.now ?? (() => new Date()))())
    result.content = header(result.backup) + stringify(doc, { numbersAsFloat: true })
    opts.signal?.throwIfAborted()
    await atomicWrite(path, result.content, loaded.mode)
  } catch (err) {
    throw writeError(`cannot write ${path}`, err)
  }
  return result
}

/**
 * Undoes {@link writeSnapshotterConfig}: removes `proxy_plugins.<name>` and, when CRI's snapshotter is ours, CRI's
 * `snapshotter` (containerd's default, overlayfs, applies again) and `disable_snapshot_annotations` (back to
 * containerd's default). A file left with nothing but `version` is removed. The file as it was is kept aside.
 */
export async function unwriteSnapshotterConfig (file: string, opts: Omit<SnapshotterConfigOptions, 'address'> & ConfigFileOptions = {}): Promise<ConfigUnwriteResult> {
  const name = opts.name ?? DEFAULT_SNAPSHOTTER_NAME
  if (!NAME.test(name)) throw new ContainerdConfigError('RAFSPEER_ERR_CONTAINERD_CONFIG_OPTIONS', `name ${JSON.stringify(name)} is not a snapshotter name`)
  opts.signal?.throwIfAborted()
  const loaded = await load(file)
  if (loaded === undefined) return { path: file, action: 'absent', content: '' }
  const { path } = loaded
  const doc = parseConfig(path, loaded.text)
  if (doc === undefined) return { path, action: 'unchanged', content: loaded.text }
  const before = parseConfig(path, loaded.text)
  const plugins = findTable(doc, ['proxy_plugins'])
  if (plugins !== undefined) delete plugins[name]
  prune(doc, ['proxy_plugins'])
  const criPath = ['plugins', CRI_PLUGIN_ID, 'containerd']
  const containerd = findTable(doc, criPath)
  if ((opts.criSnapshotter ?? true) && containerd !== undefined && containerd.snapshotter === name) {
    delete containerd.snapshotter
    delete containerd.disable_snapshot_annotations
    prune(doc, criPath)
  }
  if (isDeepStrictEqual(before, doc)) return { path, action: 'unchanged', content: loaded.text }
  const onlyVersion = Object.keys(doc).every(k => k === 'version')
  if (opts.dryRun === true) {
    return { path, action: onlyVersion ? 'removed' : 'updated', content: onlyVersion ? '' : stringify(doc, { numbersAsFloat: true }) }
  }
  try {
    // a file that held nothing but our fragment goes without a copy: there is nothing of anyone else's to keep
    if (onlyVersion) {
      await rm(path)
      return { path, action: 'removed', content: '' }
    }
    const backup = await backUp(path, (opts.now ?? (() => new Date()))())
    const content = header(backup) + stringify(doc, { numbersAsFloat: true })
    opts.signal?.throwIfAborted()
    await atomicWrite(path, content, loaded.mode)
    return { path, action: 'updated', backup, content }
  } catch (err) {
    throw writeError(`cannot write ${path}`, err)
  }
}
