/**
 * Kernel mode: mount a RAFS v6 image with the kernel's own EROFS driver, bootstrap plus the uncompressed blob
 * views as extra devices, so no userspace sits in the read path.
 *
 * util-linux `mount` cannot do a file-backed EROFS mount with extra devices, so every file gets a read-only loop
 * device. Right after a successful mount the loop devices are "detached": the kernel cannot detach a device in
 * use, so it marks it autoclear instead and frees it by itself at unmount. A daemon that dies therefore never
 * leaks loop devices; `umount` is all it takes.
 */
import { execFile } from 'node:child_process'
import { open } from 'node:fs/promises'
import { promisify } from 'node:util'
import { SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, decodeSuperBlock } from '../rafs/layout.js'

const run = promisify(execFile)

export class KernelMountError extends Error {
  readonly code = 'RAFSPEER_ERR_KERNEL_MOUNT'
  constructor (message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'KernelMountError'
  }
}

export interface KernelMount {
  mountpoint: string
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

async function attach (file: string): Promise<string> {
  try {
    return (await run('losetup', ['-f', '--show', '-r', file])).stdout.trim()
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
export async function kernelMount (bootstrap: string, devices: string[], mountpoint: string): Promise<KernelMount> {
  const expected = await extraDevices(bootstrap)
  if (expected !== devices.length) {
    throw new KernelMountError(`${bootstrap} declares ${expected} blob device(s), ${devices.length} given`)
  }
  const loops: string[] = []
  try {
    const main = await attach(bootstrap)
    loops.push(main)
    for (const d of devices) loops.push(await attach(d))
    const options = ['ro', ...loops.slice(1).map((l) => `device=${l}`)].join(',')
    try {
      await run('mount', ['-t', 'erofs', '-o', options, main, mountpoint])
    } catch (err) {
      throw new KernelMountError(`kernel EROFS mount of ${bootstrap} at ${mountpoint} failed: ${stderrOf(err)}`, { cause: err })
    }
  } finally {
    // mounted: this only marks the devices autoclear; not mounted: it frees them now
    for (const l of loops) await detach(l)
  }
  return {
    mountpoint,
    unmount: async (opts = {}) => {
      try {
        await run('umount', [...(opts.lazy === true ? ['-l'] : []), mountpoint])
      } catch (err) {
        throw new KernelMountError(`cannot unmount ${mountpoint}: ${stderrOf(err)}`, { cause: err })
      }
    }
  }
}

/** Why kernel mode cannot work on this host, or undefined when it can. */
export async function kernelModeUnavailable (): Promise<string | undefined> {
  if (process.platform !== 'linux') return 'kernel mode needs Linux'
  if (process.getuid?.() !== 0) return 'kernel mode needs root (loop devices and mount)'
  const fs = await open('/proc/filesystems', 'r').then(async (fh) => { try { return (await fh.readFile()).toString() } finally { await fh.close() } }, () => '')
  if (!/\berofs\b/.test(fs)) return 'the kernel has no EROFS driver (modprobe erofs)'
  return undefined
}
