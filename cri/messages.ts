/**
 * The messages of CRI's image service (k8s.io/cri-api, package runtime.v1) that the client sends and reads, with
 * upstream's field numbers (snapshotter/proto/cri/runtime/v1/api.proto keeps the same trimmed declaration for the
 * snapshotter's grpc-js proxy; `messages.test.ts` checks both agree byte for byte). Fields a reader does not know
 * are skipped, so newer containerds' additions do no harm.
 */
import { ProtoWriter, readFields, type ProtoField } from './protobuf.js'

/** the grpc service every method below belongs to */
export const IMAGE_SERVICE = 'runtime.v1.ImageService'

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

// ImageSpec { string image = 1 }
const imageSpec = (image: string): ProtoWriter => new ProtoWriter().string(1, image)

// AuthConfig { username = 1, password = 2, auth = 3, server_address = 4, identity_token = 5, registry_token = 6 }
function authConfig (a: CriAuth): ProtoWriter {
  const w = new ProtoWriter()
  if ('username' in a) w.string(1, a.username).string(2, a.password)
  if ('auth' in a) w.string(3, a.auth)
  if (a.serverAddress !== undefined) w.string(4, a.serverAddress)
  if ('identityToken' in a) w.string(5, a.identityToken)
  if ('registryToken' in a) w.string(6, a.registryToken)
  return w
}

/** PullImageRequest { ImageSpec image = 1; AuthConfig auth = 2 } */
export function encodePullImageRequest (image: string, auth?: CriAuth): Buffer {
  const w = new ProtoWriter().message(1, imageSpec(image))
  if (auth !== undefined) w.message(2, authConfig(auth))
  return w.finish()
}

/** ImageStatusRequest { ImageSpec image = 1; bool verbose = 2 } */
export const encodeImageStatusRequest = (image: string): Buffer => new ProtoWriter().message(1, imageSpec(image)).finish()

/** ListImagesRequest { ImageFilter filter = 1 }: no filter, every image */
export const encodeListImagesRequest = (): Buffer => Buffer.alloc(0)

/** RemoveImageRequest { ImageSpec image = 1 } */
export const encodeRemoveImageRequest = (image: string): Buffer => new ProtoWriter().message(1, imageSpec(image)).finish()

const str = (f: ProtoField): string | undefined => f.wire === 2 ? f.value.toString('utf8') : undefined
const msg = (f: ProtoField): Buffer | undefined => f.wire === 2 ? f.value : undefined

/** PullImageResponse { string image_ref = 1 } */
export function decodePullImageResponse (buf: Buffer): { imageRef: string } {
  let imageRef = ''
  for (const f of readFields(buf, 'PullImageResponse')) if (f.field === 1) imageRef = str(f) ?? imageRef
  return { imageRef }
}

/** Image { id = 1; repeated repo_tags = 2; repeated repo_digests = 3; uint64 size = 4; … } */
export function decodeImage (buf: Buffer): CriImage {
  const image: CriImage = { id: '', repoTags: [], repoDigests: [], size: 0 }
  for (const f of readFields(buf, 'Image')) {
    if (f.field === 1) image.id = str(f) ?? image.id
    else if (f.field === 2 && f.wire === 2) image.repoTags.push(f.value.toString('utf8'))
    else if (f.field === 3 && f.wire === 2) image.repoDigests.push(f.value.toString('utf8'))
    else if (f.field === 4 && f.wire === 0) image.size = f.value
  }
  return image
}

/** ImageStatusResponse { Image image = 1; map info = 2 }: undefined when the runtime lacks the image */
export function decodeImageStatusResponse (buf: Buffer): CriImage | undefined {
  let image: CriImage | undefined
  for (const f of readFields(buf, 'ImageStatusResponse')) {
    const body = f.field === 1 ? msg(f) : undefined
    if (body !== undefined) image = decodeImage(body)
  }
  return image
}

/** ListImagesResponse { repeated Image images = 1 } */
export function decodeListImagesResponse (buf: Buffer): CriImage[] {
  const out: CriImage[] = []
  for (const f of readFields(buf, 'ListImagesResponse')) {
    const body = f.field === 1 ? msg(f) : undefined
    if (body !== undefined) out.push(decodeImage(body))
  }
  return out
}
