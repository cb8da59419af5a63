/**
 * Positioned I/O on blob data files, and hole punching. Node cannot call fallocate(2), so holes are punched with
 * util-linux's `fallocate --punch-hole` (which keeps the file size), one process per merged extent, a few at once.
 */
import { execFile } from 'node:child_process'
import type { FileHandle } from 'node:fs/promises'
import { BLOCK_SIZE } from './blob-state.js'

/** the zero tail written after a short chunk, so a re-written chunk leaves no stale bytes before the next one */
const ZERO_BLOCK = Buffer.alloc(BLOCK_SIZE)
const PUNCH_CONCURRENCY = 4

export async function readFull (fh: FileHandle, buf: Buffer, position: number): Promise<number> {
  let done = 0
  while (done < buf.length) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, position + done)
    if (bytesRead === 0) break
    done += bytesRead
  }
  return done
}

/** Writes `data` at `position` followed by zeros up to the next 4 KiB boundary, without copying `data`. */
export async function writeChunkData (fh: FileHandle, data: Buffer, position: number): Promise<void> {
  const pad = (BLOCK_SIZE - (data.length % BLOCK_SIZE)) % BLOCK_SIZE
  const total = data.length + pad
  let { bytesWritten } = await fh.writev(pad === 0 ? [data] : [data, ZERO_BLOCK.subarray(0, pad)], position)
  // short writes happen near a full disk: finish the rest (the next write then reports ENOSPC)
  while (bytesWritten < total) {
    const src = bytesWritten < data.length ? data.subarray(bytesWritten) : ZERO_BLOCK.subarray(0, total - bytesWritten)
    const r = await fh.write(src, 0, src.length, position + bytesWritten)
    if (r.bytesWritten === 0) throw Object.assign(new Error('write made no progress'), { code: 'EIO' })
    bytesWritten += r.bytesWritten
  }
}

export type Extent = [offset: number, length: number]

/** Sorts and merges touching extents, so a run of evicted chunks costs one `fallocate` call. */
export function mergeExtents (extents: Extent[]): Extent[] {
  const sorted = [...extents].sort((a, b) => a[0] - b[0])
  const out: Extent[] = []
  for (const [off, len] of sorted) {
    const last = out[out.length - 1]
    if (last !== undefined && last[0] + last[1] >= off) last[1] = Math.max(last[1], off + len - last[0])
    else out.push([off, len])
  }
  return out
}

function run (cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, (err, _stdout, stderr) => {
      if (err !== null) reject(Object.assign(err, { message: `${cmd} ${args.join(' ')}: ${String(stderr).trim() || err.message}` }))
      else resolve()
    })
  })
}

export async function hasFallocate (): Promise<boolean> {
  return await run('fallocate', ['--version']).then(() => true, () => false)
}

export async function punchHoles (path: string, extents: Extent[]): Promise<void> {
  const queue = mergeExtents(extents)
  const worker = async (): Promise<void> => {
    for (let e = queue.shift(); e !== undefined; e = queue.shift()) {
      await run('fallocate', ['--punch-hole', '--offset', String(e[0]), '--length', String(e[1]), path])
    }
  }
  await Promise.all(Array.from({ length: Math.min(PUNCH_CONCURRENCY, queue.length) }, worker))
}
