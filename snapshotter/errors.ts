/**
 * The snapshotter's errors. containerd branches on the gRPC status of a snapshotter's answer (`errdefs.FromGRPC`:
 * NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, INVALID_ARGUMENT, UNAVAILABLE), so each code here stands for one
 * of those classes and the gRPC layer maps it with {@link grpcStatusOf}.
 */
import { RafspeerError } from '../base/index.js'
import { GrpcStatus } from '../cri/index.js'

export type SnapshotterErrorCode =
  /** no snapshot by that key or name (or a parent that is missing) */
  | 'RAFSPEER_ERR_SNAPSHOT_NOT_FOUND'
  /** the key or name is taken; also the answer to a Prepare whose layer rafspeer serves (containerd then Stats it) */
  | 'RAFSPEER_ERR_SNAPSHOT_ALREADY_EXISTS'
  /** the snapshot is of the wrong kind for the call (commit of a view, remove of a parent, mounts of a committed) */
  | 'RAFSPEER_ERR_SNAPSHOT_FAILED_PRECONDITION'
  /** a bad request: oversized label, unknown update path, malformed filter, non-committed parent */
  | 'RAFSPEER_ERR_SNAPSHOT_INVALID_ARGUMENT'
  /** a lazily served layer could not be mounted (registry gone, corrupt bootstrap) */
  | 'RAFSPEER_ERR_SNAPSHOT_MOUNT'
  /** the store is not started, stopping, or its metadata is held by another process */
  | 'RAFSPEER_ERR_SNAPSHOT_UNAVAILABLE'
  /** the gRPC service cannot listen on its socket */
  | 'RAFSPEER_ERR_SNAPSHOT_LISTEN'

export class SnapshotterError extends RafspeerError<SnapshotterErrorCode> {}

/** gRPC status codes, as the CRI client spells them (free of grpc-js) */
export const GrpcCode = GrpcStatus

const STATUS_OF_CODE: Record<SnapshotterErrorCode, number> = {
  RAFSPEER_ERR_SNAPSHOT_NOT_FOUND: GrpcCode.NOT_FOUND,
  RAFSPEER_ERR_SNAPSHOT_ALREADY_EXISTS: GrpcCode.ALREADY_EXISTS,
  RAFSPEER_ERR_SNAPSHOT_FAILED_PRECONDITION: GrpcCode.FAILED_PRECONDITION,
  RAFSPEER_ERR_SNAPSHOT_INVALID_ARGUMENT: GrpcCode.INVALID_ARGUMENT,
  // containerd has no class for it: UNKNOWN carries the message to the user (ctr, kubelet events)
  RAFSPEER_ERR_SNAPSHOT_MOUNT: GrpcCode.UNKNOWN,
  RAFSPEER_ERR_SNAPSHOT_UNAVAILABLE: GrpcCode.UNAVAILABLE,
  RAFSPEER_ERR_SNAPSHOT_LISTEN: GrpcCode.UNAVAILABLE
}

/**
 * The gRPC status for a thrown value: our codes by class; another rafspeer error UNKNOWN; an abort CANCELLED;
 * anything else (a bug, an unexpected errno) INTERNAL. The message always names the code it came from.
 */
export function grpcStatusOf (err: unknown): { code: number, details: string } {
  if (err instanceof SnapshotterError) return { code: STATUS_OF_CODE[err.code] ?? GrpcCode.UNKNOWN, details: err.message }
  if (err instanceof RafspeerError) return { code: GrpcCode.UNKNOWN, details: `${err.code}: ${err.message}` }
  if (err instanceof Error && err.name === 'AbortError') return { code: GrpcCode.CANCELLED, details: err.message }
  const e = err as NodeJS.ErrnoException
  const details = e instanceof Error ? (e.code !== undefined && !e.message.includes(e.code) ? `${e.code}: ${e.message}` : e.message) : String(err)
  return { code: GrpcCode.INTERNAL, details: `rafspeer snapshotter: ${details}` }
}
