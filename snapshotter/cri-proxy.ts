/**
 * The CRI image service in front of containerd's, so that registry credentials a CRI pull carries (Kubernetes'
 * imagePullSecrets, `rafspeer rpull --user`) also serve the lazy reads of that image. containerd uses a pull's
 * credentials for the pull only and hands a remote snapshotter none of them; so, like nydus-snapshotter's CRI
 * keychain, this service stands where the kubelet's `--image-service-endpoint` points, forwards every call of
 * `runtime.v1.ImageService` (and `runtime.v1alpha2`) to containerd byte for byte, and keeps the credentials of each
 * successful `PullImage` in a {@link CriCredentials} book, where the snapshotter finds them when it mounts the image.
 *
 * The messages pass undecoded (fields this project's trimmed proto does not know survive); only a PullImage request
 * is also decoded, for its image and auth. Calls keep their deadline and are cancelled with their caller. The book
 * lives in memory: after a restart an image's mounts use the daemon's credentials until it is pulled again.
 *
 * @example
 * ```ts
 * const credentials = new CriCredentials()
 * const svc = await startCriProxy({ credentials }, { address: '/run/rafspeer/image.sock', containerd: '/run/containerd/containerd.sock' })
 * credentials.lookup('registry.example:5000/app@sha256:…') // after a kubelet pull with a secret
 * ```
 */
import { fileURLToPath } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import * as protoLoader from '@grpc/proto-loader'
import { describeError, type ComponentLogger, type Logger } from '../base/index.js'
import { normalizeConfigKey, parseReference, type Credentials } from '../registry/index.js'
import { SnapshotterError } from './errors.js'
import { prepareSocket } from './grpc-service.js'

const PROTO_DIR = fileURLToPath(new URL('../../snapshotter/proto/', import.meta.url))
const MAX_MESSAGE_BYTES = 16 << 20
const METHODS = ['ListImages', 'ImageStatus', 'PullImage', 'RemoveImage', 'ImageFsInfo'] as const
const PACKAGES = ['runtime.v1', 'runtime.v1alpha2'] as const


/**
 * Credentials from CRI pulls, by repository (`host/repository`) and, for a pull that named its server, by host.
 * The newest pull of a repository wins (a rotated secret replaces the old one).
 */
export class CriCredentials {
  private readonly byRepository = new Map<string, Credentials>()
  private readonly byHost = new Map<string, Credentials>()

  /** Records what a pull of `image` carried; returns where it was filed, or undefined when it had nothing usable. */
  record (image: string, auth: { username?: string, password?: string, auth?: string, serverAddress?: string }): string | undefined {
    const creds = credentialsOf(auth)
    if (creds === undefined) return undefined
    let ref: ReturnType<typeof parseReference>
    try { ref = parseReference(image) } catch { return undefined }
    const server = auth.serverAddress !== undefined && auth.serverAddress !== '' ? normalizeConfigKey(hostOf(auth.serverAddress)) : undefined
    if (server !== undefined && server !== normalizeConfigKey(ref.registry)) {
      this.byHost.set(server, creds)
      return server
    }
    const key = `${normalizeConfigKey(ref.registry)}/${ref.repository}`
    this.byRepository.set(key, creds)
    return key
  }

  /** The credentials for an image (`host/repository[:tag|@digest]`), or undefined. */
  lookup (source: string): Credentials | undefined {
    let ref: ReturnType<typeof parseReference>
    try { ref = parseReference(source) } catch { return undefined }
    const host = normalizeConfigKey(ref.registry)
    return this.byRepository.get(`${host}/${ref.repository}`) ?? this.byHost.get(host)
  }

  get size (): number { return this.byRepository.size + this.byHost.size }
}

/** `host[:port]` of a server address given as a host, `host/path` or a URL */
function hostOf (address: string): string {
  try { return new URL(address.includes('://') ? address : `https://${address}`).host } catch { return address }
}

function credentialsOf (a: { username?: string, password?: string, auth?: string }): Credentials | undefined {
  if (a.username !== undefined && a.username !== '') return { username: a.username, password: a.password ?? '' }
  if (a.auth !== undefined && a.auth !== '') {
    const plain = Buffer.from(a.auth, 'base64').toString('utf8')
    const colon = plain.indexOf(':')
    if (colon > 0) return { username: plain.slice(0, colon), password: plain.slice(colon + 1) }
  }
  return undefined // identity or registry tokens are containerd's to use: rafspeer's client takes user and password
}

export interface CriProxyComponents {
  credentials: CriCredentials
  logger?: ComponentLogger
}

export interface CriProxyInit {
  /** the Unix socket to serve (the kubelet's `--image-service-endpoint`, `rafspeer rpull --address`) */
  address: string
  /** containerd's grpc socket */
  containerd: string
}

export interface CriProxy {
  address: string
  stop: () => Promise<void>
}

const identity = (b: Buffer): Buffer => b

interface PullRequest { image?: { image?: string }, auth?: { username?: string, password?: string, auth?: string, serverAddress?: string } | null }

export async function startCriProxy (components: CriProxyComponents, init: CriProxyInit): Promise<CriProxy> {
  const log: Logger | undefined = components.logger?.forComponent('rafspeer:cri-proxy')
  const definition = protoLoader.loadSync('cri/runtime/v1/api.proto', {
    includeDirs: [PROTO_DIR], keepCase: false, longs: Number, enums: String, defaults: false, oneofs: true
  })
  const pull = (definition['runtime.v1.ImageService'] as Record<string, grpc.MethodDefinition<PullRequest, unknown>>).PullImage!
  const upstream = new grpc.Client(init.containerd.startsWith('unix:') ? init.containerd : `unix://${init.containerd}`, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES
  })
  const server = new grpc.Server({ 'grpc.max_receive_message_length': MAX_MESSAGE_BYTES, 'grpc.max_send_message_length': MAX_MESSAGE_BYTES })

  const forward = (path: string, method: string): grpc.handleUnaryCall<Buffer, Buffer> => (call, callback) => {
    const deadline = call.getDeadline()
    const opts: grpc.CallOptions = Number.isFinite(Number(deadline)) && Number(deadline) > 0 ? { deadline } : {}
    const meta = call.metadata.clone()
    const out = upstream.makeUnaryRequest(path, identity, identity, call.request, meta, opts, (err, res) => {
      if (err !== null) {
        callback({ code: err.code, details: err.details, metadata: err.metadata })
        return
      }
      if (method === 'PullImage') remember(call.request)
      callback(null, res)
    })
    call.on('cancelled', () => { out.cancel() })
  }

  const remember = (raw: Buffer): void => {
    let req: PullRequest
    try { req = pull.requestDeserialize(raw) } catch (err) { log?.warn('a PullImage request did not decode: %s', describeError(err)); return }
    const image = req.image?.image
    if (image === undefined || image === '' || req.auth === undefined || req.auth === null) return
    const filed = components.credentials.record(image, req.auth)
    if (filed !== undefined) log?.info('credentials of the pull of %s kept for lazy reads of %s', image, filed)
  }

  for (const pkg of PACKAGES) {
    const service: Record<string, grpc.MethodDefinition<Buffer, Buffer>> = {}
    const impl: grpc.UntypedServiceImplementation = {}
    for (const m of METHODS) {
      const path = `/${pkg}.ImageService/${m}`
      service[m] = { path, requestStream: false, responseStream: false, requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity }
      impl[m] = forward(path, m)
    }
    server.addService(service as grpc.ServiceDefinition, impl)
  }

  await prepareSocket(init.address, 'the CRI image service socket')
  await new Promise<void>((resolve, reject) => {
    server.bindAsync(`unix://${init.address}`, grpc.ServerCredentials.createInsecure(), (err) => {
      if (err !== null) reject(new SnapshotterError('RAFSPEER_ERR_SNAPSHOT_LISTEN', `cannot serve the CRI image service on ${init.address}: ${err.message}`, { cause: err }))
      else resolve()
    })
  })
  log?.info('CRI image service on %s, forwarding to containerd on %s', init.address, init.containerd)
  return {
    address: init.address,
    stop: async () => {
      await new Promise<void>(resolve => { server.tryShutdown(() => { resolve() }) })
      upstream.close()
    }
  }
}
