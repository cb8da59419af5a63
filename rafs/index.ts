/**
 * @packageDocumentation
 * The RAFS v6 format: build an image (bootstrap + data blob) from a directory or an OCI layer tar stream, merge
 * layers with OCI whiteouts, read any valid RAFS v6 bootstrap (ours or Nydus-built) into an inode tree, map file
 * ranges to chunks, check, inspect and unpack. Byte layouts live in `layout.ts`, declared once.
 *
 * @example
 * ```ts
 * import { buildImage, directorySource, RafsReader } from './rafs/index.js'
 * const built = await buildImage(directorySource('/srv/model'), { bootstrap: 'image.boot', blobDir: 'blobs' })
 * const reader = await RafsReader.open(built.bootstrap)
 * const pieces = reader.mapRange(reader.lookup('/weights.bin'), 0, 1 << 20) // → chunks with blob/ci/digest/offsets
 * ```
 */
export type { RafsImage, RafsInode, RafsBlobInfo, ChunkInfo, FileType } from './model.js'
export { newInode, walk, nameKey, nameBytes, displayName } from './model.js'
export type { ChunkSink, TreeSource } from './source.js'
export {
  RafsFormatError, DEFAULT_CHUNK_SIZE, CompressorCode, DigesterCode, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, decodeSuperBlock,
  type Compressor, type Digester, type SuperBlock
} from './layout.js'
export { digestChunk, compressChunk, decompressChunk } from './codec.js'
export { buildImage, buildFromDirectory, resolvePrefetchPaths, BuildError, type BuildOptions, type BuildResult } from './build.js'
export { BlobWriter } from './blob-writer.js'
export { directorySource } from './source-dir.js'
export { tarSource, TarError } from './source-tar.js'
export { encodeBootstrap, writeBootstrap } from './bootstrap-writer.js'
export { RafsReader, RafsLookupError, type ReaderInode, type MappedPiece } from './reader.js'
export { readBlobTail, fileByteSource, BlobDataReader, type BlobByteSource, type BlobTail } from './blob-reader.js'
export { checkImage, type CheckReport } from './check.js'
export { mergeLayers, mergeBootstraps, MergeError } from './merge.js'
export { dataProfile, LARGE_FILE_BYTES, type DataProfile, type DataProfileOptions } from './data-profile.js'
export { inspectBootstrap, formatInspect, type InspectReport } from './inspect.js'
export { unpackImage, UnpackError, type UnpackResult } from './unpack.js'
export { TarWriter, type TarEntry, type TarEntryType } from './tar-writer.js'
