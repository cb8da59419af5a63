/** The CRI client's one error class; callers branch on its `code`. */
import { RafspeerError } from '../base/index.js'

export type CriErrorCode =
  /** no socket at the address, containerd not answering, or containerd without the CRI v1 image service */
  | 'RAFSPEER_ERR_CRI_UNAVAILABLE'
  /** containerd answered a pull with an error (its message is kept) */
  | 'RAFSPEER_ERR_CRI_PULL'
  /** a call outlived its deadline */
  | 'RAFSPEER_ERR_CRI_TIMEOUT'
  /** containerd answered a status, list or remove with an error, or with bytes that are not the message asked for */
  | 'RAFSPEER_ERR_CRI_FAILED'

export class CriError extends RafspeerError<CriErrorCode> {
  /** the grpc status code containerd answered with, when it answered */
  readonly grpcCode: number | undefined

  constructor (code: CriErrorCode, message: string, options?: { cause?: unknown, grpcCode?: number }) {
    super(code, message, options)
    this.grpcCode = options?.grpcCode
  }
}
