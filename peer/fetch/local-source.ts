/**
 * A chunk source over a local blob directory, for `rafspeer mount BOOTSTRAP --blob-dir DIR`: the data blobs
 * `rafspeer build -D` writes (`<blob-id>`, stored chunks, decompressed here) or uncompressed views
 * (`<blob-id>.blob.data`). Like every source it is not trusted: the fetcher verifies what it returns.
 *
 * @example
 * ```ts
 * const local = new LocalBlobSource({ dir: '/images/app/blobs' })
 * const fetcher = new Fetcher({ cache, sources: [local] })
 * ```
 */
import { constants as fsc } from 'node:fs'
import { open, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { decompressChunk, type ChunkInfo, type RafsBlobInfo } from '../../rafs/index.js'
import { contiguousRuns, type ChunkSource, type ChunkSourceFetchOptions, type FetchedChunk } from './source.js'
import { SourceProtocolError } from './errors.js'

const MAX_RUN_BYTES = 8 << 20

interface OpenBlob { fh: FileHandle, view: boolean }

export class LocalBlobSource implements ChunkSource {
  readonly name = 'local'
  private readonly dir: string
  private readonly files = new Map<string, Promise<OpenBlob>>()

  constructor (init: { dir: string }) {
    this.dir = init.dir
  }

  private async blobFile (blobId: string): Promise<OpenBlob> {
    let p = this.files.get(blobId)
    if (p === undefined) {
      p = (async () => {
        const stored = join(this.dir, blobId)
        try {
          return { fh: await open(stored, fsc.O_RDONLY), view: false }
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
        }
        try {
          return { fh: await open(join(this.dir, `${blobId}.blob.data`), fsc.O_RDONLY), view: true }
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
          throw new SourceProtocolError(this.name, `blob ${blobId} is not in ${this.dir} (neither ${blobId} nor ${blobId}.blob.data)`)
        }
      })()
      this.files.set(blobId, p)
      p.catch(() => this.files.delete(blobId))
    }
    return await p
  }

  async * fetch (blob: RafsBlobInfo, chunks: ChunkInfo[], opts: ChunkSourceFetchOptions): AsyncGenerator<FetchedChunk> {
    const { fh, view } = await this.blobFile(blob.blobId)
    if (view) {
      for (const chunk of chunks) {
        opts.signal.throwIfAborted()
        const plaintext = Buffer.allocUnsafe(chunk.uncompressedSize)
        const { bytesRead } = await fh.read(plaintext, 0, plaintext.length, chunk.uncompressedOffset)
        if (bytesRead !== plaintext.length) throw new SourceProtocolError(this.name, `blob ${blob.blobId}.blob.data ends inside chunk ${chunk.index}`)
        yield { chunk, plaintext }
      }
      return
    }
    for (const run of contiguousRuns(chunks, MAX_RUN_BYTES)) {
      opts.signal.throwIfAborted()
      const bytes = Buffer.allocUnsafe(run.end - run.start)
      const { bytesRead } = await fh.read(bytes, 0, bytes.length, run.start)
      if (bytesRead !== bytes.length) throw new SourceProtocolError(this.name, `blob ${blob.blobId} ends at ${run.start + bytesRead}, chunks need ${run.end}`)
      for (const chunk of run.chunks) {
        const stored = bytes.subarray(chunk.compressedOffset - run.start, chunk.compressedOffset - run.start + chunk.compressedSize)
        const what = `chunk ${chunk.index} of blob ${blob.blobId}`
        const plaintext = chunk.compressed ? decompressChunk(blob.compressor, stored, chunk.uncompressedSize, what) : Buffer.from(stored)
        if (plaintext.length !== chunk.uncompressedSize) throw new SourceProtocolError(this.name, `${what} holds ${plaintext.length} bytes, metadata says ${chunk.uncompressedSize}`)
        yield { chunk, plaintext }
      }
    }
  }

  async close (): Promise<void> {
    const all = [...this.files.values()]
    this.files.clear()
    for (const p of all) await p.then(async b => await b.fh.close(), () => {})
  }
}
