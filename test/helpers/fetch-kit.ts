/**
 * Test fixtures of the fetch pipeline: a small RAFS image (several multi-chunk files, 64 KiB chunks) with its
 * source bytes, an in-memory `ChunkCache`, and hostile `node:http` registries (wrong bytes, stalls).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { AddressInfo } from 'node:net'
import { BlobDataReader, buildImage, directorySource, RafsReader, type ChunkInfo, type Compressor } from '../../rafs/index.js'
import type { ChunkCache, FetchImage } from '../../peer/index.js'

export const CHUNK_SIZE = 64 << 10

/** Deterministic bytes: `compressible` draws them from a 4-letter alphabet (zstd shrinks them ~4x). */
export function testBytes (size: number, seed: number, compressible = false): Buffer {
  const out = Buffer.alloc(size)
  let x = (seed * 2654435761) >>> 0 || 1
  for (let i = 0; i < size; i += 4) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0
    for (let k = 0; k < 4 && i + k < size; k++) {
      const byte = (x >>> (k * 8)) & 0xff
      out[i + k] = compressible ? 0x61 + (byte & 3) : byte
    }
  }
  return out
}

export const TEST_FILES: Record<string, Buffer> = {
  '/small.txt': Buffer.from('hello, lazily fetched world\n'.repeat(100)),
  '/a.bin': testBytes(1 << 20, 1),
  '/b.bin': testBytes(600 << 10, 2, true),
  '/dir/c.bin': testBytes(300 << 10 | 123, 3),
  '/e.bin': testBytes(2 << 20, 4),
  '/f.bin': testBytes(1 << 20, 5),
  /** five identical chunks: one ChunkInfo in five slots */
  '/zeros.bin': Buffer.alloc(5 * CHUNK_SIZE - 100)
}

export interface TestImage extends FetchImage {
  reader: RafsReader
  dir: string
  blobPath: string
  blobId: string
  blobSize: number
  files: Record<string, Buffer>
  cleanup: () => Promise<void>
}

export async function buildTestImage (opts: { compressor?: Compressor } = {}): Promise<TestImage> {
  const dir = await mkdtemp(join(tmpdir(), 'rafspeer-fetch-'))
  try {
    const src = join(dir, 'src')
    for (const [path, bytes] of Object.entries(TEST_FILES)) {
      await mkdir(join(src, path, '..'), { recursive: true })
      await writeFile(join(src, path), bytes)
    }
    const built = await buildImage(directorySource(src), {
      bootstrap: join(dir, 'image.boot'), blobDir: join(dir, 'blobs'), chunkSize: CHUNK_SIZE, compressor: opts.compressor ?? 'zstd'
    })
    const blob = built.blobs[0]!
    const reader = await RafsReader.open(built.bootstrap)
    return {
      reader, blobs: reader.blobs, dir, blobPath: blob.path, blobId: blob.blobId, blobSize: blob.size, files: TEST_FILES,
      cleanup: async () => { await rm(dir, { recursive: true, force: true }) }
    }
  } catch (err) {
    await rm(dir, { recursive: true, force: true })
    throw err
  }
}

/** Every chunk of the image's (first) blob in index order, with its plaintext (`plain[chunk.index]`). */
export async function blobChunks (img: TestImage): Promise<{ chunks: ChunkInfo[], plain: Buffer[] }> {
  const blob = img.blobs[0]!
  const chunks = Array.from({ length: blob.chunkCount }, (_, ci) => img.reader.chunkInfo(0, ci))
  const plain: Buffer[] = []
  const r = await BlobDataReader.open({ blobPath: img.blobPath, blob })
  try {
    for (const c of chunks) plain[c.index] = await r.readChunk(c)
  } finally {
    await r.close()
  }
  return { chunks, plain }
}

/** The chunks of one file of the image, in file order. */
export function chunksOf (img: TestImage, path: string): ChunkInfo[] {
  const nid = img.reader.lookup(path)
  return img.reader.mapRange(nid, 0, Number.MAX_SAFE_INTEGER).map(p => p.chunk)
}

/** The simplest ChunkCache: a Map; `failPut` makes every put fail like a full disk. */
export class MemoryChunkCache implements ChunkCache {
  readonly chunks = new Map<string, Buffer>()
  puts = 0
  failPut: Error | undefined

  has (blobId: string, ci: number): boolean { return this.chunks.has(`${blobId}/${ci}`) }
  /** it never vouches for its bytes in advance: every hit is read whole through `readChunk` */
  isVerified (): boolean { return false }
  async readVerifiedInto (): Promise<boolean> { return false }

  async readChunk (blobId: string, chunk: ChunkInfo): Promise<Buffer | undefined> {
    return this.chunks.get(`${blobId}/${chunk.index}`)
  }

  async putChunk (blobId: string, chunk: ChunkInfo, plaintext: Buffer): Promise<void> {
    this.puts++
    if (this.failPut !== undefined) throw this.failPut
    this.chunks.set(`${blobId}/${chunk.index}`, Buffer.from(plaintext))
  }
}

/** Wraps a real cache: counts puts, and with `failPut` set fails them like a full disk, storing nothing. */
export class TestCache implements ChunkCache {
  puts = 0
  failPut: Error | undefined
  constructor (readonly inner: ChunkCache) {}

  has (blobId: string, ci: number): boolean { return this.inner.has(blobId, ci) }
  isVerified (blobId: string, ci: number): boolean { return this.inner.isVerified(blobId, ci) }

  async readVerifiedInto (blobId: string, viewOffset: number, length: number, buf: Buffer, bufOffset: number): Promise<boolean> {
    return await this.inner.readVerifiedInto(blobId, viewOffset, length, buf, bufOffset)
  }

  async readChunk (blobId: string, chunk: ChunkInfo, opts?: { verify?: boolean | 'once' }): Promise<Buffer | undefined> {
    return await this.inner.readChunk(blobId, chunk, opts)
  }

  async putChunk (blobId: string, chunk: ChunkInfo, plaintext: Buffer): Promise<unknown> {
    this.puts++
    if (this.failPut !== undefined) throw this.failPut
    return await this.inner.putChunk(blobId, chunk, plaintext)
  }

  /** chunks of the blob the cache holds */
  present (blob: { blobId: string, chunkCount: number }): number {
    let n = 0
    for (let ci = 0; ci < blob.chunkCount; ci++) if (this.has(blob.blobId, ci)) n++
    return n
  }
}

export interface HostileRegistry {
  host: string
  requests: number
  stop: () => Promise<void>
}

/**
 * A registry that answers blob Range GETs of one blob file, through `mode`: `flip` changes one byte in every
 * 4 KiB of every response (status and Content-Range stay right), `stall` sends headers and then nothing,
 * `trickle` sends the right bytes 2 KiB every 20 ms.
 */
export async function startHostileRegistry (blobPath: string, mode: 'flip' | 'stall' | 'trickle'): Promise<HostileRegistry> {
  const blob = await readFile(blobPath)
  const state = { requests: 0 }
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    if (req.url === '/v2/' || req.url === '/v2') { res.writeHead(200, { 'content-type': 'application/json' }).end('{}'); return }
    const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '')
    if (req.method !== 'GET' || !/\/blobs\/sha256:/.test(req.url ?? '') || m === null) { res.writeHead(404).end(); return }
    state.requests++
    const start = Number(m[1])
    const end = Math.min(Number(m[2]), blob.length - 1)
    const body = Buffer.from(blob.subarray(start, end + 1))
    res.writeHead(206, { 'content-length': body.length, 'content-range': `bytes ${start}-${end}/${blob.length}`, 'content-type': 'application/octet-stream' })
    if (mode === 'stall') { res.flushHeaders(); return }
    if (mode === 'trickle') {
      // 2 KiB every 20 ms: a 64 KiB chunk takes ~0.6 s, each piece well inside a short idle deadline
      let at = 0
      const timer = setInterval(() => {
        if (res.destroyed) { clearInterval(timer); return }
        const next = Math.min(body.length, at + 2048)
        res.write(body.subarray(at, next))
        at = next
        if (at >= body.length) { clearInterval(timer); res.end() }
      }, 20)
      res.on('close', () => { clearInterval(timer) })
      return
    }
    for (let i = 0; i < body.length; i += 4096) body[i]! ^= 0xff
    res.end(body)
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  return {
    host: `127.0.0.1:${port}`,
    get requests () { return state.requests },
    stop: async () => {
      server.closeAllConnections()
      await new Promise<void>(resolve => server.close(() => resolve()))
    }
  }
}
