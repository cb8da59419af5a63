/**
 * A mount's own registry credentials: a registry client made for them alone (so neither they nor their tokens serve
 * other mounts), closed with the mount's image.
 */
import { describeError } from '../../base/index.js'
import { RegistryClient, parseReference, type Credentials } from '../../registry/index.js'
import type { OpenedImage } from './image-open.js'
import { MountError } from './mount-error.js'

/** One registry client for one mount's credentials (made on first use, with the mount's plain-HTTP setting). */
export function ownClient (source: string, credentials: Credentials): ((plainHttp: boolean | 'auto') => RegistryClient) & { close: () => Promise<void> } {
  let host: string
  try {
    host = parseReference(source).registry
  } catch (err) {
    throw new MountError('RAFSPEER_ERR_MOUNT', `credentials given for ${source}, which is not a registry reference: ${describeError(err)}`, { cause: err })
  }
  let client: RegistryClient | undefined
  const get = (plainHttp: boolean | 'auto'): RegistryClient => (client ??= new RegistryClient({ plainHttp, credentials: { [host]: credentials } }))
  return Object.assign(get, { close: async () => { await client?.close() } })
}

/** `image` whose close also runs `also` (after it) */
export function closingAlso (image: OpenedImage, also: () => Promise<void>): OpenedImage {
  const close = image.close.bind(image)
  return Object.assign(image, { close: async () => { try { await close() } finally { await also() } } })
}
