/**
 * The snapshot store as containerd's proxy plugin sees it: gRPC service `containerd.services.snapshots.v1.Snapshots`
 * on a Unix socket, declared to containerd with
 *
 * ```toml
 * [proxy_plugins.rafspeer]
 *   type = "snapshot"
 *   address = "/run/rafspeer/snapshotter.sock"
 * ```
 *
 * Errors are answered with the status containerd's `errdefs.FromGRPC` turns back into its error classes
 * (see {@link grpcStatusOf}); a malformed request is INVALID_ARGUMENT, never a crash. The request's `snapshotter`
 * field (the name containerd knows us by) is ignored.
 *
 * @example
 * ```ts
 * const svc = await startSnapshotService({ snapshots, logger }, { address: '/run/rafspeer/snapshotter.sock' })
 * // …
 * await svc.stop()
 * ```
 */
import { chmod, unlink } from 'node:fs/promises'
import { resolve } from 'node:path'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import * as protoLoader from '@grpc/proto-loader'
import { claimUnixSocket, describeError, silentLogger, type ComponentLogger } from '../base/index.js'
import { GrpcCode, SnapshotterError, grpcStatusOf } from './errors.js'
import type { SnapshotStore } from './snapshots.js'
import type { SnapshotInfo, SnapshotKind, SnapshotMount } from './types.js'

export const DEFAULT_SNAPSHOTTER_SOCKET = '/run/rafspeer/snapshotter.sock'
/** dist/snapshotter/x.js and snapshotter/x.ts both reach the repository's snapshotter/proto */
export const PROTO_DIR = fileURLToPath(new URL('../../snapshotter/proto/', import.meta.url))
export const SNAPSHOTS_PROTO = 'containerd/services/snapshots/v1/snapshots.proto'
/** infos per List message: containerd reads them as they come, a node may hold thousands */
const LIST_BATCH = 100
const STOP_GRACE_MS = 2_000

export const PROTO_LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_DIR]
}

const KIND_TO_PROTO: Record<SnapshotKind, string> = { view: 'VIEW', active: 'ACTIVE', committed: 'COMMITTED' }

/** The service definition and the client constructor, for the server here and for tests and tools. */
export function loadSnapshotsService (): { service: grpc.ServiceDefinition, Client: grpc.ServiceClientConstructor } {
  const def = protoLoader.loadSync(SNAPSHOTS_PROTO, PROTO_LOADER_OPTIONS)
  const Client = (grpc.loadPackageDefinition(def) as unknown as {
    containerd: { services: { snapshots: { v1: { Snapshots: grpc.ServiceClientConstructor } } } }
  }).containerd.services.snapshots.v1.Snapshots
  return { service: Client.service, Client }
}

export interface ProtoTimestamp { seconds: number, nanos: number }
export interface ProtoInfo {
  name: string
  parent: string
  kind: string
  createdAt: ProtoTimestamp | null
  updatedAt: ProtoTimestamp | null
  labels: Record<string, string>
}

const timestamp = (d: Date): ProtoTimestamp => {
  const ms = d.getTime()
  return { seconds: Math.floor(ms / 1000), nanos: (ms - Math.floor(ms / 1000) * 1000) * 1_000_000 }
}

export function infoToProto (i: SnapshotInfo): ProtoInfo {
  return { name: i.name, parent: i.parent, kind: KIND_TO_PROTO[i.kind], createdAt: timestamp(i.createdAt), updatedAt: timestamp(i.updatedAt), labels: i.labels }
}

const mountsToProto = (ms: SnapshotMount[]): { mounts: Array<SnapshotMount & { target: string }> } =>
  ({ mounts: ms.map(m => ({ type: m.type, source: m.source, target: '', options: m.options })) })

const invalid = (msg: string): SnapshotterError => new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_INVALID_ARGUMENT', msg)

/** the request's field as a string; proto-loader fills defaults, but a broken peer or a test may not */
function str (req: Record<string, unknown>, field: string, required = false): string {
  const v = req[field] ?? ''
  if (typeof v !== 'string') throw invalid(`${field} must be a string`)
  if (required && v === '') throw invalid(`${field} must not be empty`)
  return v
}

function labelsOf (v: unknown, where = 'labels'): Record<string, string> {
  if (v === undefined || v === null) return {}
  if (typeof v !== 'object' || Array.isArray(v)) throw invalid(`${where} must be a map of strings`)
  for (const [k, x] of Object.entries(v)) if (typeof x !== 'string') throw invalid(`${where}[${JSON.stringify(k)}] must be a string`)
  return v as Record<string, string>
}

export interface SnapshotServiceComponents {
  snapshots: SnapshotStore
  logger?: ComponentLogger
}

export interface SnapshotServiceInit {
  /** the Unix socket path; default {@link DEFAULT_SNAPSHOTTER_SOCKET} */
  address?: string
}

export interface SnapshotService {
  /** the socket path */
  address: string
  /** finishes the calls in flight for a moment, then cuts the rest; removes the socket */
  stop: () => Promise<void>
}

/** Claims `path` for a server of the snapshotter (`what` names it in errors): a stale socket is replaced, a live one refused. */
export async function prepareSocket (path: string, what = 'the snapshotter socket'): Promise<void> {
  await claimUnixSocket(path, p => {
    const message = {
      mkdir: `cannot create the directory of ${what} ${path}: ${p.detail}`,
      inspect: `cannot inspect ${path}: ${p.detail}`,
      'not-socket': p.detail,
      live: `another server is listening on ${path} (${what}): stop it (another rafspeer snapshotter?) or choose another socket`,
      unknown: `cannot tell whether a server listens on ${path} (${p.detail})`,
      unlink: `cannot remove the stale socket ${path}: ${p.detail}`
    }[p.kind]
    return new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_LISTEN', message, { cause: p.cause })
  })
}

type Handler = (req: Record<string, unknown>, signal: AbortSignal) => Promise<unknown>

/** Starts the service; rejects with RAFSPEER_ERR_SNAPSHOT_LISTEN when the socket is taken or cannot be made. */
export async function startSnapshotService (components: SnapshotServiceComponents, init: SnapshotServiceInit = {}): Promise<SnapshotService> {
  const { snapshots } = components
  const log = (components.logger ?? silentLogger).forComponent('rafspeer:snapshotter-grpc')
  const address = resolve(init.address ?? DEFAULT_SNAPSHOTTER_SOCKET)
  const { service } = loadSnapshotsService()

  const report = (method: string, started: number, err?: unknown): { code: number, details: string } | undefined => {
    const ms = (performance.now() - started).toFixed(1)
    if (err === undefined) { log.debug('%s ok in %s ms', method, ms); return undefined }
    const st = grpcStatusOf(err)
    // NOT_FOUND and ALREADY_EXISTS are how containerd asks questions (Stat before use, remote layer claims)
    const expected = st.code === GrpcCode.NOT_FOUND || st.code === GrpcCode.ALREADY_EXISTS || st.code === GrpcCode.CANCELLED
    if (expected) log.debug('%s -> %d in %s ms: %s', method, st.code, ms, st.details)
    else log.warn('%s failed (status %d) in %s ms: %s', method, st.code, ms, st.details)
    return st
  }

  const unary = (method: string, fn: Handler): grpc.handleUnaryCall<Record<string, unknown>, unknown> => (call, callback) => {
    const started = performance.now()
    const ctrl = new AbortController()
    call.once('cancelled', () => ctrl.abort())
    // a throw before the first await (a bad request) becomes a rejection too
    Promise.resolve().then(async () => await fn(call.request ?? {}, ctrl.signal)).then(
      (res) => { report(method, started); callback(null, res) },
      (err) => { callback(report(method, started, err)!) }
    )
  }

  const impl: grpc.UntypedServiceImplementation = {
    Prepare: unary('Prepare', async (req, signal) =>
      mountsToProto(await snapshots.prepare(str(req, 'key', true), str(req, 'parent'), labelsOf(req.labels), { signal }))),
    View: unary('View', async (req, signal) =>
      mountsToProto(await snapshots.view(str(req, 'key', true), str(req, 'parent'), labelsOf(req.labels), { signal }))),
    Mounts: unary('Mounts', async (req, signal) => mountsToProto(await snapshots.mounts(str(req, 'key', true), { signal }))),
    Commit: unary('Commit', async (req, signal) => {
      await snapshots.commit(str(req, 'name', true), str(req, 'key', true), labelsOf(req.labels), { signal })
      return {}
    }),
    Remove: unary('Remove', async (req, signal) => {
      await snapshots.remove(str(req, 'key', true), { signal })
      return {}
    }),
    Stat: unary('Stat', async (req) => ({ info: infoToProto(await snapshots.stat(str(req, 'key', true))) })),
    Update: unary('Update', async (req) => {
      const info = req.info as Record<string, unknown> | null | undefined
      if (info === null || info === undefined || typeof info !== 'object') throw invalid('update without info')
      const mask = req.updateMask as { paths?: unknown } | null | undefined
      const paths = mask?.paths ?? []
      if (!Array.isArray(paths) || paths.some(p => typeof p !== 'string')) throw invalid('update_mask.paths must be strings')
      const updated = await snapshots.update({ name: str(info, 'name', true), labels: labelsOf(info.labels, 'info.labels') }, paths as string[])
      return { info: infoToProto(updated) }
    }),
    Usage: unary('Usage', async (req, signal) => await snapshots.usage(str(req, 'key', true), { signal })),
    Cleanup: unary('Cleanup', async (_req, signal) => {
      await snapshots.cleanup({ signal })
      return {}
    }),
    List: (call: grpc.ServerWritableStream<Record<string, unknown>, unknown>) => {
      const started = performance.now()
      const gone = new AbortController()
      call.once('cancelled', () => gone.abort())
      const run = async (): Promise<void> => {
        const filters = (call.request?.filters ?? []) as unknown
        if (!Array.isArray(filters) || filters.some(f => typeof f !== 'string')) throw invalid('filters must be strings')
        const infos = await snapshots.list(filters as string[])
        log.debug('List %j: %d snapshots', filters, infos.length)
        for (let i = 0; i < infos.length; i += LIST_BATCH) {
          if (!call.write({ info: infos.slice(i, i + LIST_BATCH).map(infoToProto) })) await once(call, 'drain', { signal: gone.signal })
        }
        call.end()
      }
      Promise.resolve().then(run).then(
        () => { report('List', started) },
        (err) => {
          // a client that went away is told nothing more
          const st = report('List', started, gone.signal.aborted ? new DOMException('the client went away', 'AbortError') : err)!
          if (!gone.signal.aborted) call.emit('error', st)
        }
      )
    }
  }

  await prepareSocket(address)
  const server = new grpc.Server()
  server.addService(service, impl)
  try {
    await new Promise<void>((resolve, reject) => {
      server.bindAsync(`unix://${address}`, grpc.ServerCredentials.createInsecure(), (err) => { err === null ? resolve() : reject(err) })
    })
    // containerd connects as root; nobody else has business on this socket
    await chmod(address, 0o600)
  } catch (err) {
    server.forceShutdown()
    throw new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_LISTEN', `cannot listen on ${address}: ${describeError(err)}`, { cause: err })
  }
  log.info('containerd snapshots service listening on %s', address)

  let stopped: Promise<void> | undefined
  const stop = async (): Promise<void> => {
    stopped ??= (async () => {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => { server.forceShutdown(); resolve() }, STOP_GRACE_MS)
        server.tryShutdown(() => { clearTimeout(timer); resolve() })
      })
      await unlink(address).catch(() => {})
      log.info('containerd snapshots service on %s stopped', address)
    })()
    await stopped
  }
  return { address, stop }
}
