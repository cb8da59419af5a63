/**
 * Image contents for the simulator and the demo: a generated tree of a chosen size shaped like a container image
 * (a few large incompressible files, many small compressible ones), and a content map (path → sha256) of any tree,
 * to check what a node read against what was published.
 */
import { randomBytes } from 'node:crypto'
import { lstat, mkdir, readdir, readlink, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { sha256File } from '../base/index.js'

/** path (relative, `/`-separated) → `file:<sha256>`, `link:<target>` or `dir` */
export type ContentMap = Map<string, string>

/** Large files carry most of the bytes, like the layers of a model or a runtime. */
const LARGE_SHARE = 0.85
const LARGE_FILE_BYTES = 8 << 20
const SMALL_FILE_MAX_BYTES = 64 << 10

/**
 * Writes about `bytes` of file data under `dir`: random (incompressible) large files and compressible small text
 * files spread over a few directories, plus a symlink. Returns the number of files.
 */
export async function generateTree (dir: string, bytes: number): Promise<{ files: number, bytes: number }> {
  let files = 0
  let written = 0
  await mkdir(join(dir, 'opt/model'), { recursive: true })
  const large = Math.floor(bytes * LARGE_SHARE)
  for (let i = 0; written < large; i++) {
    const size = Math.min(LARGE_FILE_BYTES + i * 4099, large - written)
    await writeFile(join(dir, `opt/model/shard-${String(i).padStart(3, '0')}.bin`), randomBytes(size))
    written += size
    files++
  }
  const dirs = ['usr/lib/app', 'usr/share/doc', 'etc/app', 'srv/static']
  for (const d of dirs) await mkdir(join(dir, d), { recursive: true })
  for (let i = 0; written < bytes; i++) {
    const size = Math.min(256 + (i * 7919) % SMALL_FILE_MAX_BYTES, bytes - written)
    const line = `${dirs[i % dirs.length]} file ${i}: ${randomBytes(12).toString('hex')}\n`
    const text = line.repeat(Math.ceil(size / line.length)).slice(0, size)
    await writeFile(join(dir, dirs[i % dirs.length]!, `f${i}.txt`), text)
    written += size
    files++
  }
  await writeFile(join(dir, 'etc/app/version'), 'rafspeer-sim 1\n')
  await symlink('../opt/model', join(dir, 'usr/lib/model'))
  return { files: files + 1, bytes: written + 15 }
}

/**
 * The content map of the tree at `root`, reading every file (asynchronously: the tree may be a FUSE mount served
 * by this very process). `onBytes` hears file bytes as they are read.
 */
export async function contentMap (root: string, opts: { onBytes?: (n: number) => void } = {}): Promise<ContentMap> {
  const out: ContentMap = new Map()
  const stack = ['']
  while (stack.length > 0) {
    const rel = stack.pop()!
    const abs = rel === '' ? root : join(root, rel)
    const st = await lstat(abs)
    if (st.isDirectory()) {
      if (rel !== '') out.set(rel, 'dir')
      // depth first in name order, as tar walks a tree (and as the image lays its files out in the blob)
      for (const name of (await readdir(abs)).sort().reverse()) stack.push(rel === '' ? name : `${rel}/${name}`)
    } else if (st.isSymbolicLink()) {
      out.set(rel, `link:${await readlink(abs)}`)
    } else if (st.isFile()) {
      out.set(rel, `file:${await sha256File(abs)}`)
      opts.onBytes?.(st.size)
    } else {
      out.set(rel, 'special')
    }
  }
  return out
}

/** Up to `limit` differences between two content maps, one line each. */
export function diffContent (expected: ContentMap, actual: ContentMap, limit = 10): string[] {
  const out: string[] = []
  for (const [p, v] of expected) {
    if (out.length >= limit) return out
    const a = actual.get(p)
    if (a === undefined) out.push(`${p}: missing`)
    else if (a !== v) out.push(`${p}: ${v.startsWith('file:') ? 'content differs' : `${v} vs ${a}`}`)
  }
  for (const p of actual.keys()) {
    if (out.length >= limit) return out
    if (!expected.has(p)) out.push(`${p}: unexpected`)
  }
  return out
}
