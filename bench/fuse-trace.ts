/**
 * Counts the FUSE requests a workload makes and how long the server took to answer each, from the kernel's own
 * `fuse:fuse_request_send` / `fuse:fuse_request_end` tracepoints (Linux 6.12+, tracefs). Cheap and exact: no
 * ptrace, nothing in the server's path. `undefined` when the tracepoints are not there.
 *
 * @example
 * ```ts
 * const t = await traceFuse(mountpoint, async () => { await tarSeconds(mountpoint) })
 * // t.ops.FUSE_LOOKUP.count, t.ops.FUSE_READ.meanUs
 * ```
 */
import { stat, readFile, writeFile, access } from 'node:fs/promises'
import { run } from './measure.js'

const TRACEFS = '/sys/kernel/tracing'

/** `meanUs` is over the answered ones (FORGET is never answered) */
export interface FuseOpStats { count: number, answered: number, meanUs: number, totalMs: number }

export interface FuseTrace {
  /** per opcode (`FUSE_LOOKUP`, `FUSE_READ`, ...) */
  ops: Record<string, FuseOpStats>
  requests: number
  /** sum of send→end time over every request (requests may overlap) */
  serverMs: number
  wallMs: number
  /** events the trace buffer dropped (the counts are then low) */
  lost: number
}

/** The kernel's dev_t (major << 20 | minor) of the filesystem at `path`, as the tracepoint prints it. */
async function kernelDev (path: string): Promise<number> {
  const dev = (await stat(path)).dev
  const major = (dev >>> 8) & 0xfff
  const minor = (dev & 0xff) | ((dev >>> 12) & 0xfff00)
  return major * 2 ** 20 + minor
}

const exists = async (p: string): Promise<boolean> => await access(p).then(() => true, () => false)
const put = async (file: string, value: string): Promise<void> => { await writeFile(`${TRACEFS}/${file}`, value) }

export async function traceFuse (mountpoint: string, workload: () => Promise<void>): Promise<FuseTrace | undefined> {
  let mountedTracefs = false
  if (!(await exists(`${TRACEFS}/events`))) {
    try {
      await run('mount', ['-t', 'tracefs', 'nodev', TRACEFS])
      mountedTracefs = true
    } catch {
      return undefined
    }
  }
  try {
    if (!(await exists(`${TRACEFS}/events/fuse/fuse_request_send`))) return undefined
    const connection = await kernelDev(mountpoint)
    const oldBuffer = (await readFile(`${TRACEFS}/buffer_size_kb`, 'utf8')).trim().split(' ')[0]!
    const events = ['fuse_request_send', 'fuse_request_end']
    try {
      await put('tracing_on', '0')
      await put('buffer_size_kb', '65536')
      await put('trace', '')
      for (const e of events) {
        await put(`events/fuse/${e}/filter`, `connection == ${connection}`)
        await put(`events/fuse/${e}/enable`, '1')
      }
      await put('tracing_on', '1')
      const t = performance.now()
      await workload()
      const wallMs = performance.now() - t
      await put('tracing_on', '0')
      return { ...parse(await readFile(`${TRACEFS}/trace`, 'utf8')), wallMs }
    } finally {
      for (const e of events) {
        await put(`events/fuse/${e}/enable`, '0').catch(() => {})
        await put(`events/fuse/${e}/filter`, '0').catch(() => {})
      }
      await put('trace', '').catch(() => {})
      await put('buffer_size_kb', oldBuffer).catch(() => {})
      await put('tracing_on', '1').catch(() => {})
    }
  } finally {
    if (mountedTracefs) await run('umount', [TRACEFS]).catch(() => {})
  }
}

const SEND_RE = /\s(\d+\.\d+): fuse_request_send: connection \d+ req (\d+) opcode \d+ \((\w+)\)/
const END_RE = /\s(\d+\.\d+): fuse_request_end: connection \d+ req (\d+)/
const LOST_RE = /entries-in-buffer\/entries-written: (\d+)\/(\d+)/

function parse (text: string): Omit<FuseTrace, 'wallMs'> {
  const pending = new Map<string, { op: string, t: number }>()
  const ops: Record<string, FuseOpStats> = {}
  let requests = 0
  let serverMs = 0
  let lost = 0
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) {
      const m = LOST_RE.exec(line)
      if (m !== null) lost = Number(m[2]) - Number(m[1])
      continue
    }
    let m = SEND_RE.exec(line)
    if (m !== null) {
      pending.set(m[2]!, { op: m[3]!, t: Number(m[1]) })
      requests++
      const s = ops[m[3]!] ??= { count: 0, answered: 0, meanUs: 0, totalMs: 0 }
      s.count++
      continue
    }
    m = END_RE.exec(line)
    if (m !== null) {
      const p = pending.get(m[2]!)
      if (p === undefined) continue
      pending.delete(m[2]!)
      const ms = (Number(m[1]) - p.t) * 1000
      ops[p.op]!.totalMs += ms
      ops[p.op]!.answered++
      serverMs += ms
    }
  }
  for (const s of Object.values(ops)) s.meanUs = s.answered > 0 ? s.totalMs * 1000 / s.answered : 0
  return { ops, requests, serverMs, lost }
}
