/** Small reads of a source or converted image: JSON blobs (configs), size-capped and verified. */
import type { Descriptor, ImageReference, RegistryClient } from '../registry/index.js'
import { ConvertError } from './errors.js'

/** Configs are small; a larger "config" is refused rather than read into memory. */
export const MAX_CONFIG_BYTES = 8 << 20

/** Reads a JSON blob (digest-verified by the client) of at most MAX_CONFIG_BYTES. */
export async function readJsonBlob (client: RegistryClient, repo: ImageReference, d: Descriptor, call: { signal?: AbortSignal }): Promise<unknown> {
  const where = `config ${d.digest} of ${repo.registry}/${repo.repository}`
  if (d.size > MAX_CONFIG_BYTES) throw new ConvertError('RAFSPEER_ERR_CONVERT_SOURCE', `${where} is ${d.size} bytes, over the ${MAX_CONFIG_BYTES}-byte limit`)
  const stream = await client.getBlob({ registry: repo.registry, repository: repo.repository }, d.digest, call)
  const pieces: Buffer[] = []
  let n = 0
  for await (const piece of stream) {
    n += (piece as Buffer).length
    if (n > MAX_CONFIG_BYTES) { stream.destroy(); throw new ConvertError('RAFSPEER_ERR_CONVERT_SOURCE', `${where} is longer than ${MAX_CONFIG_BYTES} bytes`) }
    pieces.push(piece as Buffer)
  }
  try {
    return JSON.parse(Buffer.concat(pieces).toString('utf8'))
  } catch (err) {
    throw new ConvertError('RAFSPEER_ERR_CONVERT_SOURCE', `${where} is not valid JSON: ${(err as Error).message}`, { cause: err })
  }
}
