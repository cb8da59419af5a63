/** Convert and image-check failures: one class, a stable `code`, and the cause kept for callers that branch on it. */
import { RafspeerError } from '../base/index.js'


export type ConvertErrorCode =
  /** a source layer whose media type convert cannot read (names the type and the layer digest) */
  | 'RAFSPEER_ERR_UNSUPPORTED_LAYER'
  /** the source is not an image convert can use (an index without the platform, already a Nydus image, …) */
  | 'RAFSPEER_ERR_CONVERT_SOURCE'
  /** reading or building one source layer failed (names the layer digest; the registry error is the cause) */
  | 'RAFSPEER_ERR_CONVERT_LAYER'
  /** a pushed blob is not in the target after the push: the manifest is not pushed */
  | 'RAFSPEER_ERR_CONVERT_PUSH'
  /** a `prefetchFiles` entry is not an absolute path (checked before anything is downloaded) */
  | 'RAFSPEER_ERR_PREFETCH_LIST'
  /** the image given to check --image is not a RAFS / Nydus image */
  | 'RAFSPEER_ERR_NOT_NYDUS'

export class ConvertError extends RafspeerError<ConvertErrorCode> {}
