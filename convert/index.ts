/**
 * @packageDocumentation
 * OCI image ⇄ RAFS (Nydus) image in a registry. {@link convertImage} streams every layer of an OCI image from a
 * registry into RAFS data blobs (one per layer), merges the layers into one bootstrap and pushes the result in the
 * Nydus layout (`docs/FORMAT.md` §17), manifest last. {@link checkRemoteImage} verifies such an image
 * in place (manifest → bootstrap → every blob's ToC, ci array and chunk digests → config) and, given the source
 * image, compares the two trees file by file.
 *
 * @example
 * ```ts
 * import { convertImage, checkRemoteImage } from './convert/index.js'
 * const report = await convertImage('127.0.0.1:5000/app:1.0', '127.0.0.1:5000/app:1.0-rafs', {
 *   prefetchFiles: ['/usr/bin/app', '/usr/lib/libapp.so'], // hottest first: the merged bootstrap's prefetch table
 *   onProgress: (ev) => { if (ev.type === 'layer') console.log(ev.index, ev.downloaded, ev.chunks) }
 * })
 * const check = await checkRemoteImage('127.0.0.1:5000/app:1.0-rafs', { source: '127.0.0.1:5000/app:1.0' })
 * if (!check.ok) console.error(check.errors.join('\n'))
 * ```
 */
export { convertImage } from './convert.js'
export { checkRemoteImage } from './image-check.js'
export { publishDirectory, type PublishOptions, type PublishResult } from './publish.js'
export { ConvertError, type ConvertErrorCode } from './errors.js'
export { layerCompression, type LayerCompression } from './layer-stream.js'
export type { PushOutcome } from './push.js'

export type {
  ConvertOptions, ConvertProgress, LayerReport, ConvertReport, CheckImageOptions, CheckedBlob, CheckImageReport
} from './types.js'
