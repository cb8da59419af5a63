/**
 * Real-kernel checks for end-to-end tests: mount a bootstrap (plus its blobs' uncompressed views as extra devices)
 * through loop devices, and run fsck.erofs over the same files.
 *
 * @example
 * if (!kernelTestsAvailable()) t.skip(kernelSkipReason())
 * await withKernelMount(boot, [view0], async (mnt) => snapshotTree(mnt))
 */
import { execFile } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { mkdtemp, open, rmdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, decodeSuperBlock } from '../../rafs/layout.js'

const run = promisify(execFile)

interface RunResult { code: number, stdout: string, stderr: string }

/** Like execFile, but a non-zero exit is a result, not an exception. */
async function runAllowFail (cmd: string, args: string[], timeoutMs = 600_000): Promise<RunResult> {
  try {
    const { stdout, stderr } = await run(cmd, args, { timeout: timeoutMs, maxBuffer: 64 << 20 })
    return { code: 0, stdout, stderr }
  } catch (err) {
    const e = err as { code?: number | string, stdout?: string, stderr?: string, message: string }
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? e.message }
  }
}

/** Why kernel tests cannot run here, or undefined when they can. */
export function kernelSkipReason (): string | undefined {
  if (process.platform !== 'linux') return 'kernel tests need Linux'
  if (process.getuid?.() !== 0) return 'kernel tests need root (loop devices and mount)'
  if (!existsSync('/dev/loop-control')) return 'kernel tests need /dev/loop-control'
  let fs = ''
  try { fs = readFileSync('/proc/filesystems', 'utf8') } catch {}
  if (!/\berofs\b/.test(fs)) return 'kernel tests need the erofs driver (modprobe erofs)'
  return undefined
}

export function kernelTestsAvailable (): boolean {
  return kernelSkipReason() === undefined
}

async function extraDevicesOf (bootstrap: string): Promise<number> {
  const fh = await open(bootstrap, 'r')
  try {
    const b = Buffer.alloc(SUPERBLOCK_SIZE)
    await fh.read(b, 0, SUPERBLOCK_SIZE, SUPERBLOCK_OFFSET)
    return decodeSuperBlock(b).extraDevices
  } finally {
    await fh.close()
  }
}

async function attachLoop (file: string): Promise<string> {
  const r = await runAllowFail('losetup', ['-f', '--show', '-r', file])
  if (r.code !== 0) throw new Error(`losetup ${file} failed: ${r.stderr.trim()}`)
  return r.stdout.trim()
}

async function erofsDmesg (): Promise<string> {
  const r = await runAllowFail('dmesg', [])
  return r.stdout.split('\n').filter(l => /erofs/i.test(l)).slice(-10).join('\n')
}

/**
 * Mounts `bootstrap` read-only with `devices` (uncompressed blob views, in device-table order) as extra devices,
 * runs `fn` on the mount point and always unmounts and detaches every loop device afterwards.
 */
export async function withKernelMount<T> (bootstrap: string, devices: string[], fn: (mountpoint: string) => Promise<T>): Promise<T> {
  const expected = await extraDevicesOf(bootstrap)
  if (expected !== devices.length) {
    throw new Error(`${bootstrap} declares ${expected} extra devices but ${devices.length} were given`)
  }
  const loops: string[] = []
  let mnt: string | undefined
  let mounted = false
  try {
    const primary = await attachLoop(bootstrap)
    loops.push(primary)
    const extra: string[] = []
    for (const d of devices) {
      const l = await attachLoop(d)
      loops.push(l)
      extra.push(l)
    }
    mnt = await mkdtemp(join(tmpdir(), 'rafs-mnt-'))
    const opts = ['ro', ...extra.map(l => `device=${l}`)].join(',')
    const r = await runAllowFail('mount', ['-t', 'erofs', '-o', opts, primary, mnt])
    if (r.code !== 0) {
      throw new Error(`mount -t erofs -o ${opts} ${primary} (${bootstrap}) failed: ${r.stderr.trim()}\n` +
        `dmesg:\n${await erofsDmesg()}`)
    }
    mounted = true
    return await fn(mnt)
  } finally {
    const problems: string[] = []
    if (mounted && mnt !== undefined) {
      let r = await runAllowFail('umount', [mnt])
      // a reader that just closed its files can leave the mount briefly busy
      for (let i = 0; i < 20 && r.code !== 0; i++) {
        await new Promise(resolve => setTimeout(resolve, 100))
        r = await runAllowFail('umount', [mnt])
      }
      if (r.code !== 0) {
        r = await runAllowFail('umount', ['-l', mnt])
        if (r.code !== 0) problems.push(`umount ${mnt}: ${r.stderr.trim()}`)
      }
    }
    for (const l of loops.reverse()) {
      const r = await runAllowFail('losetup', ['-d', l])
      if (r.code !== 0) problems.push(`losetup -d ${l}: ${r.stderr.trim()}`)
    }
    // rmdir, not rm -r: should the unmount have silently failed, this refuses instead of walking the image
    if (mnt !== undefined && problems.length === 0) await rmdir(mnt).catch(() => {})
    if (problems.length > 0) console.error(`withKernelMount cleanup problems:\n${problems.join('\n')}`)
  }
}

/**
 * Runs `fsck.erofs --extract` (which decodes every file's data without writing it anywhere) over the bootstrap
 * with the given extra devices.
 */
export async function fsckErofs (bootstrap: string, devices: string[]): Promise<{ ok: boolean, output: string }> {
  const args = [...devices.map(d => `--device=${d}`), '--extract', bootstrap]
  const r = await runAllowFail('fsck.erofs', args)
  return { ok: r.code === 0, output: `fsck.erofs ${args.join(' ')} (exit ${r.code})\n${r.stdout}${r.stderr}` }
}
