/**
 * Kernel mode: mount a RAFS v6 image with the kernel's own EROFS driver, bootstrap plus the uncompressed blob
 * views as extra devices, so no userspace sits in the read path.
 *
 * Where the kernel can (Linux ≥ 6.12, `CONFIG_EROFS_FS_BACKED_BY_FILE`) the mount is file-backed: `mount(2)` of the
 * bootstrap file itself with `device=<file>` for every blob, through the native addon, since util-linux `mount`
 * insists on a loop device for a regular file. The kernel then reads the files through their page cache with no
 * block layer between (bench/RESULTS.md: a tar of the Linux source 2.46x native file-backed, 0.71x over loop
 * devices). Elsewhere, or without the addon, every file gets a read-only loop device. Right after a successful
 * mount the loop devices are "detached": the kernel cannot detach a device in use, so it marks it autoclear
 * instead and frees it by itself at unmount. A daemon that dies therefore never leaks loop devices; `umount` is all
 * it takes.
 *
 * The blob devices read their cache files with direct I/O (`losetup --direct-io=on`). A buffered loop device
 * caches every block twice, once in the page cache of the backing file and once in the page cache of the mounted
 * file system, and reads its file one request at a time; with O_DIRECT it reads the disk straight into the EROFS
 * page cache, asynchronously (bench/RESULTS.md, warm reads: sequential 0.33x → 0.90x of native, 4 KiB random
 * 0.55x → 0.87x). The bootstrap device stays buffered by default: its metadata reads are small and scattered, and
 * the backing file's readahead serves the neighbouring inodes and directories. A file system that cannot do
 * O_DIRECT (ramfs, some FUSE and network file systems; tmpfs before Linux 6.6) gets a buffered device instead,
 * with the reason in the debug log: direct I/O is never a reason for a mount to fail.
 *
 * A file-backed mount reads its blob files through their page cache by default: each block is cached twice (the
 * file's page cache and EROFS's), but the file's readahead brings in the next small files of the blob with the one
 * read, which is where a tar of a source tree gets 2.6x native. `directRead` mounts with EROFS's `directio` option
 * (Linux 6.14+) instead: EROFS reads the disk straight into its own page cache, which gives large files native
 * sequential speed (1 MiB reads: 0.55x buffered, 1.0–1.1x direct, bench/RESULTS.md) and small files no readahead
 * beyond their own (tar 1.0x). `largeFileShare` (rafs) is how the mount manager chooses per image. A kernel that
 * does not know the option gets the buffered mount, said in the debug log.
 *
 * @example
 * ```ts
 * const m = await kernelMount('/var/lib/rafspeer/bootstraps/abc.boot', [cache.blobPath(blobId)], '/mnt/app')
 * // m.devices: [{ file: '…abc.boot', device: '/dev/loop3', directIo: false }, { file: '…blob.data', device: '/dev/loop4', directIo: true }]
 * await m.unmount()
 * ```
 */
import { execFile } from 'node:child_process'
import { open, readFile, stat } from 'node:fs/promises'
import { release } from 'node:os'
import { basename, isAbsolute } from 'node:path'
import { promisify } from 'node:util'
import { RafspeerError, type ComponentLogger, type Logger } from '../../base/index.js'
import { SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, decodeSuperBlock } from '../../rafs/index.js'
import { mountsAt } from './fuse-backend.js'
import { loadNative, nativeUnavailable } from './native.js'

const run = promisify(execFile)

export class KernelMountError extends RafspeerError<'RAFSPEER_ERR_KERNEL_MOUNT'> {
  constructor (message: string, options?: { cause?: unknown }) { super('RAFSPEER_ERR_KERNEL_MOUNT', message, options) }
}

export interface KernelMountOptions {
  /**
   * `auto` (default): file-backed where the kernel and the native addon allow, loop devices otherwise; `file`:
   * file-backed or fail; `loop`: loop devices
   */
  backing?: 'auto' | 'file' | 'loop'
  /** the blob devices read their files with O_DIRECT where the file system allows it (default true) */
  directIo?: boolean
  /** the bootstrap device too (default false: see the file comment) */
  bootstrapDirectIo?: boolean
  /** file-backed: EROFS reads the blob files with direct I/O (its `directio` option; default false, see the file comment) */
  directRead?: boolean
  /** its debug log says why a device ended up buffered although direct I/O was asked for */
  logger?: ComponentLogger
}

/** A loop device under a mount: names stay valid while mounted (detached devices are freed at unmount). */
export interface KernelDevice {
  file: string
  /** `/dev/loopN` */
  device: string
  directIo: boolean
}

export interface KernelMount {
  mountpoint: string
  /** how the kernel reads the files: straight (`file`) or through loop devices */
  backing: 'file' | 'loop'
  /** loop backing: the bootstrap's device first, then the blobs' in blob-table order (file backing: none) */
  devices: KernelDevice[]
  /** file backing: EROFS reads the blob files with direct I/O (`directRead` asked and the kernel took it) */
  directRead: boolean
  /** unmounts (lazily with `{ lazy: true }` when files are still open); the loop devices go with it */
  unmount: (opts?: { lazy?: boolean }) => Promise<void>
}

async function extraDevices (bootstrap: string): Promise<number> {
  const fh = await open(bootstrap, 'r')
  try {
    const b = Buffer.alloc(SUPERBLOCK_SIZE)
    await fh.read(b, 0, SUPERBLOCK_SIZE, SUPERBLOCK_OFFSET)
    return decodeSuperBlock(b).extraDevices
  } finally {
    await fh.close()
  }
}

const stderrOf = (err: unknown): string => ((err as { stderr?: string }).stderr ?? (err as Error).message).trim()

/** Whether the kernel runs `/dev/loopN` with direct I/O (it may keep a device buffered without failing the setup). */
async function directIoOn (device: string): Promise<boolean> {
  return (await readFile(`/sys/block/${basename(device)}/loop/dio`, 'utf8').catch(() => '0')).trim() === '1'
}

async function attach (file: string, directIo: boolean, log: Logger | undefined): Promise<KernelDevice> {
  if (directIo) {
    try {
      const device = (await run('losetup', ['-f', '--show', '-r', '--direct-io=on', file])).stdout.trim()
      const on = await directIoOn(device)
      // older kernels do this when the loop's 512-byte sectors are smaller than the backing disk's (4Kn disks);
      // newer ones pick the sector size for direct I/O themselves (Linux 6.18 needed no --sector-size)
      if (!on) log?.debug('%s on %s: the kernel kept the device buffered', file, device)
      return { file, device, directIo: on }
    } catch (err) {
      // EINVAL from LOOP_CONFIGURE: the file system cannot open the file with O_DIRECT
      log?.debug('%s: no direct I/O (%s); attaching it buffered', file, stderrOf(err))
      // a losetup without LOOP_CONFIGURE attaches first and switches after: a device it printed is ours to free
      const printed = String((err as { stdout?: string }).stdout ?? '').trim()
      if (printed.startsWith('/dev/loop')) await detach(printed)
    }
  }
  try {
    return { file, device: (await run('losetup', ['-f', '--show', '-r', file])).stdout.trim(), directIo: false }
  } catch (err) {
    throw new KernelMountError(`cannot attach ${file} to a loop device: ${stderrOf(err)}`, { cause: err })
  }
}

async function detach (dev: string): Promise<void> {
  await run('losetup', ['-d', dev]).catch(() => {})
}

/**
 * Mounts `bootstrap` read-only at `mountpoint` with `devices` (the blobs' uncompressed views, in blob-table
 * order; their number must equal the bootstrap's extra_devices).
 */
export async function kernelMount (bootstrap: string, devices: string[], mountpoint: string, opts: KernelMountOptions = {}): Promise<KernelMount> {
  const expected = await extraDevices(bootstrap)
  if (expected !== devices.length) {
    throw new KernelMountError(`${bootstrap} declares ${expected} blob device(s), ${devices.length} given`)
  }
  const log = opts.logger?.forComponent('rafspeer:kernel-mount')
  const backing = opts.backing ?? 'auto'
  if (backing !== 'loop') {
    const why = await fileBackedUnavailable()
    if (why === undefined) {
      const done = fileBackedMount(bootstrap, devices, mountpoint, backing === 'file', opts.directRead ?? false, log)
      if (done !== undefined) return done
      log?.debug('%s: the kernel refused a file-backed mount; using loop devices', bootstrap)
    } else if (backing === 'file') {
      throw new KernelMountError(`file-backed EROFS mount of ${bootstrap}: ${why}`)
    }
  }
  const loops: KernelDevice[] = []
  try {
    loops.push(await attach(bootstrap, opts.bootstrapDirectIo ?? false, log))
    for (const d of devices) loops.push(await attach(d, opts.directIo ?? true, log))
    const options = ['ro', ...loops.slice(1).map((l) => `device=${l.device}`)].join(',')
    try {
      await run('mount', ['-t', 'erofs', '-o', options, loops[0]!.device, mountpoint])
    } catch (err) {
      throw new KernelMountError(`kernel EROFS mount of ${bootstrap} at ${mountpoint} failed: ${stderrOf(err)}`, { cause: err })
    }
  } finally {
    // mounted: this only marks the devices autoclear; not mounted: it frees them now
    for (const l of loops) await detach(l.device)
  }
  return { mountpoint, backing: 'loop', devices: loops, directRead: false, unmount: unmounter(mountpoint) }
}

function unmounter (mountpoint: string): KernelMount['unmount'] {
  return async (how = {}) => {
    try {
      await run('umount', [...(how.lazy === true ? ['-l'] : []), mountpoint])
    } catch (err) {
      throw new KernelMountError(`cannot unmount ${mountpoint}: ${stderrOf(err)}`, { cause: err })
    }
  }
}

/**
 * `mount(2)` of the bootstrap file with the blob files as devices, with `directio` when `directRead` (retried
 * without it where the kernel does not know it: EINVAL). Undefined when the kernel cannot mount EROFS from a file
 * (ENOTBLK: no file-backed support), unless `required`.
 */
function fileBackedMount (bootstrap: string, devices: string[], mountpoint: string, required: boolean, directRead: boolean,
  log: Logger | undefined): KernelMount | undefined {
  const native = loadNative()!
  const bad = devices.find(d => d.includes(',') || !isAbsolute(d))
  if (bad !== undefined) throw new KernelMountError(`blob device path ${bad} must be absolute and free of commas`)
  const options = devices.map(d => `device=${d}`)
  for (let direct = directRead; ; direct = false) {
    try {
      native.mount(bootstrap, mountpoint, 'erofs', native.MS_RDONLY, [...options, ...(direct ? ['directio'] : [])].join(','))
      return { mountpoint, backing: 'file', devices: [], directRead: direct, unmount: unmounter(mountpoint) }
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (direct && code === 'EINVAL') {
        log?.debug('%s: the kernel refused EROFS\'s directio option (Linux 6.14+); mounting with buffered reads', bootstrap)
        continue
      }
      if (!required && code === 'ENOTBLK') return undefined
      throw new KernelMountError(`kernel EROFS mount of ${bootstrap} at ${mountpoint} failed: ${(err as Error).message}`, { cause: err })
    }
  }
}

/** Why a file-backed EROFS mount cannot be tried here (no addon, or a kernel before 6.12), or undefined. */
export async function fileBackedUnavailable (): Promise<string | undefined> {
  const why = nativeUnavailable()
  if (why !== undefined) return why
  const [major = 0, minor = 0] = release().split('.').map(n => parseInt(n, 10))
  if (major < 6 || (major === 6 && minor < 12)) return `Linux ${release()} has no file-backed EROFS (6.12 and later)`
  return undefined
}

/**
 * Makes `mountpoint` free for an EROFS mount: what a rafspeer that died left there goes (lazily: a reader still in
 * it keeps what it has open) — an EROFS mount of a bootstrap under `ownBootstraps`, a FUSE mount of ours nothing
 * serves any more — and anything else mounted there is refused.
 */
export async function clearStaleMount (mountpoint: string, ownBootstraps: string, log?: Logger): Promise<void> {
  for (let i = 0; i < 8; i++) {
    const top = (await mountsAt(mountpoint)).at(-1)
    if (top === undefined) return
    const deadFuse = top.fsType.startsWith('fuse.rafspeer') &&
      await stat(mountpoint).then(() => false, (err: NodeJS.ErrnoException) => err.code === 'ENOTCONN' || err.code === 'ECONNABORTED')
    const ours = top.fsType === 'erofs' && top.source.startsWith(ownBootstraps.endsWith('/') ? ownBootstraps : ownBootstraps + '/')
    if (!deadFuse && !ours) throw new KernelMountError(`mountpoint ${mountpoint} is already a mount point (${top.fsType} from ${top.source})`)
    log?.warn('clearing the %s mount at %s left by an earlier process', top.fsType, mountpoint)
    await run('umount', ['-l', mountpoint]).catch(() => {})
  }
  throw new KernelMountError(`mountpoint ${mountpoint}: cannot clear the mounts stacked there`)
}

/** Why kernel mode cannot work on this host, or undefined when it can. */
export async function kernelModeUnavailable (): Promise<string | undefined> {
  if (process.platform !== 'linux') return 'kernel mode needs Linux'
  if (process.getuid?.() !== 0) return 'kernel mode needs root (loop devices and mount)'
  const fs = await open('/proc/filesystems', 'r').then(async (fh) => { try { return (await fh.readFile()).toString() } finally { await fh.close() } }, () => '')
  if (!/\berofs\b/.test(fs)) return 'the kernel has no EROFS driver (modprobe erofs)'
  return undefined
}
