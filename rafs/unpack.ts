/**
 * `rafspeer unpack`: turn a RAFS image (bootstrap + data blobs or their uncompressed views) back into a directory
 * tree or a tar file, with files, dirs, symlinks, hard links, devices, fifos, xattrs, modes, owners and mtimes.
 * Every chunk is digest-verified on the way out; all-zero chunks become holes so sparse files stay sparse.
 */
import { execFile } from 'node:child_process'
import { createWriteStream } from 'node:fs'
import { mkdir, open, readdir, symlink, link, lchown, chmod, lutimes, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { setAttributeSync } from '@napi-rs/xattr'
import type { ChunkInfo, RafsImage, RafsInode } from './model.js'
import { nameBytes } from './model.js'
import { RafsReader } from './reader.js'
import { BlobDataReader } from './blob-reader.js'
import { TarWriter, type TarEntryType } from './tar-writer.js'
import { RafspeerError } from '../base/index.js'

const run = promisify(execFile)

export interface UnpackOptions {
  /** directory holding blobs named by their id */
  blobDir?: string
  /** directory holding uncompressed views `<blob-id>.blob.data` (used when a blob file is absent) */
  blobCacheDir?: string
  signal?: AbortSignal
}

export interface UnpackResult {
  output: string
  format: 'dir' | 'tar'
  files: number
  dirs: number
  symlinks: number
  hardlinks: number
  others: number
  bytes: number
  warnings: string[]
}

export class UnpackError extends RafspeerError.coded('RAFSPEER_ERR_UNPACK') {}

/** Reads file data of an image, chunk by chunk, from whichever blob file or view is present. */
class ChunkStore {
  private readonly readers = new Map<number, BlobDataReader>()
  private last?: { chunk: ChunkInfo, data: Buffer }

  constructor (private readonly image: RafsImage, private readonly opts: UnpackOptions) {}

  private async reader (blobIndex: number): Promise<BlobDataReader> {
    let r = this.readers.get(blobIndex)
    if (r !== undefined) return r
    const blob = this.image.blobs[blobIndex]
    if (blob === undefined) throw new UnpackError(`chunk refers to blob index ${blobIndex}, the image has ${this.image.blobs.length} blobs`)
    const candidates: Array<{ blobPath?: string, viewPath?: string }> = []
    if (this.opts.blobDir !== undefined) candidates.push({ blobPath: join(this.opts.blobDir, blob.blobId) })
    if (this.opts.blobCacheDir !== undefined) candidates.push({ viewPath: join(this.opts.blobCacheDir, `${blob.blobId}.blob.data`) })
    if (this.opts.blobDir !== undefined) candidates.push({ viewPath: join(this.opts.blobDir, `${blob.blobId}.blob.data`) })
    for (const c of candidates) {
      const path = c.blobPath ?? c.viewPath!
      if (await stat(path).then(() => true, () => false)) {
        r = await BlobDataReader.open({ ...c, blob })
        this.readers.set(blobIndex, r)
        return r
      }
    }
    throw new UnpackError(`blob ${blob.blobId} (index ${blobIndex}) not found in ${[this.opts.blobDir, this.opts.blobCacheDir].filter(Boolean).join(' or ') || '(no --blob-dir given)'}`)
  }

  async read (chunk: ChunkInfo): Promise<Buffer> {
    // sparse files repeat one zero chunk thousands of times: keep the last one
    if (this.last?.chunk === chunk) return this.last.data
    const data = await (await this.reader(chunk.blobIndex)).readChunk(chunk)
    this.last = { chunk, data }
    return data
  }

  async close (): Promise<void> {
    for (const r of this.readers.values()) await r.close()
  }
}

const isZero = (b: Buffer): boolean => {
  for (let i = 0; i < b.length; i += 8192) {
    const end = Math.min(b.length, i + 8192)
    for (let j = i; j < end; j++) if (b[j] !== 0) return false
  }
  return true
}

async function * fileData (store: ChunkStore, inode: RafsInode, chunkSize: number): AsyncGenerator<{ offset: number, data: Buffer }> {
  const chunks = inode.chunks ?? []
  for (let i = 0; i < chunks.length; i++) {
    const data = await store.read(chunks[i]!)
    const want = Math.min(chunkSize, inode.size - i * chunkSize)
    if (data.length < want) throw new UnpackError(`chunk ${i} of a ${inode.size}-byte file holds ${data.length} bytes, expected ${want}`)
    yield { offset: i * chunkSize, data: data.subarray(0, want) }
  }
}

/** Unpacks into `output`: a directory (created; must be empty if it exists) or, when it ends in .tar, a tar file. */
export async function unpackImage (bootstrap: string, output: string, opts: UnpackOptions = {}): Promise<UnpackResult> {
  const reader = await RafsReader.open(bootstrap)
  const image = reader.toImage()
  const store = new ChunkStore(image, opts)
  try {
    return output.endsWith('.tar')
      ? await unpackToTar(image, store, output, opts)
      : await unpackToDir(image, store, output, opts)
  } finally {
    await store.close()
  }
}

function newResult (output: string, format: 'dir' | 'tar'): UnpackResult {
  return { output, format, files: 0, dirs: 0, symlinks: 0, hardlinks: 0, others: 0, bytes: 0, warnings: [] }
}

/** Paths as raw bytes, parents before children, children in byte order. */
function * walkBytes (root: RafsInode): Generator<[Buffer, RafsInode]> {
  const stack: Array<[Buffer, RafsInode]> = [[Buffer.alloc(0), root]]
  while (stack.length > 0) {
    const [path, inode] = stack.pop()!
    yield [path, inode]
    if (inode.children === undefined) continue
    const keys = [...inode.children.keys()].sort()
    for (let i = keys.length - 1; i >= 0; i--) {
      const name = nameBytes(keys[i]!)
      stack.push([path.length === 0 ? name : Buffer.concat([path, Buffer.from('/'), name]), inode.children.get(keys[i]!)!])
    }
  }
}

async function unpackToDir (image: RafsImage, store: ChunkStore, output: string, opts: UnpackOptions): Promise<UnpackResult> {
  const res = newResult(output, 'dir')
  await mkdir(output, { recursive: true })
  if ((await readdir(output)).length > 0) throw new UnpackError(`output directory ${output} is not empty`)
  const outBytes = Buffer.from(output, 'utf8')
  const abs = (p: Buffer): string => (p.length === 0 ? outBytes : Buffer.concat([outBytes, Buffer.from('/'), p])).toString('latin1')
  const seen = new Map<RafsInode, string>()
  const dirs: Array<[string, RafsInode]> = []
  const times: Array<[Buffer, RafsInode]> = []
  // Node fs takes string paths as UTF-8; pass latin1-decoded bytes through Buffer to keep raw names
  const P = (s: string): Buffer => Buffer.from(s, 'latin1')
  for (const [rel, inode] of walkBytes(image.root)) {
    opts.signal?.throwIfAborted()
    const path = abs(rel)
    const first = seen.get(inode)
    if (first !== undefined && inode.type !== 'dir') {
      await link(P(first), P(path))
      res.hardlinks++
      continue
    }
    seen.set(inode, path)
    switch (inode.type) {
      case 'dir':
        if (rel.length > 0) await mkdir(P(path))
        dirs.push([path, inode])
        res.dirs++
        continue
      case 'file': {
        const fh = await open(P(path), 'wx', 0o600)
        try {
          for await (const { offset, data } of fileData(store, inode, image.chunkSize)) {
            if (!isZero(data)) await fh.write(data, 0, data.length, offset)
            res.bytes += data.length
          }
          await fh.truncate(inode.size)
        } finally {
          await fh.close()
        }
        res.files++
        break
      }
      case 'symlink':
        await symlink(inode.target ?? Buffer.alloc(0), P(path))
        res.symlinks++
        break
      case 'chr': case 'blk':
        await run('mknod', [P(path).toString('utf8'), inode.type === 'chr' ? 'c' : 'b', String(inode.rdevMajor), String(inode.rdevMinor)])
        res.others++
        break
      case 'fifo':
        await run('mknod', [P(path).toString('utf8'), 'p'])
        res.others++
        break
      case 'sock':
        // no portable way to leave a socket file from Node (it unlinks on close); python's bind keeps it
        await run('python3', ['-c', 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', P(path).toString('utf8')])
          .catch((err: Error) => { res.warnings.push(`socket ${path} not created: ${err.message}`) })
        res.others++
        break
    }
    await applyMetadata(P(path), inode, res)
    times.push([P(path), inode])
  }
  // directories last, deepest first, so creating children does not disturb their mtimes
  for (let i = dirs.length - 1; i >= 0; i--) {
    await applyMetadata(P(dirs[i]![0]), dirs[i]![1], res)
    times.push([P(dirs[i]![0]), dirs[i]![1]])
  }
  await setTimes(times, res)
  return res
}

/**
 * Sets atime = mtime with nanosecond precision, without following symlinks, in the order given.
 * Node's utimes family takes seconds as a double and libuv keeps only microseconds, so one python3 process
 * (os.utime with ns=) does it for the whole tree; without python3 we fall back to microseconds and say so.
 */
async function setTimes (times: Array<[Buffer, RafsInode]>, res: UnpackResult): Promise<void> {
  const script = [
    'import os, sys',
    'd = sys.stdin.buffer.read().split(b"\\0")',
    'for i in range(0, len(d) - 1, 2):',
    '    ns = int(d[i + 1])',
    '    os.utime(d[i], ns=(ns, ns), follow_symlinks=False)'
  ].join('\n')
  const input = Buffer.concat(times.flatMap(([path, inode]) => [path, Buffer.from(`\0${BigInt(inode.mtime) * 1_000_000_000n + BigInt(inode.mtimeNsec)}\0`)]))
  const ok = await new Promise<boolean>((resolve) => {
    const child = execFile('python3', ['-c', script], { maxBuffer: 1 << 20 }, (err, _out, stderr) => {
      if (err !== null) res.warnings.push(`nanosecond mtimes not set (${stderr.trim() || err.message}); using microseconds`)
      resolve(err === null)
    })
    child.stdin?.end(input)
  })
  if (ok) return
  for (const [path, inode] of times) await lutimes(path, inode.mtime + inode.mtimeNsec / 1e9, inode.mtime + inode.mtimeNsec / 1e9)
}

async function applyMetadata (path: Buffer, inode: RafsInode, res: UnpackResult): Promise<void> {
  const where = path.toString('utf8')
  for (const [name, value] of inode.xattrs) {
    try {
      setAttributeSync(where, name, value)
    } catch (err) {
      res.warnings.push(`xattr ${name} on ${where}: ${(err as Error).message}`)
    }
  }
  await lchown(path, inode.uid, inode.gid)
  // chown clears setuid/setgid, so the mode goes after it; symlink modes cannot be set on Linux
  if (inode.type !== 'symlink') await chmod(path, inode.mode & 0o7777)
}

const TAR_TYPE: Record<RafsInode['type'], TarEntryType | undefined> = {
  file: 'file', dir: 'dir', symlink: 'symlink', chr: 'chr', blk: 'blk', fifo: 'fifo', sock: undefined
}

async function unpackToTar (image: RafsImage, store: ChunkStore, output: string, opts: UnpackOptions): Promise<UnpackResult> {
  const res = newResult(output, 'tar')
  const tar = new TarWriter(createWriteStream(output, { flags: 'wx' }))
  const seen = new Map<RafsInode, Buffer>()
  for (const [rel, inode] of walkBytes(image.root)) {
    opts.signal?.throwIfAborted()
    const path = rel.length === 0 ? Buffer.from('.') : rel
    const base = { path, mode: inode.mode & 0o7777, uid: inode.uid, gid: inode.gid, mtime: inode.mtime, mtimeNsec: inode.mtimeNsec, xattrs: inode.xattrs }
    const first = seen.get(inode)
    if (first !== undefined && inode.type !== 'dir') {
      await tar.entry({ ...base, type: 'link', linkPath: first, xattrs: undefined })
      res.hardlinks++
      continue
    }
    seen.set(inode, path)
    const type = TAR_TYPE[inode.type]
    if (type === undefined) {
      res.warnings.push(`socket ${path.toString('utf8')} skipped: tar cannot hold sockets`)
      continue
    }
    await tar.entry({ ...base, type, size: inode.type === 'file' ? inode.size : 0, linkPath: inode.target, devMajor: inode.rdevMajor, devMinor: inode.rdevMinor })
    if (inode.type === 'file') {
      for await (const { data } of fileData(store, inode, image.chunkSize)) {
        await tar.writeData(data)
        res.bytes += data.length
      }
      await tar.pad(inode.size)
      res.files++
    } else if (inode.type === 'dir') res.dirs++
    else if (inode.type === 'symlink') res.symlinks++
    else res.others++
  }
  await tar.finish()
  return res
}
