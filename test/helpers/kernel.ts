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
import { mkdtemp, rmdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { kernelMount, type KernelMount } from '../../peer/index.js'

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

async function erofsDmesg (): Promise<string> {
  const r = await runAllowFail('dmesg', [])
  return r.stdout.split('\n').filter(l => /erofs/i.test(l)).slice(-10).join('\n')
}

/**
 * Mounts `bootstrap` read-only with `devices` (uncompressed blob views, in device-table order) as extra devices,
 * runs `fn` on the mount point and always unmounts and detaches every loop device afterwards.
 */
export async function withKernelMount<T> (bootstrap: string, devices: string[], fn: (mountpoint: string) => Promise<T>): Promise<T> {
  const mnt = await mkdtemp(join(tmpdir(), 'rafs-mnt-'))
  let m: KernelMount
  try {
    m = await kernelMount(bootstrap, devices, mnt)
  } catch (err) {
    await rmdir(mnt).catch(() => {})
    throw new Error(`${(err as Error).message}\ndmesg:\n${await erofsDmesg()}`, { cause: err })
  }
  try {
    return await fn(mnt)
  } finally {
    // a reader that just closed its files can leave the mount briefly busy
    let done = false
    for (let i = 0; i < 20 && !done; i++) {
      done = await m.unmount().then(() => true, async () => { await new Promise(resolve => setTimeout(resolve, 100)); return false })
    }
    if (!done) await m.unmount({ lazy: true }).catch((err: Error) => console.error(`withKernelMount: ${err.message}`))
    // rmdir, not rm -r: should the unmount have silently failed, this refuses instead of walking the image
    await rmdir(mnt).catch(() => {})
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
