/**
 * @packageDocumentation
 * A client of containerd's CRI image service: pull (so that a remote snapshotter gets the layer labels only a CRI
 * pull passes), status, list and remove, over containerd's grpc socket. It is what `rafspeer rpull` runs on a
 * container's start path, so it loads nothing but Node's own `node:http2` (`grpc-unary.ts`) and encodes its few
 * protobuf messages itself (`messages.ts`, `protobuf.ts`).
 *
 * @example
 * ```ts
 * import { CriImageClient } from '../cri/index.js'
 * const cri = new CriImageClient({ address: '/run/containerd/containerd.sock' })
 * try {
 *   const { imageRef } = await cri.pull('registry.example:5000/app:1', { auth: { username: 'u', password: 'p' } })
 *   console.log(imageRef, await cri.status('registry.example:5000/app:1'))
 * } finally { cri.close() }
 * ```
 */
export {
  CriImageClient, DEFAULT_CONTAINERD_ADDRESS, DEFAULT_CRI_PULL_TIMEOUT_MS, DEFAULT_CRI_TIMEOUT_MS,
  type CriImageClientInit, type CriCallOptions, type CriPullOptions
} from './client.js'
export { CriError, type CriErrorCode } from './errors.js'
export type { CriAuth, CriImage } from './messages.js'
export { GrpcStatus, grpcStatusName } from './grpc-unary.js'
