/**
 * The bootstrap layer of a Nydus image (§17): a gzip'd tar holding dir `image` (0755) and file `image/image.boot`
 * (0444). It is written deterministically (mtime 0, uid/gid 0, no gzip timestamp) so that converting the same
 * source twice yields the same digest and the second push is skipped. Also the reverse: pulling `image.boot` out
 * of such a layer stream.
 *
 * @example
 * ```ts
 * const layer = await writeBootstrapLayer('work/image.boot', 'work/bootstrap.tar.gz')
 * // layer.digest: sha256 of the .tar.gz, layer.diffId: sha256 of the tar
 * ```
 */
import { createHash } from 'node:crypto'
import { createReadStream, createWriteStream } from 'node:fs'
import { stat } from 'node:fs/promises'
import { PassThrough, Transform, type TransformCallback } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { createGunzip, createGzip, constants as zlibConstants } from 'node:zlib'
import tar from 'tar-stream'
import { TarWriter } from '../rafs/index.js'
import { BOOTSTRAP_TAR_DIR, BOOTSTRAP_TAR_PATH, LEGACY_BOOTSTRAP_TAR_PATH, type BootstrapLayer } from './nydus-layout.js'
import { NydusLayoutError } from './errors.js'

/** Fixed for every entry: the layer's digest must depend on the bootstrap bytes only. */
export const BOOTSTRAP_LAYER_MTIME = 0

/** Passes bytes through while hashing and counting them. */
class Hasher extends Transform {
  private readonly hash = createHash('sha256')
  bytes = 0
  override _transform (chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk)
    this.bytes += chunk.length
    cb(null, chunk)
  }

  digest (): string { return `sha256:${this.hash.digest('hex')}` }
}

/** Writes the bootstrap layer `.tar.gz` for `bootstrap` at `out`; returns its digest, size and diff_id. */
export async function writeBootstrapLayer (bootstrap: string, out: string, opts: { signal?: AbortSignal } = {}): Promise<BootstrapLayer> {
  const { size } = await stat(bootstrap)
  const tarStream = new PassThrough()
  const plain = new Hasher()
  const packed = new Hasher()
  const written = pipeline(tarStream, plain, createGzip({ level: zlibConstants.Z_BEST_COMPRESSION }), packed, createWriteStream(out),
    opts.signal !== undefined ? { signal: opts.signal } : {})
  const w = new TarWriter(tarStream)
  const produce = (async () => {
    await w.entry({ path: Buffer.from(BOOTSTRAP_TAR_DIR), type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: BOOTSTRAP_LAYER_MTIME })
    await w.entry({ path: Buffer.from(BOOTSTRAP_TAR_PATH), type: 'file', mode: 0o444, uid: 0, gid: 0, size, mtime: BOOTSTRAP_LAYER_MTIME })
    let n = 0
    for await (const piece of createReadStream(bootstrap)) {
      n += (piece as Buffer).length
      await w.writeData(piece as Buffer)
    }
    if (n !== size) throw new NydusLayoutError('RAFSPEER_ERR_CONVERT_LAYER', `bootstrap ${bootstrap} changed size while it was packed (${n} of ${size} bytes)`)
    await w.pad(size)
    await w.finish()
  })()
  try {
    await Promise.all([produce, written])
  } catch (err) {
    tarStream.destroy(err as Error)
    await Promise.allSettled([produce, written])
    throw err
  }
  return { digest: packed.digest(), size: packed.bytes, diffId: plain.digest() }
}

/**
 * Reads a bootstrap layer stream (tar.gz when `gzip`, else plain tar) and writes its `image/image.boot` (or the
 * legacy root `image.boot`) to `out`. The whole stream is consumed, so a digest check at its end still runs.
 */
export async function extractBootstrap (layer: NodeJS.ReadableStream, out: string, opts: { gzip: boolean }): Promise<{ size: number, path: string, diffId: string }> {
  const body: AsyncIterable<Uint8Array> = opts.gzip ? layer.pipe(createGunzip()) : layer as unknown as AsyncIterable<Uint8Array>
  if (opts.gzip) layer.once('error', (e: Error) => (body as unknown as PassThrough).destroy(e))
  const ex = tar.extract()
  const plain = createHash('sha256')
  const pump = (async () => {
    try {
      for await (const piece of body) {
        // the reader gave up (a layer that is not a tar): stop reading; it reports why
        if (ex.destroyed) break
        plain.update(piece)
        // a destroyed extractor never drains and has already closed: waiting for either would hang
        if (!ex.write(piece) && !ex.destroyed) {
          await new Promise<void>(resolve => {
            // whichever comes first removes the other (a leftover 'close' listener per wait would pile up)
            const done = (): void => { ex.off('drain', done); ex.off('close', done); resolve() }
            ex.once('drain', done)
            ex.once('close', done)
          })
        }
      }
      if (ex.destroyed) { if (opts.gzip) (layer as unknown as { destroy?: () => void }).destroy?.() } else ex.end(undefined)
    } catch (err) {
      ex.destroy(err as Error)
      throw err
    }
  })()
  let found: { size: number, path: string } | undefined
  try {
    for await (const entry of ex) {
      const name = entry.header.name.replace(/^\.\//, '').replace(/\/$/, '')
      const wanted = name === BOOTSTRAP_TAR_PATH || (found === undefined && name === LEGACY_BOOTSTRAP_TAR_PATH)
      if (wanted && entry.header.type === 'file') {
        const h = new Hasher()
        await pipeline(entry as unknown as NodeJS.ReadableStream, h, createWriteStream(out))
        found = { size: h.bytes, path: name }
      } else {
        for await (const _ of entry) { /* skip */ }
      }
    }
  } catch (err) {
    await pump.catch(() => {})
    throw err
  }
  await pump
  if (found === undefined) throw new NydusLayoutError('RAFSPEER_ERR_NOT_NYDUS', `the bootstrap layer holds neither ${BOOTSTRAP_TAR_PATH} nor ${LEGACY_BOOTSTRAP_TAR_PATH}`)
  return { ...found, diffId: `sha256:${plain.digest('hex')}` }
}
