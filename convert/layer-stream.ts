/**
 * A source layer as a stream of plain tar bytes: the registry stream (digest-verified by the client) → a byte
 * counter for progress → the decompressor its media type names. The caller gets the tar bytes and a promise that
 * settles only when the whole blob has arrived and matched its digest: a tar parser may be done before the last
 * bytes (padding) arrive, and those last bytes are where a digest mismatch shows.
 */
import { PassThrough, Transform, type TransformCallback, type Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { createGunzip } from 'node:zlib'
import { DecompressStream } from 'zstd-napi'
import { MediaTypes } from '../registry/index.js'
import { ConvertError } from './errors.js'

export type LayerCompression = 'none' | 'gzip' | 'zstd'

const LAYER_TYPES: Record<string, LayerCompression> = {
  [MediaTypes.OciLayer]: 'none',
  [MediaTypes.OciLayerGzip]: 'gzip',
  [MediaTypes.OciLayerZstd]: 'zstd',
  [MediaTypes.DockerLayerGzip]: 'gzip',
  // non-distributable layers are ordinary layers for a converter that can fetch them
  'application/vnd.oci.image.layer.nondistributable.v1.tar': 'none',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd': 'zstd',
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip': 'gzip'
}

/** The compression of a layer media type; throws naming the type and the layer when convert cannot read it. */
export function layerCompression (mediaType: string, digest: string): LayerCompression {
  const c = LAYER_TYPES[mediaType]
  if (c === undefined) {
    throw new ConvertError('RAFSPEER_ERR_UNSUPPORTED_LAYER',
      `layer ${digest} has media type ${JSON.stringify(mediaType)}, which convert cannot read (supported: ${Object.keys(LAYER_TYPES).join(', ')})`)
  }
  return c
}

class Counter extends Transform {
  constructor (private readonly onBytes: (n: number) => void) { super() }
  override _transform (chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.onBytes(chunk.length)
    cb(null, chunk)
  }
}

export interface OpenedLayer {
  /** plain tar bytes */
  tar: Readable
  /** settles when every byte of the blob arrived and was verified (rejects with the registry's error otherwise) */
  done: Promise<void>
  /** stops the download (after a failure downstream) */
  abort: (err: Error) => void
}

export function openLayer (blob: Readable, compression: LayerCompression, onBytes: (n: number) => void): OpenedLayer {
  const decoder: Transform = compression === 'gzip' ? createGunzip() : compression === 'zstd' ? new DecompressStream() : new PassThrough()
  const done = pipeline(blob, new Counter(onBytes), decoder)
  // observed here, awaited by the caller: an early failure must not become an unhandled rejection
  done.catch(() => {})
  return { tar: decoder, done, abort: (err) => { blob.destroy(err) } }
}
