/**
 * Chunk codecs: compression (zstd, lz4_block, none) and digests (blake3, sha256).
 * Decompression always writes into a buffer of the size the metadata promises, so a hostile frame can neither
 * blow up memory nor return a chunk of the wrong length.
 */
import { createHash } from 'node:crypto'
import { createRequire } from 'node:module'
import { hash as blake3Hash } from 'blake3'
import type { Compressor, Digester } from './layout.js'
import { RafsFormatError } from './layout.js'

const require = createRequire(import.meta.url)
interface ZstdBinding {
  decompress: (dst: Uint8Array, src: Uint8Array) => number
  compressBound: (n: number) => number
  CCtx: new () => { compress: (dst: Uint8Array, src: Uint8Array, level: number) => number }
}
const zstd = require('zstd-napi/binding.js') as ZstdBinding
interface Lz4 {
  compressBlock: (src: Uint8Array, dst: Uint8Array, sIndex: number, sLength: number, hashTable: Uint32Array) => number
  decompressBlock: (src: Uint8Array, dst: Uint8Array, sIndex: number, sLength: number, dIndex: number) => number
  compressBound: (n: number) => number
}
const lz4 = require('lz4js') as Lz4

export const ZSTD_LEVEL = 3

// One context per thread, reused: ZSTD_compress sets up and tears down a fresh one per call, which for small
// chunks costs as much as the compression (the frames are the same: it is ZSTD_compressCCtx on a scratch context).
let cctx: InstanceType<ZstdBinding['CCtx']> | undefined

export function digestChunk (digester: Digester, data: Uint8Array): Buffer {
  if (digester === 'sha256') return createHash('sha256').update(data).digest()
  return Buffer.from(blake3Hash(data) as Uint8Array)
}

/** Room `compressChunkInto` needs for a chunk of `n` bytes. */
export function compressBound (compressor: Compressor, n: number): number {
  return compressor === 'lz4_block' ? lz4.compressBound(n) : compressor === 'zstd' ? zstd.compressBound(n) : 0
}

/**
 * Compresses `data` into `dst` (at least `compressBound` bytes); returns the compressed length, or 0 when the
 * result would not be smaller, in which case the raw bytes are stored and the chunk counts as uncompressed (§13.1).
 */
export function compressChunkInto (compressor: Compressor, data: Uint8Array, dst: Uint8Array): number {
  if (compressor === 'none' || data.length === 0) return 0
  let n: number
  if (compressor === 'zstd') {
    n = (cctx ??= new zstd.CCtx()).compress(dst, data, ZSTD_LEVEL)
  } else if (compressor === 'lz4_block') {
    n = lz4.compressBlock(data, dst, 0, data.length, new Uint32Array(1 << 16)) // lz4js returns 0 for incompressible input
  } else {
    throw new RafsFormatError(`compressor ${compressor} is not supported for writing`)
  }
  return n < data.length ? n : 0
}

/** Like `compressChunkInto`, into a buffer of its own; undefined when compression does not pay. */
export function compressChunk (compressor: Compressor, data: Uint8Array): Buffer | undefined {
  if (compressor === 'none' || data.length === 0) return undefined
  const dst = Buffer.allocUnsafe(compressBound(compressor, data.length))
  const n = compressChunkInto(compressor, data, dst)
  return n > 0 ? dst.subarray(0, n) : undefined
}

/** Decompresses one stored chunk to exactly `size` bytes, or throws a RafsFormatError. */
export function decompressChunk (compressor: Compressor, stored: Uint8Array, size: number, what = 'chunk'): Buffer {
  const out = Buffer.allocUnsafe(size)
  let n: number
  try {
    if (compressor === 'zstd') n = zstd.decompress(out, stored)
    else if (compressor === 'lz4_block') n = lz4.decompressBlock(stored, out, 0, stored.length, 0)
    else if (compressor === 'gzip') {
      const { gunzipSync } = require('node:zlib') as typeof import('node:zlib')
      const g = gunzipSync(stored, { maxOutputLength: size })
      g.copy(out); n = g.length
    } else throw new RafsFormatError(`${what}: unknown compressor ${String(compressor)}`)
  } catch (err) {
    if (err instanceof RafsFormatError) throw err
    throw new RafsFormatError(`${what}: ${compressor} data does not decompress (${(err as Error).message})`, { cause: err })
  }
  if (n !== size) throw new RafsFormatError(`${what}: decompressed to ${n} bytes, metadata says ${size}`)
  return out
}

export function compressorOfCode (code: number): Compressor | undefined {
  return (['none', 'lz4_block', 'gzip', 'zstd'] as const)[code]
}

export function digesterOfCode (code: number): Digester | undefined {
  return (['blake3', 'sha256'] as const)[code]
}
