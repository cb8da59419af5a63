/**
 * Snapshots of a file tree that two trees (a source directory and a mounted image) can be compared by.
 *
 * Paths are raw name bytes as latin1 strings, rooted at '/' (the snapshot root itself is '/'). Directory sizes are
 * recorded as 0 because every filesystem reports its own.
 *
 * @example
 * const diff = diffTrees(await snapshotTree(src), await snapshotTree(mnt))
 * assert.deepEqual(diff, [])
 */
import { createHash } from 'node:crypto'
import { lstat, open, readdir, readlink } from 'node:fs/promises'
import type { BigIntStats } from 'node:fs'
import { getAttribute, listAttributes } from '@napi-rs/xattr'

export interface TreeEntry {
  path: string
  type: string
  /** full st_mode (type and permission bits) */
  mode: number
  uid: number
  gid: number
  size: number
  mtimeSec: number
  mtimeNsec: number
  nlink: number
  rdev: number
  /** symlink target, hex of the bytes */
  target?: string
  /** name → hex of the value */
  xattrs: Record<string, string>
  sha256?: string
  /** same value for paths that are hard links of each other: the smallest path of the group */
  linkGroup?: string
}

function typeOf (st: BigIntStats): string {
  if (st.isFile()) return 'file'
  if (st.isDirectory()) return 'dir'
  if (st.isSymbolicLink()) return 'symlink'
  if (st.isCharacterDevice()) return 'chr'
  if (st.isBlockDevice()) return 'blk'
  if (st.isFIFO()) return 'fifo'
  if (st.isSocket()) return 'sock'
  return 'unknown'
}

/** Streams the file through sha256 (a sparse multi-GiB file reads as zeros, which is slow but bounded in memory). */
async function hashFile (path: Buffer): Promise<string> {
  const h = createHash('sha256')
  const fh = await open(path, 'r')
  try {
    const buf = Buffer.allocUnsafe(4 << 20)
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null)
      if (bytesRead === 0) break
      h.update(buf.subarray(0, bytesRead))
    }
  } finally {
    await fh.close()
  }
  return h.digest('hex')
}

/** Async, so a FUSE mount served by this very process can be walked without deadlocking its event loop. */
async function readXattrs (path: Buffer): Promise<Record<string, string>> {
  const p = path.toString('utf8')
  // the xattr binding takes a UTF-8 string; a path it cannot express is reported instead of silently skipped
  if (!Buffer.from(p, 'utf8').equals(path)) return { '?': 'path-not-utf8' }
  const out: Record<string, string> = {}
  for (const name of (await listAttributes(p)).sort()) {
    out[name] = ((await getAttribute(p, name)) ?? Buffer.alloc(0)).toString('hex')
  }
  return out
}

export async function snapshotTree (root: string, opts: { content?: boolean } = {}): Promise<Map<string, TreeEntry>> {
  const content = opts.content ?? true
  const out = new Map<string, TreeEntry>()
  const groups = new Map<string, string[]>()
  const stack: Array<[abs: Buffer, key: string]> = [[Buffer.from(root), '/']]
  while (stack.length > 0) {
    const [abs, key] = stack.pop()!
    const st = await lstat(abs, { bigint: true })
    const type = typeOf(st)
    const e: TreeEntry = {
      path: key,
      type,
      mode: Number(st.mode),
      uid: Number(st.uid),
      gid: Number(st.gid),
      size: type === 'dir' ? 0 : Number(st.size),
      mtimeSec: Number(st.mtimeNs / 1_000_000_000n),
      mtimeNsec: Number(st.mtimeNs % 1_000_000_000n),
      nlink: Number(st.nlink),
      rdev: type === 'chr' || type === 'blk' ? Number(st.rdev) : 0,
      xattrs: await readXattrs(abs)
    }
    if (type === 'symlink') e.target = (await readlink(abs, { encoding: 'buffer' })).toString('hex')
    if (type === 'file' && content) e.sha256 = await hashFile(abs)
    if (type !== 'dir' && st.nlink > 1n) {
      const id = `${st.dev}:${st.ino}`
      const g = groups.get(id)
      if (g === undefined) groups.set(id, [key])
      else g.push(key)
    }
    out.set(key, e)
    if (type === 'dir') {
      const names = await readdir(abs, { encoding: 'buffer' })
      for (const name of names) {
        stack.push([Buffer.concat([abs, Buffer.from('/'), name]), (key === '/' ? '' : key) + '/' + name.toString('latin1')])
      }
    }
  }
  for (const paths of groups.values()) {
    const first = paths.reduce((a, b) => (b < a ? b : a))
    for (const p of paths) out.get(p)!.linkGroup = first
  }
  return out
}

const show = (field: keyof TreeEntry, v: unknown): string => {
  if (v === undefined) return '(none)'
  if (field === 'mode' && typeof v === 'number') return '0' + v.toString(8)
  return JSON.stringify(v)
}

const FIELDS: Array<keyof TreeEntry> = [
  'type', 'mode', 'uid', 'gid', 'size', 'mtimeSec', 'mtimeNsec', 'nlink', 'rdev', 'target', 'xattrs', 'sha256', 'linkGroup'
]

/** Every difference between two snapshots, one line each; empty when they match. */
export function diffTrees (expected: Map<string, TreeEntry>, actual: Map<string, TreeEntry>, opts: { ignore?: Array<keyof TreeEntry> } = {}): string[] {
  const ignore = new Set(opts.ignore ?? [])
  const diffs: string[] = []
  const label = (p: string): string => JSON.stringify(p)
  for (const [path, want] of [...expected].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const got = actual.get(path)
    if (got === undefined) {
      diffs.push(`${label(path)}: missing (expected a ${want.type})`)
      continue
    }
    for (const f of FIELDS) {
      if (ignore.has(f)) continue
      const a = f === 'xattrs' ? JSON.stringify(Object.entries(want.xattrs).sort()) : want[f]
      const b = f === 'xattrs' ? JSON.stringify(Object.entries(got.xattrs).sort()) : got[f]
      if (a !== b) diffs.push(`${label(path)}: ${f} expected ${show(f, want[f])}, got ${show(f, got[f])}`)
    }
  }
  for (const [path, got] of actual) {
    if (!expected.has(path)) diffs.push(`${label(path)}: unexpected ${got.type}`)
  }
  return diffs
}
