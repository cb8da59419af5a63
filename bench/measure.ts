/**
 * Measurement helpers for the read and start-up benchmarks. Everything that may touch a FUSE mount runs as an
 * asynchronous child process: a FUSE server of ours may be on this very event loop, and a synchronous call
 * into its mount (execFileSync, readFileSync, spawnSync) would wait on itself forever.
 */
import { execFile } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { promisify } from 'node:util'

const execFileP = promisify(execFile)

/** `bash -c script`, asynchronously; resolves stdout. */
export async function sh (script: string, opts: { timeoutMs?: number } = {}): Promise<string> {
  const { stdout } = await execFileP('bash', ['-c', script], { maxBuffer: 256 << 20, timeout: opts.timeoutMs ?? 1_800_000 })
  return stdout
}

export async function run (cmd: string, args: string[], opts: { timeoutMs?: number } = {}): Promise<string> {
  const { stdout } = await execFileP(cmd, args, { maxBuffer: 256 << 20, timeout: opts.timeoutMs ?? 1_800_000 })
  return stdout
}

/** Page cache, dentries and inodes out (needs root); what a rafspeer cache holds stays on disk. */
export async function dropCaches (): Promise<void> {
  await sh('sync; echo 3 > /proc/sys/vm/drop_caches')
}

/** Shell quoting for paths we made ourselves. */
export const q = (s: string): string => `'${s.replace(/'/g, "'\\''")}'`

export function median (xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

export interface FioResult {
  /** bytes per second, bytes and IOs of the read side, all jobs together */
  bwBytes: number
  iops: number
  ioBytes: number
  runtimeMs: number
}

/** One fio job (psync, read-only) over `files`; `extra` adds or overrides options. */
export async function fio (files: string[], extra: string[]): Promise<FioResult> {
  const args = [
    '--name=bench', '--readonly', '--ioengine=psync', '--invalidate=0', '--group_reporting', '--output-format=json',
    `--filename=${files.map(f => f.replace(/:/g, '\\:')).join(':')}`, ...extra
  ]
  const out = await run('fio', args)
  const json = JSON.parse(out.slice(out.indexOf('{'))) as { jobs: Array<{ read: { bw_bytes: number, iops: number, io_bytes: number, runtime: number } }> }
  const r = json.jobs[0]!.read
  return { bwBytes: r.bw_bytes, iops: r.iops, ioBytes: r.io_bytes, runtimeMs: r.runtime }
}

/** Wall time of `tar -cf - . | cat >/dev/null` in `dir` (`tar -cf /dev/null` would not read file data). */
export async function tarSeconds (dir: string): Promise<number> {
  const t = performance.now()
  await sh(`set -o pipefail; cd ${q(dir)} && tar -cf - . | cat > /dev/null`)
  return (performance.now() - t) / 1000
}

/** Mountpoints under `prefix`, deepest first. */
export async function mountsUnder (prefix: string): Promise<string[]> {
  const text = await readFile('/proc/mounts', 'utf8')
  return text.split('\n')
    .map(l => l.split(' ')[1]?.replace(/\\040/g, ' ') ?? '')
    .filter(mp => mp === prefix || mp.startsWith(prefix + '/'))
    .sort((a, b) => b.length - a.length)
}

/** Last resort for a finally block: lazily detach whatever is still mounted under `prefix`. */
export async function forceUnmountUnder (prefix: string): Promise<string[]> {
  const left = await mountsUnder(prefix)
  for (const mp of left) await run('umount', ['-l', mp]).catch(() => {})
  return left
}

export async function waitFor (cond: () => Promise<boolean>, timeoutMs: number, everyMs = 50): Promise<boolean> {
  const end = Date.now() + timeoutMs
  while (Date.now() < end) {
    if (await cond()) return true
    await new Promise(resolve => setTimeout(resolve, everyMs))
  }
  return await cond()
}

/** Machine notes for the results: CPUs, memory, kernel, root disk. */
export async function machineNotes (): Promise<string> {
  const out = await sh('echo "$(nproc) CPUs ($(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | xargs)), ' +
    '$(free -g | awk "/Mem:/{print \\$2}") GiB RAM, Linux $(uname -r), Node $(node --version), fio $(fio --version | tr -d fio-)"')
  return out.trim()
}
