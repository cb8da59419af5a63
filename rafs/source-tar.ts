/**
 * An OCI layer (tar or tar.gz) as a {@link TreeSource}, read as a stream: each regular file's bytes go to the
 * chunk sink as they arrive, so a layer is never held in memory.
 *
 * Whiteouts (`.wh.NAME`, `.wh..wh..opq`) are kept as ordinary entries: applying them is the job of merge.
 *
 * @example
 * ```ts
 * const source = tarSource(fs.createReadStream('layer.tar.gz'))
 * const result = await buildImage(source, { bootstrap, blobDir })
 * ```
 * @packageDocumentation
 */
import { Readable, pipeline } from 'node:stream'
import { createGunzip } from 'node:zlib'
import tar from 'tar-stream'
import { MAX_NAME_LEN } from './layout.js'
import { newInode, type ChunkInfo, type FileType, type RafsInode } from './model.js'
import type { ChunkSink, TreeSource } from './source.js'
import { paxInt, paxXattrs, parseMtime, patchPaxDecoding } from './tar-pax.js'
import { RafspeerError } from '../base/index.js'

export class TarError extends RafspeerError.coded('RAFSPEER_ERR_BAD_TAR') {}

export interface TarSourceOptions {
  /** 'auto' (default) sniffs the gzip magic 1f 8b */
  gzip?: boolean | 'auto'
  /** filled in while the layer is read */
  stats?: TarStats
}

export interface TarStats {
  entries: number
  files: number
  fileBytes: number
  hardLinks: number
  /** `.wh.NAME` entries */
  whiteouts: number
  /** `.wh..wh..opq` entries */
  opaques: number
}

export const WHITEOUT_PREFIX = '.wh.'
export const OPAQUE_WHITEOUT = '.wh..wh..opq'

type Header = Omit<tar.Header, 'pax' | 'type'> & { type: tar.Header['type'] | null, pax?: Record<string, string> | null }
type Entry = AsyncIterable<Buffer> & { header: tar.Header }

export function tarSource (
  input: NodeJS.ReadableStream | AsyncIterable<Uint8Array>,
  opts: TarSourceOptions = {}
): TreeSource {
  let used = false
  return async (sink, options = {}) => {
    if (used) throw new TarError('a tar source can be read only once')
    used = true
    options.signal?.throwIfAborted()
    const stats = opts.stats ?? { entries: 0, files: 0, fileBytes: 0, hardLinks: 0, whiteouts: 0, opaques: 0 }
    let bytes: AsyncIterable<Uint8Array>
    try {
      bytes = await maybeGunzip(input as AsyncIterable<Uint8Array | string>, opts.gzip ?? 'auto')
    } catch (err) {
      throw new TarError(`cannot read the layer: ${(err as Error).message}`, { cause: err })
    }
    return await readTar(bytes, sink, stats, options.signal)
  }
}

async function maybeGunzip (input: AsyncIterable<Uint8Array | string>, gzip: boolean | 'auto'): Promise<AsyncIterable<Uint8Array>> {
  const it = input[Symbol.asyncIterator]()
  // Sniffing needs two bytes, which the first piece may not hold.
  const head: Buffer[] = []
  let headLen = 0
  let ended = false
  while (gzip === 'auto' && headLen < 2) {
    const r = await it.next()
    if (r.done === true) { ended = true; break }
    const b = toBuffer(r.value)
    head.push(b)
    headLen += b.length
  }
  const all = async function * (): AsyncGenerator<Buffer> {
    try {
      yield * head
      if (ended) return
      for (let r = await it.next(); r.done !== true; r = await it.next()) yield toBuffer(r.value)
    } finally {
      await it.return?.()
    }
  }
  const first = Buffer.concat(head)
  const isGzip = gzip === 'auto' ? first.length >= 2 && first[0] === 0x1f && first[1] === 0x8b : gzip
  if (!isGzip) return all()
  const gunzip = createGunzip()
  // An error on either side destroys the gunzip stream, which then rejects the reader's next().
  pipeline(Readable.from(all(), { objectMode: false }), gunzip, () => {})
  return gunzip
}

function toBuffer (b: Uint8Array | string): Buffer {
  if (typeof b === 'string') return Buffer.from(b, 'latin1')
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength)
}

async function readTar (bytes: AsyncIterable<Uint8Array>, sink: ChunkSink, stats: TarStats, signal?: AbortSignal): Promise<RafsInode> {
  // v7 headers (no ustar magic) are still checksummed, so allowing them lets no garbage through.
  const ex = tar.extract({ filenameEncoding: 'latin1', allowUnknownFormat: true } as Parameters<typeof tar.extract>[0])
  patchPaxDecoding(ex)
  const pump = (async () => {
    try {
      for await (const chunk of bytes) {
        if (ex.destroyed) return
        if (!ex.write(chunk)) await drained(ex)
      }
      ex.end(undefined)
    } catch (err) {
      ex.destroy(err as Error)
    }
  })()

  const tree = new TreeBuilder()
  const stored = new StoredChunks()
  let current = '(start of archive)'
  try {
    for await (const entry of ex) {
      signal?.throwIfAborted()
      stored.throwIfFailed()
      const header = entry.header as unknown as Header
      current = JSON.stringify(Buffer.from(header.name, 'latin1').toString('utf8'))
      stats.entries++
      await addEntry(tree, header, entry as unknown as Entry, sink, stats, stored)
    }
    signal?.throwIfAborted()
    await stored.all()
  } catch (err) {
    // The pump sees the destroyed extract and stops at its next piece; it never rejects, so it is not awaited.
    ex.destroy(null)
    if (err instanceof TarError || (err as Error).name === 'AbortError' || sinkErrors.has(err as object)) throw err
    throw new TarError(`bad tar (last entry read: ${current}): ${(err as Error).message}`, { cause: err })
  }
  await pump
  return tree.root
}

function drained (ex: tar.Extract): Promise<void> {
  return new Promise(resolve => {
    const done = (): void => {
      ex.off('drain', done)
      ex.off('close', done)
      resolve()
    }
    ex.on('drain', done)
    ex.on('close', done)
  })
}

const sinkErrors = new WeakSet<object>()

/**
 * The chunk lists the sink still owes. A file's entry is done once the sink has taken its bytes; its chunks come
 * later, so the sink can digest and compress several files at once instead of one round trip per file.
 */
class StoredChunks {
  readonly #pending: Array<Promise<void>> = []
  #failure: { err: unknown } | undefined

  add (inode: RafsInode, chunks: Promise<ChunkInfo[]>): void {
    const done = chunks.then((c) => { inode.chunks = c }, (err: unknown) => {
      // The sink's own failure (disk full, ...) is not the archive's fault: let it through unchanged.
      if (typeof err === 'object' && err !== null) sinkErrors.add(err)
      this.#failure ??= { err }
      throw err
    })
    done.catch(() => {}) // thrown by all() or throwIfFailed(); a bad archive may leave it unobserved
    this.#pending.push(done)
  }

  throwIfFailed (): void {
    if (this.#failure !== undefined) throw this.#failure.err
  }

  async all (): Promise<void> {
    for (const p of this.#pending) await p
  }
}

async function drain (entry: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of entry) { /* skip data this entry type does not use */ }
}

async function addEntry (tree: TreeBuilder, h: Header, entry: Entry, sink: ChunkSink, stats: TarStats, stored: StoredChunks): Promise<void> {
  const path = splitPath(h.name)
  const pax = h.pax ?? {}
  const base = path[path.length - 1]
  if (base === OPAQUE_WHITEOUT) stats.opaques++
  else if (base?.startsWith(WHITEOUT_PREFIX) === true) stats.whiteouts++

  if (h.type === 'link') {
    await drain(entry)
    const target = tree.lookup(splitPath(h.linkname ?? ''))
    if (target === undefined || target.type === 'dir') {
      throw new TarError(`hard link ${show(h.name)} points to ${show(h.linkname ?? '')}, which is not a file seen earlier in this layer`)
    }
    stats.hardLinks++
    tree.put(path, target)
    return
  }

  // tar-stream spots the old "name/" directory convention but leaves `type` as 'file'.
  const oldStyleDir = h.type === 'file' && h.name.endsWith('/')
  const type = oldStyleDir ? 'dir' : h.type === null ? undefined : TYPES[h.type]
  if (type === undefined) throw new TarError(`entry ${show(h.name)} has unsupported type ${String(h.type)}`)
  const { mtime, mtimeNsec } = parseMtime(h, pax)
  const inode = newInode(type, {
    // Linux symlinks are always 0777 whatever the header says; extracting with tar gives the same.
    mode: type === 'symlink' ? 0o120777 : (newInode(type).mode & 0o170000) | ((h.mode ?? 0) & 0o7777),
    uid: paxInt(pax.uid) ?? h.uid ?? 0,
    gid: paxInt(pax.gid) ?? h.gid ?? 0,
    mtime,
    mtimeNsec,
    xattrs: paxXattrs(pax)
  })
  if (type === 'file') {
    const size = h.size ?? 0
    let seen = 0
    let dataError: unknown
    let taken!: () => void
    const consumed = new Promise<void>(resolve => { taken = resolve })
    const counted = async function * (): AsyncGenerator<Buffer> {
      try {
        for await (const piece of entry) {
          seen += piece.length
          yield piece
        }
      } catch (err) {
        dataError = err
        throw err
      } finally {
        taken()
      }
    }
    const chunks = sink.addFile(counted())
    stored.add(inode, chunks)
    // the next entry's bytes follow this one's in the stream: wait until the sink has read them, not stored them
    await Promise.race([consumed, chunks.then(() => {}, () => {})])
    if (dataError !== undefined) throw new TarError(`entry ${show(h.name)}: ${(dataError as Error).message}`, { cause: dataError })
    if (seen !== size) {
      // a sink that stopped reading has a failure of its own, which is the one to report
      await chunks.then(() => {}, () => {})
      stored.throwIfFailed()
      throw new TarError(`entry ${show(h.name)}: expected ${size} bytes, read ${seen}`)
    }
    inode.size = size
    stats.files++
    stats.fileBytes += size
  } else {
    await drain(entry)
    if (type === 'symlink') inode.target = Buffer.from(h.linkname ?? '', 'latin1')
    if (type === 'chr' || type === 'blk') {
      inode.rdevMajor = paxInt(pax['SCHILY.devmajor']) ?? h.devmajor ?? 0
      inode.rdevMinor = paxInt(pax['SCHILY.devminor']) ?? h.devminor ?? 0
    }
  }
  tree.put(path, inode)
}

const TYPES: Partial<Record<string, FileType>> = {
  file: 'file',
  'contiguous-file': 'file',
  directory: 'dir',
  symlink: 'symlink',
  'character-device': 'chr',
  'block-device': 'blk',
  fifo: 'fifo'
}

const show = (latin1: string): string => JSON.stringify(Buffer.from(latin1, 'latin1').toString('utf8'))

/** './a/b', 'a/b/', '/a/b' and 'a//b' are one path; '..' may not climb above the root. */
export function splitPath (name: string): string[] {
  const out: string[] = []
  for (const part of name.split('/')) {
    if (part === '' || part === '.') continue
    if (part === '..') {
      if (out.length === 0) throw new TarError(`entry ${show(name)} escapes the archive root`)
      out.pop()
      continue
    }
    if (part.length > MAX_NAME_LEN) throw new TarError(`entry ${show(name)} has a name longer than ${MAX_NAME_LEN} bytes`)
    out.push(part)
  }
  return out
}

class TreeBuilder {
  readonly root: RafsInode = { ...newInode('dir'), implicit: true }

  lookup (path: string[]): RafsInode | undefined {
    let node: RafsInode | undefined = this.root
    for (const part of path) {
      node = node?.children?.get(part)
      if (node === undefined) return undefined
    }
    return node
  }

  /** Puts `inode` at `path`, creating missing parents; a dir over a dir keeps the existing children. */
  put (path: string[], inode: RafsInode): void {
    if (path.length === 0) {
      if (inode.type !== 'dir') throw new TarError('the archive root must be a directory')
      this.adoptAttrs(this.root, inode)
      return
    }
    let dir = this.root
    for (let i = 0; i < path.length - 1; i++) {
      const part = path[i]!
      let next = dir.children!.get(part)
      if (next === undefined) {
        next = { ...newInode('dir'), implicit: true }
        dir.children!.set(part, next)
      } else if (next.type !== 'dir') {
        throw new TarError(`entry ${show(path.join('/'))}: parent ${show(path.slice(0, i + 1).join('/'))} is not a directory`)
      }
      dir = next
    }
    const name = path[path.length - 1]!
    const existing = dir.children!.get(name)
    if (existing === inode) return
    if (existing?.type === 'dir' && inode.type === 'dir') this.adoptAttrs(existing, inode)
    else dir.children!.set(name, inode)
  }

  private adoptAttrs (dir: RafsInode, from: RafsInode): void {
    dir.mode = from.mode
    dir.uid = from.uid
    dir.gid = from.gid
    dir.mtime = from.mtime
    dir.mtimeNsec = from.mtimeNsec
    dir.xattrs = from.xattrs
    delete dir.implicit
  }
}
