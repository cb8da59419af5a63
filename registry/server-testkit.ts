/**
 * Helpers for the embedded registry's tests: a server in a temporary directory that is always stopped and
 * removed, plain-`fetch` push helpers, and raw `node:http` requests for targets `fetch` would normalise.
 */
import { createHash } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startRegistryServer, type RegistryServer, type RegistryServerOptions } from './server.js'

export function sha256 (data: Uint8Array | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`
}

export interface Harness { reg: RegistryServer, root: string, errors: unknown[] }

/** Runs `fn` against a fresh server; stops it and deletes its storage even when `fn` throws. */
export async function withRegistry (opts: Partial<RegistryServerOptions>, fn: (h: Harness) => Promise<void>): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), 'rafspeer-reg-'))
  const errors: unknown[] = []
  const reg = await startRegistryServer({ ...opts, root, onError: err => errors.push(err) })
  try {
    await fn({ reg, root, errors })
  } finally {
    await reg.stop()
    await rm(root, { recursive: true, force: true })
  }
}

export async function errorCode (res: Response): Promise<string | undefined> {
  const body = await res.json() as { errors?: Array<{ code?: string }> }
  return body.errors?.[0]?.code
}

export async function pushBlob (reg: RegistryServer, name: string, data: Uint8Array | string, headers: Record<string, string> = {}): Promise<string> {
  const digest = sha256(data)
  const res = await fetch(`${reg.url}/v2/${name}/blobs/uploads/?digest=${digest}`, {
    method: 'POST', body: data, headers: { 'Content-Type': 'application/octet-stream', ...headers }
  })
  if (res.status !== 201) throw new Error(`push ${name}@${digest}: ${res.status} ${await res.text()}`)
  return digest
}

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json'

/** Pushes a config and one layer per entry of `layers`; returns the manifest body (not yet pushed). */
export async function imageManifest (reg: RegistryServer, name: string, layers: string[]): Promise<Buffer> {
  const config = JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } })
  const configDigest = await pushBlob(reg, name, config)
  const descs = []
  for (const l of layers) descs.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: await pushBlob(reg, name, l), size: Buffer.byteLength(l) })
  return Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: Buffer.byteLength(config) },
    layers: descs
  }))
}

export async function putManifest (reg: RegistryServer, name: string, ref: string, body: Buffer, type = OCI_MANIFEST, headers: Record<string, string> = {}): Promise<Response> {
  return await fetch(`${reg.url}/v2/${name}/manifests/${ref}`, { method: 'PUT', body, headers: { 'Content-Type': type, ...headers } })
}

export interface RawResponse { status: number, headers: Record<string, string | string[] | undefined>, body: Buffer }

/** One request with the target sent byte for byte (no URL normalisation). */
export async function raw (reg: RegistryServer, method: string, path: string, headers: Record<string, string> = {}, body?: Buffer): Promise<RawResponse> {
  return await new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: reg.port, method, path, headers, agent: false }, res => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(body)
  })
}
