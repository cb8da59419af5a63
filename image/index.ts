/**
 * @packageDocumentation
 * A Nydus (RAFS) image as an OCI registry holds it (docs/FORMAT.md §17): the media types and annotations, the
 * manifest and config a converted image gets, the bootstrap layer (a deterministic `image/image.boot` tar.gz, written
 * and read back), and the platform a node takes from an index. Below both the writers (`convert/`) and the readers
 * (a node opening an image to mount it, the registry mirror, the snapshotter), so none of them reaches into another.
 *
 * @example
 * ```ts
 * const boot = findBootstrapLayer(manifest)            // the layer carrying the bootstrap, or undefined
 * await extractBootstrap(await client.getBlob(repo, boot.digest), '/var/lib/rafspeer/bootstraps/x.boot', { gzip: true })
 * ```
 */
export {
  NydusMediaTypes, NydusAnnotations, BOOTSTRAP_HISTORY, BOOTSTRAP_TAR_DIR, BOOTSTRAP_TAR_PATH, LEGACY_BOOTSTRAP_TAR_PATH,
  nydusConfig, nydusManifest, findBootstrapLayer, blobDescriptor, bootstrapDescriptor, jsonBytes, sha256Digest,
  type BlobLayer, type BootstrapLayer, type SourceConfig, type HistoryEntry
} from './nydus-layout.js'
export { writeBootstrapLayer, extractBootstrap, BOOTSTRAP_LAYER_MTIME } from './bootstrap-layer.js'
export { defaultPlatform } from './platform.js'
export { NydusLayoutError, type NydusLayoutErrorCode } from './errors.js'
