/**
 * Pushing the converted image: each blob only when the target lacks it (HEAD), mounted from the source repository
 * when both live on one registry and the source has it, uploaded otherwise; then every blob is confirmed by HEAD
 * before the manifest goes up, last. A target that ends up without one of its blobs gets no manifest.
 */
import type { BlobSource, ImageReference, RegistryClient } from '../registry/index.js'
import { ConvertError } from './errors.js'

export interface PushItem {
  digest: string
  size: number
  source: BlobSource
  /** what it is, for messages and progress: "blob 0", "bootstrap layer", "config" */
  label: string
}

export type PushOutcome = 'exists' | 'mounted' | 'uploaded'

export interface PushContext {
  client: RegistryClient
  target: ImageReference
  /** the source image, for cross-repository mounts */
  source: ImageReference
  /** PATCH uploads in pieces */
  chunked?: boolean
  signal?: AbortSignal
}

const repoOf = (r: ImageReference): ImageReference => ({ registry: r.registry, repository: r.repository })

export async function pushItem (ctx: PushContext, item: PushItem): Promise<PushOutcome> {
  const { client, signal } = ctx
  const call = signal !== undefined ? { signal } : {}
  const target = repoOf(ctx.target)
  const have = await client.headBlob(target, item.digest, call)
  if (have === item.size) return 'exists'
  const sameRegistry = ctx.source.registry === ctx.target.registry && ctx.source.repository !== ctx.target.repository
  if (sameRegistry && await client.headBlob(repoOf(ctx.source), item.digest, call) === item.size) {
    // a 202 (mount refused) just means: upload it
    if (await client.mountBlob(target, item.digest, ctx.source.repository, call)) return 'mounted'
  }
  await client.pushBlob(target, item.digest, item.size, item.source, { ...call, ...(ctx.chunked === true ? { chunked: true } : {}) })
  return 'uploaded'
}

/** HEAD of every item: each must be there with its size, or the image would be incomplete. */
export async function confirmPushed (ctx: PushContext, items: PushItem[]): Promise<void> {
  const target = repoOf(ctx.target)
  const missing: string[] = []
  for (const item of items) {
    const size = await ctx.client.headBlob(target, item.digest, ctx.signal !== undefined ? { signal: ctx.signal } : {})
    if (size !== item.size) missing.push(`${item.label} ${item.digest} (${size === undefined ? 'absent' : `${size} bytes, expected ${item.size}`})`)
  }
  if (missing.length > 0) {
    throw new ConvertError('RAFSPEER_ERR_CONVERT_PUSH',
      `after the push, ${ctx.target.registry}/${ctx.target.repository} lacks ${missing.join(', ')}: the manifest was not pushed`)
  }
}
