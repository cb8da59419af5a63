/**
 * A client of containerd's CRI image service (`runtime.v1.ImageService` on containerd's grpc socket), which is how
 * `rafspeer rpull` pulls. Only a CRI pull hands a remote snapshotter the labels it needs (the image reference, the
 * manifest and layer digests, with `disable_snapshot_annotations = false`) and unpacks into the snapshotter the CRI
 * plugin is configured with; `ctr images pull --snapshotter` of containerd 1.6 passes none of them. The images land
 * in CRI's namespace, `k8s.io`, which containerd fixes and the request cannot choose.
 *
 * Every call has a deadline (a pull: 10 minutes unless told otherwise; the others 30 s), sent to containerd too,
 * and honours an `AbortSignal` by cancelling the call, which cancels containerd's work on it. Failures are
 * {@link CriError}s whose message says what to fix.
 */
import { CriError } from './errors.js'
import { GrpcStatus, GrpcUnaryChannel, grpcStatusName, type UnaryResult } from './grpc-unary.js'
import {
  IMAGE_SERVICE, decodeImageStatusResponse, decodeListImagesResponse, decodePullImageResponse, encodeImageStatusRequest,
  encodeListImagesRequest, encodePullImageRequest, encodeRemoveImageRequest, type CriAuth, type CriImage
} from './messages.js'

export const DEFAULT_CONTAINERD_ADDRESS = '/run/containerd/containerd.sock'
export const DEFAULT_CRI_PULL_TIMEOUT_MS = 10 * 60_000
export const DEFAULT_CRI_TIMEOUT_MS = 30_000

export interface CriImageClientInit {
  /** containerd's grpc socket: a path or `unix://path` (default {@link DEFAULT_CONTAINERD_ADDRESS}) */
  address?: string
  /** deadline of status, list and remove (default 30 s) */
  timeoutMs?: number
  /** deadline of a pull (default 10 min) */
  pullTimeoutMs?: number
}

export interface CriCallOptions {
  signal?: AbortSignal
  /** this call's deadline instead of the client's */
  timeoutMs?: number
}

export interface CriPullOptions extends CriCallOptions {
  auth?: CriAuth
}

/** The socket path of an address (`unix:///abs`, `unix:rel` or a path). */
function socketPath (address: string): string {
  if (address.startsWith('unix://')) return address.slice('unix://'.length)
  if (address.startsWith('unix:')) return address.slice('unix:'.length)
  return address
}

type Method = 'PullImage' | 'ImageStatus' | 'ListImages' | 'RemoveImage'

export class CriImageClient {
  /** the socket, as given */
  readonly address: string
  private readonly channel: GrpcUnaryChannel
  private readonly timeoutMs: number
  private readonly pullTimeoutMs: number

  constructor (init: CriImageClientInit = {}) {
    this.address = init.address ?? DEFAULT_CONTAINERD_ADDRESS
    this.timeoutMs = init.timeoutMs ?? DEFAULT_CRI_TIMEOUT_MS
    this.pullTimeoutMs = init.pullTimeoutMs ?? DEFAULT_CRI_PULL_TIMEOUT_MS
    this.channel = new GrpcUnaryChannel(socketPath(this.address))
  }

  /**
   * Pulls `image` through CRI: containerd resolves it with its registry configuration (`config_path` hosts.toml),
   * fetches it and unpacks it into the CRI snapshotter. Resolves with containerd's image reference (the image id).
   */
  async pull (image: string, opts: CriPullOptions = {}): Promise<{ imageRef: string }> {
    const body = await this.call('PullImage', encodePullImageRequest(image, opts.auth), image, opts.timeoutMs ?? this.pullTimeoutMs, opts.signal)
    return decodePullImageResponse(body)
  }

  /** The image named by `image` (a reference or an id), or undefined when containerd's CRI does not have it. */
  async status (image: string, opts: CriCallOptions = {}): Promise<CriImage | undefined> {
    const body = await this.call('ImageStatus', encodeImageStatusRequest(image), image, opts.timeoutMs ?? this.timeoutMs, opts.signal)
    return decodeImageStatusResponse(body)
  }

  /** Every image CRI knows (those of containerd's `k8s.io` namespace). */
  async list (opts: CriCallOptions = {}): Promise<CriImage[]> {
    const body = await this.call('ListImages', encodeListImagesRequest(), undefined, opts.timeoutMs ?? this.timeoutMs, opts.signal)
    return decodeListImagesResponse(body)
  }

  /** Removes `image` (a reference or an id); an absent image is not an error. */
  async remove (image: string, opts: CriCallOptions = {}): Promise<void> {
    await this.call('RemoveImage', encodeRemoveImageRequest(image), image, opts.timeoutMs ?? this.timeoutMs, opts.signal)
  }

  /** Closes the channel; calls in flight fail. */
  close (): void {
    this.channel.close()
  }

  private async call (method: Method, req: Buffer, image: string | undefined, timeoutMs: number, signal: AbortSignal | undefined): Promise<Buffer> {
    // an abort rejects with the caller's own reason: the caller branches on it
    const r = await this.channel.call(`/${IMAGE_SERVICE}/${method}`, req, { timeoutMs, ...(signal !== undefined ? { signal } : {}) })
    if (r.ok) return r.body
    throw this.describe(r, method, image, timeoutMs)
  }

  private describe (err: Extract<UnaryResult, { ok: false }>, method: Method, image: string | undefined, timeoutMs: number): CriError {
    const at = `containerd at ${this.address}`
    const details = err.details
    const opts = { cause: err.cause ?? new Error(`${grpcStatusName(err.code)}: ${details}`), grpcCode: err.code }
    if (err.code === GrpcStatus.UNAVAILABLE && !err.answered) {
      const code = (err.cause as { code?: string } | undefined)?.code ?? ''
      const hint = code === 'ENOENT' || /ENOENT/.test(details)
        ? `no socket at ${this.address}: is containerd running, and is this its grpc.address?`
        : code === 'EACCES' || code === 'EPERM' || /EACCES|EPERM/.test(details)
          ? `permission denied on ${this.address}: containerd's socket is root's`
          : 'is containerd running?'
      return new CriError('RAFSPEER_ERR_CRI_UNAVAILABLE', `cannot reach ${at}: ${details} (${hint})`, opts)
    }
    switch (err.code) {
      case GrpcStatus.UNIMPLEMENTED:
        return new CriError('RAFSPEER_ERR_CRI_UNAVAILABLE', `${at} has no CRI v1 image service (${details}); is the cri ` +
          'plugin disabled? Remove "cri" / "io.containerd.grpc.v1.cri" from disabled_plugins in its config.toml ' +
          '(containerd 1.6 or newer serves CRI v1)', opts)
      case GrpcStatus.DEADLINE_EXCEEDED:
        return new CriError('RAFSPEER_ERR_CRI_TIMEOUT', `${method}${image !== undefined ? ` of ${image}` : ''} on ${at} ` +
          `did not finish within ${Math.round(timeoutMs / 1000)} s`, opts)
      default: {
        // containerd's own UNAVAILABLE: something it dialled is not there (a proxy snapshotter's socket, most often)
        const hint = err.code === GrpcStatus.UNAVAILABLE ? ' (a service containerd needs did not answer: is the snapshotter running?)' : ''
        if (method === 'PullImage') {
          return new CriError('RAFSPEER_ERR_CRI_PULL', `${at} could not pull ${image ?? ''}: ${details}${hint}`, opts)
        }
        return new CriError('RAFSPEER_ERR_CRI_FAILED', `${method}${image !== undefined ? ` of ${image}` : ''} on ${at} failed: ` +
          `${grpcStatusName(err.code)}: ${details}${hint}`, opts)
      }
    }
  }
}
