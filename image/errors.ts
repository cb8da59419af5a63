import { RafspeerError } from '../base/index.js'

export type NydusLayoutErrorCode =
  /** a bootstrap that changed while its layer was packed */
  | 'RAFSPEER_ERR_CONVERT_LAYER'
  /** a layer or manifest that is not the Nydus layout (no bootstrap where one must be) */
  | 'RAFSPEER_ERR_NOT_NYDUS'

/** The Nydus image layout was not met, writing or reading. */
export class NydusLayoutError extends RafspeerError<NydusLayoutErrorCode> {}
