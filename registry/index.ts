/**
 * @packageDocumentation
 * The OCI distribution client of rafspeer, on undici: `/v2/` ping; anonymous, Basic and Bearer auth (credentials
 * explicit or from Docker's `config.json`, tokens cached per host and scope); manifests and indexes in OCI and
 * Docker v2 media types with platform selection; blobs as verified, resumable streams or as checked byte ranges;
 * redirects followed without leaking `Authorization`; retries with backoff on 5xx, 429 (`Retry-After`) and resets;
 * monolithic and chunked uploads, cross-repository mounts and manifest PUT. Every byte fetched by digest is hashed.
 *
 * Failures are {@link RegistryError}s with a stable `code` (`RAFSPEER_ERR_REGISTRY_AUTH`, `…_NOT_FOUND`,
 * `RAFSPEER_ERR_DIGEST_MISMATCH`, `…_RANGE`, `…_TOO_LARGE`, `…_UNSUPPORTED_MEDIA_TYPE`, `…_MANIFEST_INVALID`,
 * `…_HTTP`, `…_NETWORK`, `…_TRUNCATED`, `…_UPLOAD`) and a message naming the registry, repository and digest or tag.
 *
 * @example
 * ```ts
 * import { RegistryClient, isIndex } from './registry/index.js'
 * import { pipeline } from 'node:stream/promises'
 * import { createWriteStream } from 'node:fs'
 *
 * const client = new RegistryClient({ plainHttp: 'auto' })   // http for 127.0.0.1/localhost, https elsewhere
 * const m = await client.getManifest('127.0.0.1:5000/app:1.0', { platform: 'linux/amd64' })
 * if (!isIndex(m.json)) {
 *   const layer = m.json.layers[0]!
 *   await pipeline(await client.getBlob('127.0.0.1:5000/app', layer.digest), createWriteStream('layer.tgz'))
 *   const head = await client.fetchBlobRange('127.0.0.1:5000/app', layer.digest, 0, 511)  // Range GET, 206 checked
 * }
 * await client.pushBlob('127.0.0.1:5000/copy', digest, size, '/tmp/blob', { chunked: true })
 * await client.putManifest('127.0.0.1:5000/copy:1.0', m.mediaType, m.bytes)             // manifest last
 * console.log(client.counters.snapshot())                                                 // bytes per host
 * ```
 */
export {
  RegistryClient, DEFAULT_TIMEOUT_MS, DEFAULT_RETRIES, DEFAULT_USER_AGENT,
  type RegistryClientInit, type CallOptions, type GetManifestOptions, type ManifestResult, type RawManifest, type PingResult,
  type PushBlobResult
} from './client.js'
export type { BlobStream, RangeStream } from './blob-download.js'
export { parseContentRange, MAX_RANGE_BYTES, type ContentRange } from './blob-download.js'
export { DEFAULT_CHUNK_SIZE, type BlobSource, type UploadOptions } from './blob-upload.js'
export { TrafficCounters, preloadHttpClient } from './transport.js'
export {
  parseWwwAuthenticate, loadDockerConfigCredentials, defaultDockerConfigPath, repositoryScope, normalizeConfigKey,
  type Challenge, type Credentials
} from './auth.js'
export {
  MediaTypes, MANIFEST_MEDIA_TYPES, MAX_MANIFEST_BYTES, isIndex, isIndexMediaType, parsePlatform, formatPlatform,
  selectPlatform, type Descriptor, type ImageIndex, type ImageManifest, type Platform
} from './manifest.js'
export {
  parseReference, formatReference, toReference, registryEndpoint, isLoopbackHost, validateDigest, validateRepository,
  validateTag, DOCKER_HUB, DOCKER_HUB_ENDPOINT, type ImageReference
} from './reference.js'
export {
  RegistryError, RegistryAuthError, RegistryNotFoundError, DigestMismatchError, RegistryRangeError,
  RegistryTooLargeError, UnsupportedMediaTypeError, ManifestInvalidError, RegistryHttpError, RegistryNetworkError,
  RegistryTruncatedError, RegistryUploadError, InvalidReferenceError, type RegistryErrorCode, type RegistryErrorContext
} from './errors.js'
export {
  startRegistryServer, DistributionError, type DistributionErrorCode, type RegistryServer, type RegistryServerOptions,
  type RegistryCounters, type RepoCounters, type AuthOptions
} from './server.js'
