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
 *
 * @example
 * ```ts
 * const cri = new CriImageClient({ address: '/run/containerd/containerd.sock' })
 * try {
 *   const { imageRef } = await cri.pull('registry.example:5000/app:1', { auth: { username: 'u', password: 'p' } })
 *   console.log(imageRef, await cri.status('registry.example:5000/app:1'))
 * } finally { cri.close() }
 * ```
 */
import { fileURLToPath } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import * as protoLoader from '@grpc/proto-loader'
import { RafspeerError } from '../base/index.js'

export const DEFAULT_CONTAINERD_ADDRESS = '/run/containerd/containerd.sock'
export const DEFAULT_CRI_PULL_TIMEOUT_MS = 10 * 60_000
export const DEFAULT_CRI_TIMEOUT_MS = 30_000
/** containerd's own limit (`grpc.max_recv_message_size`); a long image list can pass grpc-js's 4 MiB default */
const MAX_MESSAGE_BYTES = 16 << 20
const PROTO_DIR = fileURLToPath(new URL('../../snapshotter/proto/', import.meta.url))
const PROTO_FILE = 'cri/runtime/v1/api.proto'

export type CriErrorCode =
  /** no socket at the address, containerd not answering, or containerd without the CRI v1 image service */
  | 'RAFSPEER_ERR_CRI_UNAVAILABLE'
  /** containerd answered a pull with an error (its message is kept) */
  | 'RAFSPEER_ERR_CRI_PULL'
  /** a call outlived its deadline */
  | 'RAFSPEER_ERR_CRI_TIMEOUT'
  /** containerd answered a status, list or remove with an error */
  | 'RAFSPEER_ERR_CRI_FAILED'

export class CriError extends RafspeerError<CriErrorCode> {
  /** the grpc status code containerd answered with, when it answered */
  readonly grpcCode: number | undefined

  constructor (code: CriErrorCode, message: string, options?: { cause?: unknown, grpcCode?: number }) {
    super(code, message, options)
    this.grpcCode = options?.grpcCode
  }
}

/** Registry credentials as CRI carries them; containerd reads them in this order of preference. */
export type CriAuth = (
  | { username: string, password: string }
  /** base64 of `user:password`, as in a docker config.json */
  | { auth: string }
  | { identityToken: string }
  | { registryToken: string }
) & {
  /** when set, containerd uses the credentials only for this registry (`host[:port]` or a URL) */
  serverAddress?: string
}

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

/** An image as CRI reports it. */
export interface CriImage {
  /** containerd: the digest of the image config */
  id: string
  /** `host/repo:tag` names */
  repoTags: string[]
  /** `host/repo@sha256:…` names (the manifest or index digest the image was pulled by) */
  repoDigests: string[]
  /** bytes */
  size: number
}

// the messages as @grpc/proto-loader builds them (camelCase fields, uint64 as number, defaults filled)
interface ImageMessage { id: string, repoTags: string[], repoDigests: string[], size: number }
type Callback<T> = (err: grpc.ServiceError | null, res?: T) => void
type UnaryMethod = (req: unknown, meta: grpc.Metadata, opts: grpc.CallOptions, cb: Callback<unknown>) => grpc.ClientUnaryCall

/** The grpc target of a socket path (`unix:///abs`, `unix:rel`); a `unix:` target passes unchanged. */
function grpcTarget (address: string): string {
  if (address.startsWith('unix:')) return address
  return address.startsWith('/') ? `unix://${address}` : `unix:${address}`
}

const toImage = (m: ImageMessage): CriImage => ({ id: m.id, repoTags: [...m.repoTags], repoDigests: [...m.repoDigests], size: m.size })

export class CriImageClient {
  /** the socket, as given */
  readonly address: string
  private readonly client: grpc.Client
  private readonly timeoutMs: number
  private readonly pullTimeoutMs: number

  constructor (init: CriImageClientInit = {}) {
    this.address = init.address ?? DEFAULT_CONTAINERD_ADDRESS
    this.timeoutMs = init.timeoutMs ?? DEFAULT_CRI_TIMEOUT_MS
    this.pullTimeoutMs = init.pullTimeoutMs ?? DEFAULT_CRI_PULL_TIMEOUT_MS
    const definition = protoLoader.loadSync(PROTO_FILE, {
      includeDirs: [PROTO_DIR], keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true
    })
    const pkg = grpc.loadPackageDefinition(definition) as unknown as { runtime: { v1: { ImageService: grpc.ServiceClientConstructor } } }
    this.client = new pkg.runtime.v1.ImageService(grpcTarget(this.address), grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
      'grpc.max_send_message_length': MAX_MESSAGE_BYTES
    })
  }

  /**
   * Pulls `image` through CRI: containerd resolves it with its registry configuration (`config_path` hosts.toml),
   * fetches it and unpacks it into the CRI snapshotter. Resolves with containerd's image reference (the image id).
   */
  async pull (image: string, opts: CriPullOptions = {}): Promise<{ imageRef: string }> {
    const req: Record<string, unknown> = { image: { image } }
    if (opts.auth !== undefined) req.auth = { ...opts.auth }
    const res = await this.call<{ imageRef: string }>('PullImage', req, image, opts.timeoutMs ?? this.pullTimeoutMs, opts.signal)
    return { imageRef: res.imageRef }
  }

  /** The image named by `image` (a reference or an id), or undefined when containerd's CRI does not have it. */
  async status (image: string, opts: CriCallOptions = {}): Promise<CriImage | undefined> {
    const res = await this.call<{ image: ImageMessage | null }>('ImageStatus', { image: { image }, verbose: false }, image,
      opts.timeoutMs ?? this.timeoutMs, opts.signal)
    return res.image === null || res.image === undefined ? undefined : toImage(res.image)
  }

  /** Every image CRI knows (those of containerd's `k8s.io` namespace). */
  async list (opts: CriCallOptions = {}): Promise<CriImage[]> {
    const res = await this.call<{ images: ImageMessage[] }>('ListImages', {}, undefined, opts.timeoutMs ?? this.timeoutMs, opts.signal)
    return res.images.map(toImage)
  }

  /** Removes `image` (a reference or an id); an absent image is not an error. */
  async remove (image: string, opts: CriCallOptions = {}): Promise<void> {
    await this.call('RemoveImage', { image: { image } }, image, opts.timeoutMs ?? this.timeoutMs, opts.signal)
  }

  /** Closes the channel; calls in flight fail. */
  close (): void {
    this.client.close()
  }

  private async call<T> (method: string, req: unknown, image: string | undefined, timeoutMs: number, signal: AbortSignal | undefined): Promise<T> {
    signal?.throwIfAborted()
    const fn = (this.client as unknown as Record<string, UnaryMethod>)[method]!.bind(this.client)
    return await new Promise<T>((resolve, reject) => {
      const onAbort = (): void => call.cancel()
      const call = fn(req, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => {
        signal?.removeEventListener('abort', onAbort)
        if (err === null) { resolve(res as T); return }
        // a cancel is ours only: the caller branches on the reason it aborted with
        if (signal?.aborted === true) { reject(signal.reason); return }
        reject(this.describe(err, method, image, timeoutMs))
      })
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  private describe (err: grpc.ServiceError, method: string, image: string | undefined, timeoutMs: number): CriError {
    const at = `containerd at ${this.address}`
    const details = err.details !== '' ? err.details : err.message
    const opts = { cause: err, grpcCode: err.code }
    // a status containerd sent carries its response metadata; grpc-js's own (no connection, connection lost) none
    const answered = Object.keys(err.metadata?.getMap() ?? {}).length > 0
    if (err.code === grpc.status.UNAVAILABLE && !answered) {
      const hint = /ENOENT/.test(details)
        ? `no socket at ${this.address}: is containerd running, and is this its grpc.address?`
        : /EACCES|EPERM/.test(details)
          ? `permission denied on ${this.address}: containerd's socket is root's`
          : 'is containerd running?'
      return new CriError('RAFSPEER_ERR_CRI_UNAVAILABLE', `cannot reach ${at}: ${details} (${hint})`, opts)
    }
    switch (err.code) {
      case grpc.status.UNIMPLEMENTED:
        return new CriError('RAFSPEER_ERR_CRI_UNAVAILABLE', `${at} has no CRI v1 image service (${details}); is the cri ` +
          'plugin disabled? Remove "cri" / "io.containerd.grpc.v1.cri" from disabled_plugins in its config.toml ' +
          '(containerd 1.6 or newer serves CRI v1)', opts)
      case grpc.status.DEADLINE_EXCEEDED:
        return new CriError('RAFSPEER_ERR_CRI_TIMEOUT', `${method}${image !== undefined ? ` of ${image}` : ''} on ${at} ` +
          `did not finish within ${Math.round(timeoutMs / 1000)} s`, opts)
      default: {
        // containerd's own UNAVAILABLE: something it dialled is not there (a proxy snapshotter's socket, most often)
        const hint = err.code === grpc.status.UNAVAILABLE ? ' (a service containerd needs did not answer: is the snapshotter running?)' : ''
        if (method === 'PullImage') {
          return new CriError('RAFSPEER_ERR_CRI_PULL', `${at} could not pull ${image ?? ''}: ${details}${hint}`, opts)
        }
        return new CriError('RAFSPEER_ERR_CRI_FAILED', `${method}${image !== undefined ? ` of ${image}` : ''} on ${at} failed: ` +
          `${grpc.status[err.code] ?? err.code}: ${details}${hint}`, opts)
      }
    }
  }
}
