/**
 * FUSE mounts over fuse-native (libfuse 2.9's high-level API on a multi-threaded loop): the kernel's requests are
 * served by `rafsFuseOps` on this process's event loop, so a read waiting for the network never holds up the
 * others. The mount is read-only with long kernel caches (the image is immutable) and, by default, without OPEN
 * requests (FUSE "no_open"), so opening a file costs no round trip. The -o string is ours, not fuse-native's, and
 * so is unmounting: a lazy umount2(2) through the native addon (`fusermount -uz` without a shell when it is not
 * built), a mount someone else already removed counts as unmounted, and the dead mount of a killed daemon is
 * cleared before mounting over it.
 *
 * fuse-native's threads run with every signal blocked (the native addon's `withSignalsBlocked` around the call
 * that starts them): libfuse 2 blocks only SIGTERM/INT/HUP/QUIT in its workers and pthread_cancels them when the
 * session ends, so a SIGCHLD landing on a worker as the session ended used to kill it inside libuv's signal handler
 * with libuv's signal lock held, and the daemon's event loop hung for good at its next spawn or signal (seen in
 * CI: an unmount that never returned, SIGTERM ignored).
 *
 * Everything that touches the mount from this process must be asynchronous (fs.promises, child processes): a
 * synchronous call, or spawning a child with its cwd inside the mount, blocks the loop that would answer it.
 *
 * @example
 * ```ts
 * const backend = new FuseNativeBackend({ logger })
 * const m = await backend.mount('/mnt/app', { reader, read: async (nid, off, len, buf) => await readInto(nid, off, len, buf) })
 * await m.unmount()
 * ```
 */
import { execFile } from 'node:child_process'
import { Stats } from 'node:fs'
import { readFile, realpath, stat } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { dirname, resolve as resolvePath } from 'node:path'
import { promisify } from 'node:util'
import type Fuse from 'fuse-native'
import { RafspeerError, type ComponentLogger, type Logger } from '../../base/index.js'
import { Errno, rafsFuseOps, type RafsFuseOps } from './fuse-fs.js'
import { loadNative } from './native.js'
import type { FuseBackend, FuseMountHandle, FuseMountOptions, ImageFiles } from './types.js'

const run = promisify(execFile)

export class FuseMountError extends RafspeerError<'RAFSPEER_ERR_MOUNT'> {
  constructor (message: string, options?: { cause?: unknown }) { super('RAFSPEER_ERR_MOUNT', message, options) }
}

export const DEFAULT_CACHE_TIMEOUT_S = 86_400
export const DEFAULT_OP_TIMEOUT_MS = 60_000
/** the kernel's largest FUSE read without max_pages, which libfuse 2 cannot negotiate */
const MAX_READ = 131_072
/** the kernel sends INIT as soon as the mount exists; waiting longer means it never will */
const MOUNT_READY_TIMEOUT_MS = 30_000
const SUBTYPE = 'rafs'
/** what /proc/mounts shows for our mounts */
const FS_TYPE = `fuse.${SUBTYPE}`

export interface FuseNativeBackendComponents {
  logger?: ComponentLogger
}

/**
 * Who answers the kernel's OPEN of a file (directories are always opened by libfuse):
 * - `none` (default): the first OPEN is answered ENOSYS, and from then on the kernel opens files by itself (FUSE
 *   "no_open": no OPEN or RELEASE requests at all, page cache kept across opens). The mount is `ro`, so the kernel
 *   refuses write opens with EROFS before any request.
 * - `libfuse`: libfuse answers every OPEN in C (a round trip to this process, none to JS).
 * - `js`: `RafsFuseOps.open` answers (EROFS for write access, fd = nid + 1): a JS round trip per open.
 */
export type FuseOpenMode = 'none' | 'libfuse' | 'js'

export interface FuseNativeBackendInit {
  opens?: FuseOpenMode
}

/** The OPEN answer that turns OPEN off for the rest of the mount (libfuse passes it through to the kernel). */
const ENOSYS = -38

const escapeOption = (v: string): string => v.replace(/[\\,]/g, c => '\\' + c)

function checkSeconds (name: string, v: number): number {
  if (!Number.isFinite(v) || v < 0) throw new FuseMountError(`FUSE option ${name} must be a number of seconds >= 0, got ${v}`)
  return v
}

/** The -o options of a mount, in order; throws FuseMountError on an invalid value. */
export function fuseOptionList (opts: FuseMountOptions = {}): string[] {
  const entry = checkSeconds('entryTimeoutS', opts.entryTimeoutS ?? DEFAULT_CACHE_TIMEOUT_S)
  const attr = checkSeconds('attrTimeoutS', opts.attrTimeoutS ?? DEFAULT_CACHE_TIMEOUT_S)
  const fsName = opts.fsName ?? 'rafspeer'
  if (fsName === '' || /[\s\0]/.test(fsName)) throw new FuseMountError(`FUSE fsName ${JSON.stringify(fsName)} must be non-empty, without spaces`)
  const list = ['ro', 'default_permissions']
  if (opts.allowOther ?? true) list.push('allow_other')
  list.push('use_ino')
  if (opts.kernelCache ?? true) list.push('kernel_cache')
  list.push(`entry_timeout=${entry}`, `attr_timeout=${attr}`, `negative_timeout=${entry}`, `max_read=${MAX_READ}`)
  list.push(`fsname=${escapeOption(fsName)}`, `subtype=${SUBTYPE}`)
  if (opts.debug === true) list.push('debug')
  return list
}

const unescapeMountinfo = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))

/** The file systems mounted at `path` (bottom first), from /proc/self/mountinfo. */
export async function mountsAt (path: string): Promise<Array<{ fsType: string, source: string }>> {
  const out: Array<{ fsType: string, source: string }> = []
  for (const line of (await readFile('/proc/self/mountinfo', 'utf8')).split('\n')) {
    const fields = line.split(' ')
    const sep = fields.indexOf('-', 6)
    if (sep < 0 || unescapeMountinfo(fields[4]!) !== path) continue
    out.push({ fsType: fields[sep + 1] ?? '', source: unescapeMountinfo(fields[sep + 2] ?? '') })
  }
  return out
}

const isFuseMountedAt = async (path: string): Promise<boolean> =>
  (await mountsAt(path)).some(m => m.fsType === 'fuse' || m.fsType.startsWith('fuse.'))

const stderrOf = (err: unknown): string => ((err as { stderr?: string }).stderr ?? (err as Error).message).trim()

/** Lazily unmounts the FUSE mount at `path`; one already gone is fine. */
async function detach (path: string): Promise<void> {
  if (!await isFuseMountedAt(path)) return
  let why: string
  const native = loadNative()
  try {
    // no child process when the addon can do it: nothing to reap while the session ends
    if (native !== undefined) native.umount(path, native.MNT_DETACH)
    else await run('fusermount', ['-uz', path])
    return
  } catch (err) {
    why = native !== undefined ? (err as Error).message : stderrOf(err)
  }
  if (!await isFuseMountedAt(path)) return
  await run('umount', ['-l', path]).catch(() => {})
  if (await isFuseMountedAt(path)) throw new FuseMountError(`cannot unmount ${path}: ${why}`)
}

interface FuseBinding {
  fuse_native_mount: (...args: unknown[]) => void
  fuse_native_unmount: (mnt: string, thread: Buffer | null) => void
  /** set once `fuse_native_mount` is wrapped */
  rafspeerSignalsBlocked?: boolean
}

/** fuse-native's own native module (the loaded instance, from the require cache). */
function fuseBinding (): FuseBinding {
  const entry = createRequire(import.meta.url).resolve('fuse-native')
  return createRequire(entry)('node-gyp-build')(dirname(entry)) as FuseBinding
}

/**
 * fuse-native with our -o string, exact xattr sizes (ERANGE, size queries) and our unmount. Defined over the
 * binding once it is loaded, with the first FUSE mount: a daemon whose mounts are all kernel or erofs-lazy never
 * loads libfuse.
 */
const rafsFuseClass = (Base: typeof Fuse) => class RafsFuse extends Base {
  private readonly options: string

  constructor (mnt: string, ops: Fuse.Operations, optionList: string[], opTimeoutMs: number) {
    super(mnt, ops, { timeout: opTimeoutMs })
    this.options = '-o' + optionList.join(',')
  }

  protected override _fuseOptions (): string {
    return this.options
  }

  protected override _op_getxattr (signal: Fuse.Signal, path: string, name: string, valueBuf: Buffer, position: number): void {
    this.ops.getxattr!(path, name, position, (err, value) => {
      if (err !== 0 || value === undefined) return signal(err !== 0 ? err : Errno.ENODATA, valueBuf.buffer)
      if (valueBuf.length === 0) return signal(value.length, valueBuf.buffer)
      if (value.length > valueBuf.length) return signal(Errno.ERANGE, valueBuf.buffer)
      value.copy(valueBuf)
      signal(value.length, valueBuf.buffer)
    })
  }

  protected override _op_listxattr (signal: Fuse.Signal, path: string, listBuf: Buffer): void {
    this.ops.listxattr!(path, (err, names) => {
      if (err !== 0 || names === undefined) return signal(err, listBuf.buffer)
      let size = 0
      for (const n of names) size += Buffer.byteLength(n) + 1
      if (listBuf.length === 0) return signal(size, listBuf.buffer)
      if (size > listBuf.length) return signal(Errno.ERANGE, listBuf.buffer)
      let at = 0
      for (const n of names) {
        at += listBuf.write(n, at)
        listBuf[at++] = 0
      }
      signal(at, listBuf.buffer)
    })
  }

  protected override _close (cb: (err: Error | null) => void): void {
    detach(this.mnt).then(() => {
      this.release()
      cb(null)
    }, cb)
  }

  /** Lets the event loop go: the mount's wake-up handle no longer holds the process. */
  release (): void {
    try {
      fuseBinding().fuse_native_unmount(this.mnt, this._thread)
    } catch {}
  }
}
type RafsFuse = InstanceType<ReturnType<typeof rafsFuseClass>>
let rafsFuse: Promise<ReturnType<typeof rafsFuseClass>> | undefined
const loadRafsFuse = async (): Promise<ReturnType<typeof rafsFuseClass>> => await (rafsFuse ??= import('fuse-native').then(m => {
  blockSignalsOnFuseThreads()
  return rafsFuseClass(m.default)
}))

/**
 * Wraps fuse-native's mount call (once) so that the FUSE thread it starts, and every libfuse worker that thread
 * starts, inherit a mask blocking every signal (see the file comment). Without the native addon nothing is
 * wrapped: the unmount then spawns `fusermount`, and the rare race stays.
 */
export function blockSignalsOnFuseThreads (): boolean {
  const native = loadNative()
  if (native === undefined) return false
  const binding = fuseBinding()
  if (binding.rafspeerSignalsBlocked === true) return true
  const mount = binding.fuse_native_mount
  binding.fuse_native_mount = (...args: unknown[]) => { native.withSignalsBlocked(() => { mount(...args) }) }
  binding.rafspeerSignalsBlocked = true
  return true
}

export class FuseNativeBackend implements FuseBackend {
  readonly name = 'fuse-native'
  private readonly logger: ComponentLogger | undefined
  private readonly log: Logger | undefined
  private readonly opens: FuseOpenMode

  constructor (components: FuseNativeBackendComponents = {}, init: FuseNativeBackendInit = {}) {
    this.logger = components.logger
    this.log = components.logger?.forComponent('rafspeer:fuse')
    this.opens = init.opens ?? 'none'
  }

  async mount (mountpoint: string, files: ImageFiles, opts: FuseMountOptions = {}): Promise<FuseMountHandle> {
    const optionList = fuseOptionList(opts)
    const opTimeoutMs = opts.opTimeoutMs ?? DEFAULT_OP_TIMEOUT_MS
    if (!Number.isInteger(opTimeoutMs) || opTimeoutMs < 10) throw new FuseMountError(`FUSE opTimeoutMs must be an integer >= 10, got ${opTimeoutMs}`)
    const mnt = await checkMountpoint(mountpoint, this.log)
    // the session's signal: reads still waiting when the mount goes away stop at once
    const session = new AbortController()
    const ops = rafsFuseOps(files, { ...(this.logger !== undefined ? { logger: this.logger } : {}), signal: session.signal })
    const RafsFuse = await loadRafsFuse()
    const fuse = new RafsFuse(mnt, this.kernelOps(ops, opts), optionList, opTimeoutMs)
    await mountReady(fuse, mnt)

    let unmounting: Promise<void> | undefined
    const unmount = async (): Promise<void> => {
      session.abort()
      await new Promise<void>((resolve, reject) => {
        fuse.unmount(err => {
          if (err === null) resolve()
          else reject(err instanceof FuseMountError ? err : new FuseMountError(`unmounting ${mnt}: ${err.message}`, { cause: err }))
        })
      })
    }
    return {
      mountpoint: mnt,
      unmount: async () => {
        unmounting ??= unmount().catch(err => {
          unmounting = undefined
          throw err
        })
        await unmounting
      }
    }
  }

  private kernelOps (ops: RafsFuseOps, opts: FuseMountOptions): Fuse.Operations {
    const { open, ...rest } = ops
    if (this.opens === 'js') return ops
    // without OPEN the kernel always keeps the page cache: only libfuse's OPEN can honour kernelCache: false
    if (this.opens === 'libfuse' || opts.kernelCache === false) return rest
    return { ...rest, open: (_path, _flags, cb) => { cb(ENOSYS) } }
  }
}

async function checkMountpoint (mountpoint: string, log: Logger | undefined): Promise<string> {
  const statOrError = async (): Promise<Stats | NodeJS.ErrnoException> => await stat(mountpoint).catch((err: NodeJS.ErrnoException) => err)
  let st = await statOrError()
  if (!(st instanceof Stats) && st.code === 'ENOTCONN') {
    // a rafspeer that died left its mount behind: nothing serves it, so it is cleared rather than refused
    const abs = resolvePath(mountpoint)
    const top = (await mountsAt(abs)).at(-1)
    if (top?.fsType === FS_TYPE) {
      log?.warn('clearing the dead FUSE mount at %s (%s) left by an earlier process', abs, top.source)
      await detach(abs)
      st = await statOrError()
    }
  }
  if (!(st instanceof Stats)) {
    const why = st.code === 'ENOENT' ? 'does not exist' : `cannot be used (${st.code ?? st.message})`
    throw new FuseMountError(`mountpoint ${mountpoint} ${why}`, { cause: st })
  }
  if (!st.isDirectory()) throw new FuseMountError(`mountpoint ${mountpoint} is not a directory`)
  const real = await realpath(mountpoint)
  const top = (await mountsAt(real)).at(-1)
  if (top !== undefined) throw new FuseMountError(`mountpoint ${mountpoint} is already a mount point (${top.fsType} from ${top.source})`)
  return real
}

async function mountReady (fuse: RafsFuse, mnt: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  try {
    await new Promise<void>((resolve, reject) => {
      timer = setTimeout(() => {
        reject(new FuseMountError(`FUSE mount at ${mnt}: the kernel did not start the session within ${MOUNT_READY_TIMEOUT_MS} ms`))
        detach(mnt).catch(() => {}).finally(() => { fuse.release() })
      }, MOUNT_READY_TIMEOUT_MS)
      fuse.mount(err => {
        if (err === null) resolve()
        else reject(new FuseMountError(`FUSE mount at ${mnt} failed: ${err.message}`, { cause: err }))
      })
    })
  } finally {
    clearTimeout(timer)
  }
}
